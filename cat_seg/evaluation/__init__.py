"""Evaluators (detectron2's ``SemSegEvaluator`` with CAT-Seg's additions) and the benchmarks."""
from .sem_seg_evaluation import (
    SemSegEvaluator,
    VOCbEvaluator,
    build_evaluator,
    evaluator_problem,
    evaluator_type_of,
    load_sem_seg_gt,
)

__all__ = [
    "SemSegEvaluator", "VOCbEvaluator", "build_evaluator", "evaluator_problem", "evaluator_type_of", "load_sem_seg_gt",
]
