"""Checkpoints are written crash-safely: a failure while saving leaves nothing half-written."""
import os

import pytest
import torch
from torch import nn

from cat_seg.checkpoint import CATSegCheckpointer


class Counter:
    def __init__(self):
        self.value = 3

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def _checkpointer(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2))
    return model, CATSegCheckpointer(model, str(tmp_path), counter=Counter())


def test_save_writes_checkpoint_and_tag_without_temporary_files(tmp_path):
    model, ckpt = _checkpointer(tmp_path)
    ckpt.save("model_0000001", iteration=1)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    data = torch.load(tmp_path / "model_0000001.pth", weights_only=False)
    assert data["iteration"] == 1 and data["counter"] == {"value": 3}
    assert torch.equal(data["model"]["0.weight"], model[0].weight)


def test_failure_while_saving_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    _, ckpt = _checkpointer(tmp_path)
    ckpt.save("model_0000001")

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000002")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
