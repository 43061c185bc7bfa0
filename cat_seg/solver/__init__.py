"""Optimizer / LR scheduler construction (the official CAT-Seg recipe)."""
from .build import (
    NORM_MODULE_TYPES,
    build_lr_scheduler,
    build_optimizer,
    get_param_groups,
    maybe_add_gradient_clipping,
)

__all__ = [
    "NORM_MODULE_TYPES",
    "build_lr_scheduler",
    "build_optimizer",
    "get_param_groups",
    "maybe_add_gradient_clipping",
]
