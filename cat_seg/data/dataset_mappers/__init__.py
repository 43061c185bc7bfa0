"""Dataset mappers (training). The test mapper is detectron2's DatasetMapper(is_train=False)."""
from .semantic_mapper import (
    MaskFormerSemanticDatasetMapper,
    SemanticTrainMapper,
    build_train_augmentations,
)

__all__ = ["MaskFormerSemanticDatasetMapper", "SemanticTrainMapper", "build_train_augmentations"]
