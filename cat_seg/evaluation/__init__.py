"""Evaluators (spec 4.6)."""
from .sem_seg_evaluation import (
    SemSegEvaluator,
    VOCbEvaluator,
    build_evaluator,
    compute_sem_seg_metrics,
    load_sem_seg_gt,
)

__all__ = [
    "SemSegEvaluator",
    "VOCbEvaluator",
    "build_evaluator",
    "compute_sem_seg_metrics",
    "load_sem_seg_gt",
]
