"""CAT-Seg model components (importing this registers them in detectron2's registries)."""
from .aggregator import Aggregator, AggregatorLayer, AggregatorOutput
from .backbone import CLIPVisionBackbone
from .class_aggregation import ClassAggregation
from .cost_volume import cosine_cost_volume, scatter_class_logits, select_top_classes
from .decoder import CostDecoder
from .heads import CATSegHead
from .losses import sem_seg_bce_loss
from .meta_arch import CATSeg
from .spatial_aggregation import SpatialAggregation

__all__ = [
    "Aggregator", "AggregatorLayer", "AggregatorOutput", "CLIPVisionBackbone", "ClassAggregation", "cosine_cost_volume",
    "scatter_class_logits", "select_top_classes", "CostDecoder", "CATSegHead", "sem_seg_bce_loss", "CATSeg",
    "SpatialAggregation",
]
