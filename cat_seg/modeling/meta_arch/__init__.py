from .cat_seg import CATSeg

__all__ = ["CATSeg"]
