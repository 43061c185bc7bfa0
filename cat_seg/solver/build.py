"""Optimizer and LR schedule of the official CAT-Seg recipe.

``build_optimizer`` creates one parameter group per trainable parameter so that every
parameter can carry its own learning rate and weight decay:

* LR: ``SOLVER.BASE_LR``, times ``SOLVER.CLIP_MULTIPLIER`` for CLIP's parameters: those of
  modules under a module named ``clip`` (our ``backbone.clip.*``) or ``clip_model`` (the
  official ``...clip_model.*``), and those a module lists in a ``clip_parameters()`` method (the
  deep visual prompt tokens ``backbone.visual_prompt_tokens``, which the official code keeps
  inside its CLIP model); otherwise times ``SOLVER.BACKBONE_MULTIPLIER`` for parameters under
  a module named ``backbone``. Names are matched whole (a module ``clip_adapter`` of the head
  is not CLIP's). Trainable parameters whose LR is 0 (the released configs set
  ``BACKBONE_MULTIPLIER 0.0``: a module a subclass adds to the backbone) are named in a warning.
* Weight decay: ``SOLVER.WEIGHT_DECAY``, except ``SOLVER.WEIGHT_DECAY_NORM`` for parameters
  of normalisation modules, ``SOLVER.WEIGHT_DECAY_EMBED`` for ``nn.Embedding`` and 0 for
  parameters named ``relative_position_bias_table`` / ``absolute_pos_embed``. Biases,
  padding tokens etc. get the full weight decay, as in the official code (kept so that
  training reproduces its results).

Gradient clipping of type ``full_model`` clips the global norm over all parameters of all
groups jointly before every step; ``value`` and ``norm`` clip each parameter on its own, as
detectron2's clipping does (:func:`maybe_add_gradient_clipping`).
The LR scheduler is the ``build_lr_scheduler`` of detectron2's DeepLab project, which the
DeepLab-based detectron2 projects (Mask2Former) train with: detectron2's schedules
(``WarmupCosineLR`` with no warmup gives the multiplier ``0.5 * (1 + cos(pi * iter /
MAX_ITER))``) plus ``WarmupPolyLR``, whose ``SOLVER.POLY_LR_POWER`` /
``POLY_LR_CONSTANT_ENDING`` keys ``add_deeplab_config`` adds.
``WarmupStepWithFixedGammaLR`` is built as detectron2 builds it, with a step schedule that has a
value at the end of training (:class:`StepWithFixedGammaToTheEnd`; fvcore's raises there).
:func:`check_lr_scheduler` builds it before training starts.
"""
import copy
import logging
from typing import Any, Dict, List, Set, Type

import torch
from detectron2.config import CfgNode
from detectron2.projects.deeplab import build_lr_scheduler as deeplab_build_lr_scheduler
from fvcore.common.param_scheduler import StepParamScheduler, StepWithFixedGammaParamScheduler

__all__ = [
    "CLIP_TYPES",
    "NORM_MODULE_TYPES",
    "OPTIMIZERS",
    "LR_SCHEDULERS",
    "build_lr_scheduler",
    "check_lr_scheduler",
    "build_optimizer",
    "get_param_groups",
    "maybe_add_gradient_clipping",
]

logger = logging.getLogger(__name__)

#: ``SOLVER.LR_SCHEDULER_NAME`` values :func:`build_lr_scheduler` knows (detectron2's and DeepLab's).
LR_SCHEDULERS = ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR", "WarmupPolyLR")


class StepWithFixedGammaToTheEnd(StepWithFixedGammaParamScheduler):
    """fvcore's ``StepWithFixedGammaParamScheduler`` with a value at the end of training:
    fvcore's raises ``IndexError`` at ``where = 1``, which detectron2 asks for at the scheduler
    step after the last iteration (and at construction, for a warmup as long as training), so
    ``WarmupStepWithFixedGammaLR`` ended every run in a traceback before ``model_final.pth``.
    There it gives the last decay's value, as just before."""

    #: the largest ``where`` fvcore's step lookup (which adds its epsilon) maps to the last value
    LAST_WHERE = 1.0 - 2 * StepParamScheduler.WHERE_EPSILON

    def __call__(self, where: float) -> float:
        return super().__call__(min(where, self.LAST_WHERE))


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer):
    """The LR scheduler of ``SOLVER.LR_SCHEDULER_NAME``: DeepLab's ``build_lr_scheduler``
    (detectron2's schedules and ``WarmupPolyLR``), except that ``WarmupStepWithFixedGammaLR``
    is built with :class:`StepWithFixedGammaToTheEnd` (as detectron2 builds it otherwise)."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupStepWithFixedGammaLR":
        return deeplab_build_lr_scheduler(cfg, optimizer)
    from detectron2.solver import LRMultiplier, WarmupParamScheduler

    schedule = StepWithFixedGammaToTheEnd(base_value=1.0, gamma=cfg.SOLVER.GAMMA, num_decays=cfg.SOLVER.NUM_DECAYS,
                                          num_updates=cfg.SOLVER.MAX_ITER)
    schedule = WarmupParamScheduler(schedule, cfg.SOLVER.WARMUP_FACTOR,
                                    min(cfg.SOLVER.WARMUP_ITERS / cfg.SOLVER.MAX_ITER, 1.0),
                                    cfg.SOLVER.WARMUP_METHOD, cfg.SOLVER.RESCALE_INTERVAL)
    return LRMultiplier(optimizer, multiplier=schedule, max_iter=cfg.SOLVER.MAX_ITER)


def check_lr_scheduler(cfg: CfgNode) -> None:
    """Raise a one-line ``ValueError`` for a schedule :func:`build_lr_scheduler` would reject
    once training started (an unknown name, a base LR that is not positive, ``SOLVER.MAX_ITER``
    < 1, a cosine end above the base LR), by building it on a one-parameter optimizer."""
    name = cfg.SOLVER.LR_SCHEDULER_NAME
    if name not in LR_SCHEDULERS:
        raise ValueError(f"SOLVER.LR_SCHEDULER_NAME={name!r}: expected one of {', '.join(LR_SCHEDULERS)}")
    if not (isinstance(cfg.SOLVER.BASE_LR, (int, float)) and cfg.SOLVER.BASE_LR > 0):
        raise ValueError(f"SOLVER.BASE_LR={cfg.SOLVER.BASE_LR!r}: expected a positive learning rate")
    if cfg.SOLVER.MAX_ITER < 1:
        raise ValueError(f"SOLVER.MAX_ITER={cfg.SOLVER.MAX_ITER}: expected a positive number of iterations")
    if name == "WarmupCosineLR" and not 0 <= cfg.SOLVER.BASE_LR_END <= cfg.SOLVER.BASE_LR:
        raise ValueError(f"SOLVER.BASE_LR_END={cfg.SOLVER.BASE_LR_END}: expected between 0 and SOLVER.BASE_LR "
                         f"({cfg.SOLVER.BASE_LR}) for WarmupCosineLR")
    parameter = torch.zeros(1, requires_grad=True)
    try:
        build_lr_scheduler(cfg, torch.optim.SGD([parameter], lr=cfg.SOLVER.BASE_LR))
    except (AssertionError, ValueError, ZeroDivisionError, IndexError) as exc:
        raise ValueError(f"SOLVER.LR_SCHEDULER_NAME={name!r} cannot be built from the SOLVER keys: "
                         f"{exc or type(exc).__name__}") from None

# Subclasses count too (e.g. CLIP's fp16-safe LayerNorm), checked with isinstance.
NORM_MODULE_TYPES = (
    torch.nn.modules.batchnorm._BatchNorm,  # BatchNorm1d/2d/3d, SyncBatchNorm
    torch.nn.GroupNorm,
    torch.nn.modules.instancenorm._InstanceNorm,  # InstanceNorm1d/2d/3d
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)

_NO_DECAY_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")
# Module names whose parameters are CLIP's (ours, the official code's).
CLIP_MODULE_NAMES = frozenset({"clip", "clip_model"})


def get_param_groups(cfg: CfgNode, model: torch.nn.Module) -> List[Dict[str, Any]]:
    """
    One optimizer param group ``{"params": [p], "lr": ..., "weight_decay": ...}`` per
    trainable parameter of ``model``, in ``model.named_modules()`` order. Parameters with
    ``requires_grad=False`` are skipped; a parameter shared by several modules appears once
    (with the hyper-parameters of the first module that owns it).
    """
    base_lr = cfg.SOLVER.BASE_LR
    defaults = {"lr": base_lr, "weight_decay": cfg.SOLVER.WEIGHT_DECAY}
    params: List[Dict[str, Any]] = []
    memo: Set[torch.nn.Parameter] = set()
    declared_clip = {id(p) for m in model.modules() if callable(getattr(m, "clip_parameters", None))
                     for p in m.clip_parameters()}
    for module_name, module in model.named_modules():
        for param_name, value in module.named_parameters(recurse=False):
            if not value.requires_grad or value in memo:
                continue
            memo.add(value)
            hyperparams = copy.copy(defaults)
            path = module_name.split(".")
            if CLIP_MODULE_NAMES.intersection(path) or id(value) in declared_clip:
                hyperparams["lr"] = base_lr * cfg.SOLVER.CLIP_MULTIPLIER
            elif "backbone" in path:
                hyperparams["lr"] = base_lr * cfg.SOLVER.BACKBONE_MULTIPLIER
            if param_name in _NO_DECAY_PARAM_NAMES:
                hyperparams["weight_decay"] = 0.0
            if isinstance(module, NORM_MODULE_TYPES):
                hyperparams["weight_decay"] = cfg.SOLVER.WEIGHT_DECAY_NORM
            if isinstance(module, torch.nn.Embedding):
                hyperparams["weight_decay"] = cfg.SOLVER.WEIGHT_DECAY_EMBED
            params.append({"params": [value], **hyperparams})
    return params


#: ``SOLVER.OPTIMIZER`` values (upper case): ``torch.optim.AdamW`` and ``torch.optim.SGD``.
OPTIMIZERS = ("ADAMW", "SGD")

#: ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` values: detectron2's per-parameter ``value`` and
#: ``norm``, and the official code's ``full_model`` (one norm over all parameters).
CLIP_TYPES = ("full_model", "value", "norm")


def maybe_add_gradient_clipping(
    cfg: CfgNode, optimizer_type: Type[torch.optim.Optimizer]
) -> Type[torch.optim.Optimizer]:
    """
    Return a subclass of ``optimizer_type`` whose ``step`` first clips the gradients, if
    ``SOLVER.CLIP_GRADIENTS.ENABLED`` (and ``CLIP_VALUE > 0``); otherwise ``optimizer_type``
    unchanged. ``CLIP_TYPE`` ``full_model``: ``clip_grad_norm_`` over all parameters of all
    groups jointly (max norm ``CLIP_VALUE``, ``NORM_TYPE``), as the official code;
    ``value`` / ``norm``: each parameter on its own, as detectron2's
    ``maybe_add_gradient_clipping``. Written here for all three because detectron2's
    per-parameter clipper also hands over parameters without a gradient (the dense last CLIP
    block's unused query weight), which current torch's ``clip_grad_value_`` rejects.
    """
    clip_cfg = cfg.SOLVER.CLIP_GRADIENTS
    clip_value = float(clip_cfg.CLIP_VALUE)
    norm_type = float(clip_cfg.NORM_TYPE)
    clip_type = str(clip_cfg.CLIP_TYPE)
    if clip_type not in CLIP_TYPES:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip_type!r}: expected one of {', '.join(CLIP_TYPES)}")
    if not (clip_cfg.ENABLED and clip_value > 0.0):
        return optimizer_type

    class GradientClippingOptimizer(optimizer_type):
        def step(self, closure=None):
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            if clip_type == "full_model":
                torch.nn.utils.clip_grad_norm_(params, clip_value, norm_type=norm_type)
            elif clip_type == "value":
                torch.nn.utils.clip_grad_value_(params, clip_value)  # elementwise: per parameter alike
            else:
                for param in params:
                    torch.nn.utils.clip_grad_norm_(param, clip_value, norm_type=norm_type)
            return super().step(closure=closure)

    suffix = "FullModelClip" if clip_type == "full_model" else "WithGradientClip"
    GradientClippingOptimizer.__name__ = optimizer_type.__name__ + suffix
    GradientClippingOptimizer.__qualname__ = GradientClippingOptimizer.__name__
    return GradientClippingOptimizer


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """
    Build the optimizer of the official recipe for ``model``.

    ``SOLVER.OPTIMIZER``: ``ADAMW`` (``torch.optim.AdamW``, betas (0.9, 0.999), eps 1e-8) or
    ``SGD`` (momentum ``SOLVER.MOMENTUM``). Gradient clipping as described in the module
    docstring.
    """
    params = get_param_groups(cfg, model)
    if not params:
        raise ValueError("build_optimizer: the model has no parameter with requires_grad=True")
    names = {id(p): n for n, p in model.named_parameters()}
    frozen = [names.get(id(g["params"][0]), "?") for g in params if g["lr"] == 0]
    if frozen:
        logger.warning(f"{len(frozen)} trainable parameter tensor(s) get learning rate 0 and will not change: "
                       f"{', '.join(frozen[:4])}{', ...' if len(frozen) > 4 else ''} (SOLVER.BACKBONE_MULTIPLIER "
                       f"{cfg.SOLVER.BACKBONE_MULTIPLIER}, CLIP_MULTIPLIER {cfg.SOLVER.CLIP_MULTIPLIER}: modules under "
                       "'backbone' and 'clip' take them)")
    optimizer_name = cfg.SOLVER.OPTIMIZER.upper()
    if optimizer_name == "SGD":
        optimizer_type = maybe_add_gradient_clipping(cfg, torch.optim.SGD)
        optimizer = optimizer_type(params, cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
                                   nesterov=cfg.SOLVER.NESTEROV)
    elif optimizer_name == "ADAMW":
        optimizer_type = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
        optimizer = optimizer_type(params, cfg.SOLVER.BASE_LR, betas=(0.9, 0.999), eps=1e-8)
    else:
        raise ValueError(
            f"SOLVER.OPTIMIZER must be one of {', '.join(map(repr, OPTIMIZERS))}, got {cfg.SOLVER.OPTIMIZER!r}"
        )
    logger.info(
        "Optimizer %s with %d parameter groups", type(optimizer).__name__, len(params)
    )
    return optimizer
