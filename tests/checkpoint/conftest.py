"""Fixtures of the checkpoint tests: official-layout tiny weights, a file holding them, and
tiny models loaded from it. The reference implementation lives in ``tests/reference``."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))

from official_reference import REFERENCE_CONFIGS, make_official_state_dict  # noqa: E402


@pytest.fixture(scope="session")
def official_tiny():
    """Official-layout state dict of the tiny B-like model (seed 0)."""
    return make_official_state_dict("tiny-b", seed=0)


@pytest.fixture(scope="session")
def tiny_cfg():
    return REFERENCE_CONFIGS["tiny-b"]


@pytest.fixture(scope="session")
def official_tiny_file(official_tiny, tmp_path_factory):
    """The tiny official weights saved as a detectron2 training checkpoint (with extras)."""
    path = tmp_path_factory.mktemp("official") / "model_tiny.pth"
    torch.save({"model": official_tiny, "optimizer": {"state": {}, "param_groups": []},
                "scheduler": {"base_lrs": [2e-4], "last_epoch": 79999}, "iteration": 79999}, path)
    return str(path)


@pytest.fixture(scope="session")
def load_tiny(tiny_model, official_tiny_file):
    """``load_tiny(**overrides)``: a tiny model (eval mode) with the official weights loaded
    through ``CATSegCheckpointer`` (``MODEL.WEIGHTS`` path)."""
    from cat_seg.checkpoint import CATSegCheckpointer

    def load(path=None, **overrides):
        model = tiny_model("b", seed=123, **overrides).eval()
        CATSegCheckpointer(model).resume_or_load(path or official_tiny_file, resume=False)
        return model

    return load
