"""Dataset mappers: training (:class:`MaskFormerSemanticDatasetMapper`) and evaluation
(:class:`InferenceDatasetMapper`, detectron2's test mapper naming unreadable files)."""
from .semantic_mapper import (
    InferenceDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    SemanticTrainMapper,
    build_train_augmentations,
    read_dataset_image,
    read_dataset_label,
)

#: ``INPUT.DATASET_MAPPER_NAME`` -> training mapper (the official configs' name).
TRAIN_MAPPERS = {"mask_former_semantic": MaskFormerSemanticDatasetMapper}

__all__ = [
    "TRAIN_MAPPERS",
    "InferenceDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "SemanticTrainMapper",
    "build_train_augmentations",
    "read_dataset_image",
    "read_dataset_label",
]
