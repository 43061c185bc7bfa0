"""Dense CLIP pre-training of the toy run: schedule values and that it learns."""
import math

import pytest
import torch
from detectron2.modeling import build_backbone

from cat_seg.modeling.clip.pretrain import pretrain_clip_dense, warmup_cosine_lr


def test_warmup_cosine_schedule_values():
    lr, steps, warmup = 0.3, 10, 4
    values = [warmup_cosine_lr(lr, s, steps, warmup) for s in range(steps)]
    # linear warm-up: lr * (s + 1) / warmup
    assert values[:4] == pytest.approx([0.075, 0.15, 0.225, 0.3])
    # then cosine over the 6 remaining steps: lr * (1 + cos(pi * k / 6)) / 2
    assert values[4:] == pytest.approx([0.3 * (1 + math.cos(math.pi * k / 6)) / 2 for k in range(6)])
    assert values[5] == pytest.approx(0.3 * (1 + math.sqrt(3) / 2) / 2)
    # no warm-up: plain cosine from lr
    assert warmup_cosine_lr(1.0, 0, 4, 0) == 1.0 and warmup_cosine_lr(1.0, 2, 4, 0) == pytest.approx(0.5)


def test_pretraining_fits_a_colour_task_and_restores_flags(build_cfg):
    """Two 'classes' that differ only by colour: a few steps bring the dense loss well down,
    and the trainable flags of the CLIP parameters are restored afterwards."""
    cfg = build_cfg("b")
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    flags = [p.requires_grad for p in backbone.clip.parameters()]
    assert not all(flags)  # attention fine-tuning: only some parameters train
    h, w = backbone.resolution
    images = torch.zeros(8, 3, h, w)
    labels = torch.full((8, h, w), 255, dtype=torch.long)
    for i in range(8):  # left half class i % 2 (red or blue), right half ignored
        images[i, 0 if i % 2 == 0 else 2, :, : w // 2] = 1.5
        labels[i, :, : w // 2] = i % 2
    losses = pretrain_clip_dense(backbone, images, labels, ["red", "blue"], steps=40, batch_size=4,
                                 lr=3e-3, warmup_steps=4, seed=0)
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    assert [p.requires_grad for p in backbone.clip.parameters()] == flags
    assert not backbone.training
