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


class LinearLoss(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, batch):
        return {"loss_a": self.linear(batch).square().mean(), "loss_b": self.linear.bias.abs().sum()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_step_runs_the_hooks_and_steps_like_simple_trainer(dtype):
    """The autocast step calls the hooks' ``after_backward`` with true (unscaled) gradients,
    writes the losses and steps the optimizer, like detectron2's ``SimpleTrainer``."""
    from detectron2.engine import HookBase
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    model = LinearLoss()
    before = model.linear.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = MixedPrecisionTrainer(model, [torch.randn(4, 2)], optimizer, dtype, "cpu")
    if step.grad_scaler is not None:  # a scale that does not overflow fp16 here (65536 would skip the step)
        step.grad_scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    seen = []

    class AfterBackward(HookBase):
        def after_backward(self):
            seen.append(model.linear.weight.grad.detach().clone())

    step.register_hooks([AfterBackward()])
    step.iter = 0
    with EventStorage(0) as storage:
        step.storage = storage
        step.run_step()
        assert {"loss_a", "loss_b", "total_loss"} <= set(storage.histories())
    assert len(seen) == 1 and seen[0].abs().sum() > 0
    # the gradient the hook saw is the one the optimizer applied (unscaled under fp16)
    torch.testing.assert_close(model.linear.weight.detach(), before - 0.1 * seen[0])


def test_vocabulary_mismatch_by_class_count():
    """The test vocabulary must have the dataset's class count; a dataset scored with
    background (VOC-20b) needs its classes and at least one background prompt."""
    import cat_seg.data  # noqa: F401  (registers the datasets)
    from cat_seg.data.catalog import vocabulary_path
    from cat_seg.engine.trainer import vocabulary_mismatch
    from cat_seg.utils import read_class_json

    def names(key):
        return read_class_json(str(vocabulary_path(key)), "TEST_CLASS_JSON")

    assert vocabulary_mismatch("ade150.json", names("ade150"), "ade20k_150_test_sem_seg") is None
    assert vocabulary_mismatch("coco.json", names("coco"), "ade20k_150_test_sem_seg") == (
        "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON=coco.json has 171 classes but dataset ade20k_150_test_sem_seg has 150: "
        "use the dataset's class json")
    assert vocabulary_mismatch("voc20b.json", names("voc20b"), "voc_2012_test_background_sem_seg") is None
    assert vocabulary_mismatch("voc20.json", names("voc20"), "voc_2012_test_background_sem_seg") == (
        "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON=voc20.json has 20 classes but dataset voc_2012_test_background_sem_seg "
        "needs its 20 classes followed by background prompts: use the dataset's class json")


def test_metrics_json_is_strict_json(tmp_path):
    """detectron2's JSONWriter wrote NaN (classes absent from a benchmark's ground truth,
    mIoU-unseen without unseen classes, a diverging loss) as the bare token NaN, which JSON
    readers other than Python's refuse; the trainer's writer writes null."""
    import json
    import math
    from types import SimpleNamespace

    from detectron2.utils.events import EventStorage

    from cat_seg.engine.writers import StrictJSONWriter

    writers = Trainer.build_writers(SimpleNamespace(cfg=SimpleNamespace(OUTPUT_DIR=str(tmp_path)), max_iter=5))
    (writer,) = [w for w in writers if isinstance(w, StrictJSONWriter)]
    with EventStorage(3) as storage:
        storage.put_scalars(**{"sem_seg/mIoU": 50.5, "sem_seg/mIoU-unseen": math.nan, "sem_seg/IoU-cat": math.inf,
                               "total_loss": -math.inf}, smoothing_hint=False)
        writer.write()
        storage.iter = 4
        storage.put_scalar("total_loss", 0.25, smoothing_hint=False)
        writer.write()
    for w in writers:
        w.close()

    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    with open(tmp_path / "metrics.json") as f:
        rows = [json.loads(line, parse_constant=refuse) for line in f]
    assert rows == [{"iteration": 3, "sem_seg/mIoU": 50.5, "sem_seg/mIoU-unseen": None, "sem_seg/IoU-cat": None,
                     "total_loss": None},
                    {"iteration": 4, "total_loss": 0.25}]
