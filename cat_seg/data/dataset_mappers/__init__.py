"""Dataset mappers: training (:class:`MaskFormerSemanticDatasetMapper`) and evaluation
(:class:`InferenceDatasetMapper`, detectron2's test mapper naming unreadable files)."""
from .semantic_mapper import (
    InferenceDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    SemanticTrainMapper,
    build_train_augmentations,
    read_dataset_image,
)

__all__ = [
    "InferenceDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "SemanticTrainMapper",
    "build_train_augmentations",
    "read_dataset_image",
]
