"""Optimizer / LR scheduler construction (the official CAT-Seg recipe)."""
from .build import (
    LR_SCHEDULERS,
    NORM_MODULE_TYPES,
    build_lr_scheduler,
    build_optimizer,
    check_lr_scheduler,
    get_param_groups,
    maybe_add_gradient_clipping,
)

__all__ = [
    "LR_SCHEDULERS",
    "NORM_MODULE_TYPES",
    "build_lr_scheduler",
    "build_optimizer",
    "check_lr_scheduler",
    "get_param_groups",
    "maybe_add_gradient_clipping",
]
