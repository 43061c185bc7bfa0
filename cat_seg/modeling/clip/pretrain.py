"""Dense contrastive pre-training of a small CLIP.

CAT-Seg fine-tunes a *pre-trained* CLIP. The released recipe starts from OpenAI's weights;
the offline toy run (``make demo``) has no such weights, so it first pre-trains its tiny CLIP
on the toy benchmark's training split (seen classes only) for a minute with this loss, then
hands the checkpoint to CAT-Seg through ``MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS``.
"""
import logging
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .text_encoder import TextEncoder

logger = logging.getLogger(__name__)


def warmup_cosine_lr(lr: float, step: int, steps: int, warmup_steps: int) -> float:
    """Learning rate at ``step`` (0-based) of ``steps``: linear warm-up from ``lr / warmup_steps``
    over ``warmup_steps`` steps, then cosine decay from ``lr`` to 0 over the remaining ones.

    Not detectron2's ``WarmupParamScheduler`` (which CAT-Seg's own training uses): that one
    multiplies the cosine of the whole run by the warm-up factor, so its decay starts at step 0,
    not after the warm-up; this schedule is the one the toy run's recorded results were made with."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))


def pretrain_clip_dense(
    backbone: nn.Module,
    images: torch.Tensor,
    label_maps: torch.Tensor,
    class_names: Sequence[str],
    *,
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 1e-3,
    warmup_steps: int = 0,
    ignore_value: int = 255,
    seed: int = 0,
) -> Sequence[float]:
    """Dense contrastive pre-training: every pixel's CLIP embedding against the class captions.

    Trains all parameters of ``backbone.clip`` (a
    :class:`~cat_seg.modeling.backbone.CLIPVisionBackbone`) in place so that the dense
    embeddings of the backbone's forward (the representation CAT-Seg builds its cost volume
    from) are aligned with the text embeddings: per pixel, a cross-entropy over the scaled
    cosine similarities with the ``T`` class captions (bilinearly upsampled to the labels).
    AdamW with a linear warm-up over ``warmup_steps`` then cosine decay (a transformer trained
    from scratch at a high learning rate without warm-up can stall: measured on the toy run).

    Args:
        images: ``[N, 3, H, W]`` CLIP-normalised images at the backbone's resolution.
        label_maps: ``[N, H, W]`` class indexes into ``class_names`` or ``ignore_value``.
    Returns the loss per step.
    """
    generator = torch.Generator().manual_seed(seed)
    params = list(backbone.clip.parameters())
    states = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    text_encoder = TextEncoder(backbone.clip).train()  # single template: one caption per class
    backbone.train()
    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(lr, step, steps, warmup_steps)
        index = torch.randint(len(images), (batch_size,), generator=generator)
        dense = F.normalize(backbone(images[index])["dense_embeddings"], dim=1)  # [B, C, h, w]
        text = text_encoder(list(class_names))[:, 0]  # [T, C]
        logits = backbone.clip.logit_scale.exp() * torch.einsum("bchw,tc->bthw", dense, text)
        logits = F.interpolate(logits, size=label_maps.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, label_maps[index].long(), ignore_index=ignore_value)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            backbone.clip.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            logger.info(f"dense CLIP pre-training step {step}: loss {loss.item():.4f}")
    for p, state in zip(params, states):
        p.requires_grad_(state)
    backbone.eval()
    return losses
