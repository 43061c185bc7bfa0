"""Trainer builders that need no training run: evaluation batch size and the training step."""
import pytest
import torch
from detectron2.config import CfgNode
from detectron2.engine import SimpleTrainer

from cat_seg.engine import MixedPrecisionTrainer
from cat_seg.engine.trainer import Trainer, resolve_test_batch_size
from cat_seg.modeling.precision import supports_native


def _cfg(ims_per_batch, device="cpu", precision="fp32"):
    return CfgNode({"TEST": {"IMS_PER_BATCH": ims_per_batch},
                    "MODEL": {"DEVICE": device, "PRECISION": precision}})


def test_test_batch_size_auto_and_explicit():
    assert resolve_test_batch_size(_cfg(0, "cpu")) == 1
    assert resolve_test_batch_size(_cfg(0, "cuda")) == 8
    assert resolve_test_batch_size(_cfg(0, "cuda:1")) == 8
    assert resolve_test_batch_size(_cfg(3, "cpu")) == 3
    with pytest.raises(ValueError, match=r"TEST.IMS_PER_BATCH=-1"):
        resolve_test_batch_size(_cfg(-1))


def _step(precision):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer.build_train_step(_cfg(1, "cpu", precision), model, [], optimizer)


def test_train_step_follows_model_precision():
    step = _step("fp32")
    assert type(step) is SimpleTrainer
    step = _step("bf16")
    if supports_native(torch.bfloat16, "cpu"):
        assert isinstance(step, MixedPrecisionTrainer)
        assert step.precision == torch.bfloat16 and step.grad_scaler is None
    else:  # falls back to fp32 with a warning
        assert type(step) is SimpleTrainer
    with pytest.raises(ValueError, match="MODEL.PRECISION='fp64'"):
        _step("fp64")
