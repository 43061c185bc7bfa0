"""The fast default (bf16 autocast + every speed option) predicts the same labels as the exact
mode on >= 99.5% of pixels of the toy-trained model.

Needs the toy run's checkpoint ``output/toy/model_final.pth`` (``tools/run_toy.py``); the test
trains nothing and is skipped without it. Images: the synthetic val split when it has been
generated (``datasets/synthetic``), otherwise seeded random images.
"""
import os
from pathlib import Path

import pytest
import torch

from cat_seg.modeling.fast import FastOptions, set_fast_options

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "output" / "toy" / "model_final.pth"
TOY_CONFIG = REPO / "configs" / "quick_schedules" / "toy_synthetic.yaml"
NUM_IMAGES = 8


def _val_images(cfg):
    """Up to NUM_IMAGES uint8 RGB val images, or None when the split is not available."""
    try:
        import numpy as np
        from detectron2.data import DatasetCatalog
        from PIL import Image

        import cat_seg.data  # noqa: F401  (registers the datasets)

        records = DatasetCatalog.get(cfg.DATASETS.TEST[0])[:NUM_IMAGES]
        images = [torch.from_numpy(np.asarray(Image.open(r["file_name"]).convert("RGB")).copy()).permute(2, 0, 1)
                  for r in records]
        return images or None
    except Exception:
        return None


@pytest.mark.skipif(not CHECKPOINT.is_file(),
                    reason=f"no toy-trained checkpoint at {CHECKPOINT.relative_to(REPO)} (run tools/run_toy.py); "
                           "this test trains nothing")
@pytest.mark.parametrize("sliding", [False, True])
def test_bf16_fast_default_agrees_with_exact_mode(build_cfg, random_images, sliding):
    from detectron2.modeling import build_model

    import cat_seg.modeling  # noqa: F401
    from cat_seg.checkpoint import CATSegCheckpointer

    cfg = build_cfg(TOY_CONFIG, MODEL__SEM_SEG_HEAD__CLIP_WEIGHTS="none", TEST__SLIDING_WINDOW=sliding)
    test_json = REPO / "datasets" / "synthetic_val.json"
    if test_json.is_file():
        cfg.MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON = str(test_json)
    model = build_model(cfg).eval()
    CATSegCheckpointer(model).load(str(CHECKPOINT))
    images = _val_images(cfg) or random_images([(160, 200)] * 4, seed=11)

    agree = total = 0
    for image in images:
        batch = [{"image": image}]
        set_fast_options(model, FastOptions.exact())
        model.inference_autocast = None
        with torch.no_grad():
            exact = model(batch)[0]["sem_seg"].argmax(0)
        set_fast_options(model, FastOptions())
        model.inference_autocast = torch.bfloat16
        with torch.no_grad():
            fast = model(batch)[0]["sem_seg"].argmax(0)
        agree += int((exact == fast).sum())
        total += exact.numel()
    assert agree / total >= 0.995, f"bf16 fast mode agrees on {agree / total:.4%} of pixels"
