from .cat_seg_head import CATSegHead

__all__ = ["CATSegHead"]
