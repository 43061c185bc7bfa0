"""cat-seg: CAT-Seg (Cost Aggregation for Open-Vocabulary Semantic Segmentation) on detectron2.

Importing the package registers the model components in detectron2's registries.
"""
import warnings

# fvcore (imported with detectron2) calls the deprecated torch.jit.script at import time:
# noise that would come before every command's output and its one-line errors
warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)

from . import modeling  # noqa: F401  (registers backbone, head, meta-architecture)
from .api import CATSegError, OpenVocabSegmenter, SegmentationResult
from .config import add_cat_seg_config, register_config_keys

__all__ = ["add_cat_seg_config", "register_config_keys", "CATSegError", "OpenVocabSegmenter", "SegmentationResult"]
