"""build_optimizer / build_lr_scheduler: param groups, gradient clipping, cosine schedule."""
import math

import pytest
import torch
from torch import nn

from detectron2.config import get_cfg

from cat_seg.solver import build_lr_scheduler, build_optimizer, get_param_groups

BASE_LR = 2e-4
WD = 1e-4
WD_NORM = 3e-5  # distinct non-zero values so each rule is visible in the groups
WD_EMBED = 7e-6
CLIP_MULT = 0.01
BACKBONE_MULT = 0.5


def make_cfg(**solver_overrides):
    """detectron2 default cfg plus the keys cat_seg/config.py adds for the solver."""
    cfg = get_cfg()
    cfg.SOLVER.CLIP_MULTIPLIER = CLIP_MULT
    cfg.SOLVER.BACKBONE_MULTIPLIER = BACKBONE_MULT
    cfg.SOLVER.WEIGHT_DECAY_EMBED = WD_EMBED
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BASE_LR = BASE_LR
    cfg.SOLVER.WEIGHT_DECAY = WD
    cfg.SOLVER.WEIGHT_DECAY_NORM = WD_NORM
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    for key, value in solver_overrides.items():
        node = cfg.SOLVER
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


class CLIPLayerNorm(nn.LayerNorm):
    """Like CLIP's fp16-safe LayerNorm subclass."""


class FakeCLIP(nn.Module):
    def __init__(self):
        super().__init__()
        self.token_embedding = nn.Embedding(10, 4)
        self.ln_final = CLIPLayerNorm(4)
        self.proj = nn.Linear(4, 4)
        self.positional_embedding = nn.Parameter(torch.zeros(3, 4), requires_grad=False)


class FakeBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.clip = FakeCLIP()
        self.stem = nn.Conv2d(3, 4, 1)
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4))


class FakeSwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros(5, 2))
        self.qkv = nn.Linear(4, 12)


class FakeHead(nn.Module):
    def __init__(self, shared: nn.Module):
        super().__init__()
        self.norm = nn.GroupNorm(2, 4)
        self.bn = nn.BatchNorm2d(4)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.conv = nn.Conv2d(4, 4, 3)
        self.pad_token = nn.Parameter(torch.zeros(1, 4))
        self.swin = FakeSwin()
        self.shared = shared  # same module object as model.shared_linear
        self.frozen = nn.Linear(4, 4).requires_grad_(False)
        self.clip_model = nn.Module()  # official name of the CLIP module
        self.clip_model.ln_post = nn.LayerNorm(4)
        self.clip_model.proj_lin = nn.Linear(4, 2)
        # a researcher's modules whose names merely contain "clip" / "backbone": the head's LR
        self.clip_adapter = nn.Linear(4, 4)
        self.backbone_fusion = nn.Linear(4, 4)


class FakeModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = FakeBackbone()
        self.shared_linear = nn.Linear(4, 4)
        self.sem_seg_head = FakeHead(self.shared_linear)


# name -> (lr, weight decay)
EXPECTED = {
    "backbone.clip.token_embedding.weight": (BASE_LR * CLIP_MULT, WD_EMBED),
    "backbone.clip.ln_final.weight": (BASE_LR * CLIP_MULT, WD_NORM),
    "backbone.clip.ln_final.bias": (BASE_LR * CLIP_MULT, WD_NORM),
    "backbone.clip.proj.weight": (BASE_LR * CLIP_MULT, WD),
    "backbone.clip.proj.bias": (BASE_LR * CLIP_MULT, WD),
    "backbone.stem.weight": (BASE_LR * BACKBONE_MULT, WD),
    "backbone.stem.bias": (BASE_LR * BACKBONE_MULT, WD),
    "backbone.absolute_pos_embed": (BASE_LR * BACKBONE_MULT, 0.0),
    "shared_linear.weight": (BASE_LR, WD),
    "shared_linear.bias": (BASE_LR, WD),
    "sem_seg_head.norm.weight": (BASE_LR, WD_NORM),
    "sem_seg_head.norm.bias": (BASE_LR, WD_NORM),
    "sem_seg_head.bn.weight": (BASE_LR, WD_NORM),
    "sem_seg_head.bn.bias": (BASE_LR, WD_NORM),
    "sem_seg_head.inorm.weight": (BASE_LR, WD_NORM),
    "sem_seg_head.inorm.bias": (BASE_LR, WD_NORM),
    "sem_seg_head.conv.weight": (BASE_LR, WD),
    "sem_seg_head.conv.bias": (BASE_LR, WD),
    "sem_seg_head.pad_token": (BASE_LR, WD),
    "sem_seg_head.swin.relative_position_bias_table": (BASE_LR, 0.0),
    "sem_seg_head.swin.qkv.weight": (BASE_LR, WD),
    "sem_seg_head.swin.qkv.bias": (BASE_LR, WD),
    "sem_seg_head.clip_model.ln_post.weight": (BASE_LR * CLIP_MULT, WD_NORM),
    "sem_seg_head.clip_model.ln_post.bias": (BASE_LR * CLIP_MULT, WD_NORM),
    "sem_seg_head.clip_model.proj_lin.weight": (BASE_LR * CLIP_MULT, WD),
    "sem_seg_head.clip_model.proj_lin.bias": (BASE_LR * CLIP_MULT, WD),
    "sem_seg_head.clip_adapter.weight": (BASE_LR, WD),
    "sem_seg_head.clip_adapter.bias": (BASE_LR, WD),
    "sem_seg_head.backbone_fusion.weight": (BASE_LR, WD),
    "sem_seg_head.backbone_fusion.bias": (BASE_LR, WD),
}


def groups_by_name(model, param_groups):
    id_to_name = {id(p): n for n, p in model.named_parameters()}  # dedupes shared params
    out = {}
    for group in param_groups:
        assert len(group["params"]) == 1
        name = id_to_name[id(group["params"][0])]
        assert name not in out, f"{name} appears in two groups"
        out[name] = (group["lr"], group["weight_decay"])
    return out


def test_param_groups_lr_and_weight_decay_by_name():
    model = FakeModel()
    cfg = make_cfg()
    optimizer = build_optimizer(cfg, model)
    got = groups_by_name(model, optimizer.param_groups)
    # frozen params are excluded, the shared Linear appears once
    assert set(got) == set(EXPECTED)
    for name, (lr, wd) in EXPECTED.items():
        assert got[name][0] == pytest.approx(lr, rel=1e-12), name
        assert got[name][1] == pytest.approx(wd, rel=1e-12), name
    assert "sem_seg_head.frozen.weight" not in got
    assert len(optimizer.param_groups) == len(EXPECTED)
    # same content as the helper
    assert len(get_param_groups(cfg, model)) == len(EXPECTED)


def test_trainable_parameters_at_learning_rate_0_are_named(caplog):
    """The released configs set BACKBONE_MULTIPLIER 0.0: a module a subclass adds under the
    backbone trains at LR 0; the optimizer says which."""
    cfg = make_cfg()
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.0
    with caplog.at_level("WARNING", logger="cat_seg.solver.build"):
        build_optimizer(cfg, FakeModel())
    assert ("3 trainable parameter tensor(s) get learning rate 0 and will not change: backbone.absolute_pos_embed, "
            "backbone.stem.weight, backbone.stem.bias (SOLVER.BACKBONE_MULTIPLIER 0.0") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="cat_seg.solver.build"):
        build_optimizer(make_cfg(), FakeModel())
    assert "learning rate 0" not in caplog.text


def test_adamw_hyperparameters():
    optimizer = build_optimizer(make_cfg(), FakeModel())
    assert isinstance(optimizer, torch.optim.AdamW)
    for group in optimizer.param_groups:
        assert group["betas"] == (0.9, 0.999)
        assert group["eps"] == 1e-8


def test_sgd_uses_momentum():
    optimizer = build_optimizer(make_cfg(OPTIMIZER="SGD", MOMENTUM=0.8), FakeModel())
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(g["momentum"] == 0.8 and not g["nesterov"] for g in optimizer.param_groups)
    # SOLVER.NESTEROV (detectron2's key) was not read
    optimizer = build_optimizer(make_cfg(OPTIMIZER="SGD", MOMENTUM=0.8, NESTEROV=True), FakeModel())
    assert all(g["nesterov"] for g in optimizer.param_groups)


def test_unknown_optimizer_is_an_error():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(make_cfg(OPTIMIZER="LAMB"), FakeModel())


class TwoParams(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(2))
        self.b = nn.Parameter(torch.zeros(3))


def _sgd_step_with_grads(cfg, grad_a, grad_b):
    """One plain SGD step (lr 1, no momentum / decay): returns -update = effective grads."""
    model = TwoParams()
    optimizer = build_optimizer(cfg, model)
    model.a.grad = grad_a.clone()
    model.b.grad = grad_b.clone()
    optimizer.step()
    return -model.a.detach().clone(), -model.b.detach().clone()


def _plain_sgd_cfg(**kw):
    return make_cfg(
        OPTIMIZER="SGD", MOMENTUM=0.0, BASE_LR=1.0, WEIGHT_DECAY=0.0, WEIGHT_DECAY_NORM=0.0, **kw
    )


def test_full_model_clipping_clips_joint_norm():
    grad_a = torch.tensor([3.0, 0.0])
    grad_b = torch.tensor([0.0, 4.0, 0.0])  # joint L2 norm 5, per-tensor norms 3 and 4
    cfg = _plain_sgd_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    a, b = _sgd_step_with_grads(cfg, grad_a, grad_b)
    scale = 0.5 / (5.0 + 1e-6)  # torch.nn.utils.clip_grad_norm_ formula
    torch.testing.assert_close(a, grad_a * scale)
    torch.testing.assert_close(b, grad_b * scale)
    assert math.sqrt(float(a.square().sum() + b.square().sum())) == pytest.approx(0.5, rel=1e-5)


def test_full_model_clipping_uses_norm_type_and_keeps_small_grads():
    grad_a = torch.tensor([3.0, -1.0])
    grad_b = torch.tensor([0.0, 4.0, 2.0])  # L1 norm 10
    cfg = _plain_sgd_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 2.0
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 1.0
    a, b = _sgd_step_with_grads(cfg, grad_a, grad_b)
    scale = 2.0 / (10.0 + 1e-6)
    torch.testing.assert_close(a, grad_a * scale)
    torch.testing.assert_close(b, grad_b * scale)
    # a norm below the threshold is left alone
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 100.0
    a, b = _sgd_step_with_grads(cfg, grad_a, grad_b)
    torch.testing.assert_close(a, grad_a)
    torch.testing.assert_close(b, grad_b)


def test_clipping_disabled_and_detectron2_per_param_clipping():
    grad_a = torch.tensor([3.0, 0.0])
    grad_b = torch.tensor([0.0, 4.0, 0.0])
    cfg = _plain_sgd_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    a, b = _sgd_step_with_grads(cfg, grad_a, grad_b)
    torch.testing.assert_close(a, grad_a)
    torch.testing.assert_close(b, grad_b)
    # detectron2 "norm" clipping is per parameter tensor, not joint
    cfg = _plain_sgd_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    a, b = _sgd_step_with_grads(cfg, grad_a, grad_b)
    torch.testing.assert_close(a, grad_a / (3.0 + 1e-6))
    torch.testing.assert_close(b, grad_b / (4.0 + 1e-6))
    # detectron2 "value" clipping
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.25
    a, b = _sgd_step_with_grads(cfg, grad_a, grad_b)
    torch.testing.assert_close(a, torch.tensor([0.25, 0.0]))
    torch.testing.assert_close(b, torch.tensor([0.0, 0.25, 0.0]))


def test_cosine_schedule_matches_formula():
    max_iter = 100
    cfg = make_cfg(LR_SCHEDULER_NAME="WarmupCosineLR", MAX_ITER=max_iter, WARMUP_ITERS=0)
    model = FakeModel()
    optimizer = build_optimizer(cfg, model)
    initial = [g["lr"] for g in optimizer.param_groups]
    scheduler = build_lr_scheduler(cfg, optimizer)
    checkpoints = {0, 1, 25, 50, 73, 99}
    seen = set()
    for it in range(max_iter):
        if it in checkpoints:
            mult = 0.5 * (1.0 + math.cos(math.pi * it / max_iter))
            for group, lr0 in zip(optimizer.param_groups, initial):
                assert group["lr"] == pytest.approx(lr0 * mult, rel=1e-9, abs=1e-15), it
            seen.add(it)
        optimizer.step()
        scheduler.step()
    assert seen == checkpoints


def test_visual_prompt_tokens_take_the_clip_multiplier(build_cfg):
    """The deep visual prompt tokens live beside CLIP (``backbone.visual_prompt_tokens``), not
    inside it as in the official code; they still get CLIP's learning rate, not the backbone
    multiplier (0 in the released configs, which would freeze them)."""
    from cat_seg.modeling.meta_arch.cat_seg import CATSeg

    cfg = build_cfg("b", **{"MODEL.SEM_SEG_HEAD.CLIP_FINETUNE": "prompt", "MODEL.SEM_SEG_HEAD.PROMPT_DEPTH": 2,
                            "MODEL.SEM_SEG_HEAD.PROMPT_LENGTH": 3, "SOLVER.BACKBONE_MULTIPLIER": 0.0,
                            "SOLVER.CLIP_MULTIPLIER": 0.1, "SOLVER.BASE_LR": 1e-3})
    model = CATSeg(cfg)
    lrs = groups_by_name(model, get_param_groups(cfg, model))
    assert lrs["backbone.visual_prompt_tokens"][0] == pytest.approx(1e-4)
    assert all(lr == pytest.approx(1e-4) for name, (lr, _) in lrs.items() if name.startswith("backbone."))
    assert any(name.startswith("sem_seg_head.") for name in lrs)
    assert all(lr == pytest.approx(1e-3) for name, (lr, _) in lrs.items() if name.startswith("sem_seg_head."))


@pytest.mark.parametrize("clip_type", ["value", "norm", "full_model"])
def test_clipping_skips_parameters_without_gradient(clip_type):
    """A trainable parameter the forward never uses (the dense last CLIP block's query weight)
    has no gradient: every clipping type steps past it (torch's clip_grad_value_ rejects an
    empty list, which detectron2's per-parameter clipper would hand it)."""
    cfg = _plain_sgd_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.25
    model = TwoParams()
    optimizer = build_optimizer(cfg, model)
    model.a.grad = torch.tensor([1.0, -1.0])  # b: no gradient
    optimizer.step()
    assert model.a.abs().max() <= 0.25 + 1e-6 and torch.equal(model.b.detach(), torch.zeros(3))


def test_unknown_clip_type_is_an_error():
    cfg = make_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "foo"
    with pytest.raises(ValueError, match="SOLVER.CLIP_GRADIENTS.CLIP_TYPE='foo': expected one of full_model"):
        build_optimizer(cfg, FakeModel())


def test_poly_schedule_of_the_deeplab_keys_matches_formula():
    """``WarmupPolyLR`` (DeepLab's schedule, keys ``SOLVER.POLY_LR_*`` from ``add_deeplab_config``),
    as the official training script builds it: ``(1 - iter / MAX_ITER) ** POLY_LR_POWER``."""
    from detectron2.projects.deeplab import add_deeplab_config

    max_iter, power = 50, 0.9
    cfg = make_cfg()
    add_deeplab_config(cfg)
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.POLY_LR_POWER = max_iter, 0, power
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    for it in range(max_iter):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(BASE_LR * (1 - it / max_iter) ** power, rel=1e-9), it
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("warmup_iters", [0, 3, 100])
def test_fixed_gamma_schedule_runs_to_the_end_of_training(warmup_iters):
    """``WarmupStepWithFixedGammaLR`` (a listed schedule) raised fvcore's IndexError at the
    scheduler step after the last iteration (and when built, for a warmup as long as
    training): training died before ``model_final.pth``. Decays at equal steps, the last one
    kept to the end; the warmup is detectron2's."""
    from cat_seg.solver import check_lr_scheduler

    max_iter = 12
    cfg = make_cfg(LR_SCHEDULER_NAME="WarmupStepWithFixedGammaLR", MAX_ITER=max_iter, WARMUP_ITERS=warmup_iters,
                   NUM_DECAYS=3, GAMMA=0.1, WARMUP_FACTOR=0.5, WARMUP_METHOD="constant")
    check_lr_scheduler(cfg)
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(max_iter):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()  # the last one: where = 1
    lrs.append(optimizer.param_groups[0]["lr"])
    if warmup_iters >= max_iter:  # all of training is warmup (detectron2's rule for its values): it runs
        return
    expected = [BASE_LR * 0.1 ** (it // 3) for it in range(max_iter)] + [BASE_LR * 0.1 ** 3]
    # constant warmup: factor 0.5 for the first warmup_iters
    expected = [lr * 0.5 if it < warmup_iters else lr for it, lr in enumerate(expected)]
    assert lrs == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("overrides, message", [
    ({"LR_SCHEDULER_NAME": "WarmupLinearLR"}, "SOLVER.LR_SCHEDULER_NAME='WarmupLinearLR': expected one of "
                                              "WarmupMultiStepLR, WarmupCosineLR, WarmupStepWithFixedGammaLR, "
                                              "WarmupPolyLR"),
    ({"MAX_ITER": 0}, "SOLVER.MAX_ITER=0: expected a positive number of iterations"),
    ({"LR_SCHEDULER_NAME": "WarmupCosineLR", "BASE_LR_END": 1.0},
     f"SOLVER.BASE_LR_END=1.0: expected between 0 and SOLVER.BASE_LR ({BASE_LR}) for WarmupCosineLR"),
    ({"WARMUP_METHOD": "cubic"}, "SOLVER.LR_SCHEDULER_NAME='WarmupMultiStepLR' cannot be built from the SOLVER "
                                 "keys: Unknown warmup method: cubic"),
])
def test_schedule_the_trainer_would_reject_is_one_line_before_training(overrides, message):
    from cat_seg.solver import check_lr_scheduler

    cfg = make_cfg(**overrides)
    with pytest.raises(ValueError) as info:
        check_lr_scheduler(cfg)
    assert str(info.value) == message
    check_lr_scheduler(make_cfg())  # detectron2's defaults are fine
