"""bf16 inference (``MODEL.PRECISION bf16``) against fp32 on the toy-trained model: agreement
of the predicted labels on the scored pixels (those with a ground-truth label; the toy's
background is not a class, its pixels are ignored by the evaluation and hold near-ties
between classes).

Needs the toy run's checkpoint ``output/toy/model_final.pth`` and its val split
(``tools/run_toy.py`` / ``make demo``); the test trains nothing and is skipped without them.
The bf16 run enters autocast itself, so the test also measures bf16 on CPUs without native
bf16 (where ``MODEL.PRECISION bf16`` would fall back to fp32). On a CUDA device (skipped
without one; ``tools/gpu_benchmark.sh``, step ``bf16_agreement_cuda``, with the checkpoint and
the val split carried) the fp32 reference runs with TF32 off and the bf16 run as evaluation
runs it (TF32 allowed for the fp32 regions' matmuls and convolutions, as ``train_net.py`` sets
it; eager, as the compiled graph's fused kernels only keep more fp32 intermediates).

Target: >= 99.5% on the val split (100 images); measured 99.51-99.74% with the precision
policy of ``cat_seg/modeling/precision.py`` on two toy checkpoints (docs/benchmarks.md). On
an H200 (torch 2.11, run 3 of docs/benchmarks.md) the ``cuda`` setting gave 99.34% / 99.29%
(whole image / sliding window) for the checkpoint that gives 99.54% / 99.52% on the CPU: it
fails there, for a reason not yet known; the two other CUDA settings narrow it down. The
toy model is a hard case: its unseen classes come in near-identical pairs (``green dotted``
and ``green speckled`` both at 0.4587 on the same pixels), so 17-21% of the scored pixels
have a top-2 probability margin below 1e-3, under what bf16 resolves; where the margin is
larger, 99.98% of the labels agree.
"""
from pathlib import Path

import numpy as np
import pytest
import torch


REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "output" / "toy" / "model_final.pth"
TOY_CONFIG = REPO / "configs" / "quick_schedules" / "toy_synthetic.yaml"
MIN_AGREEMENT = 0.995


@pytest.fixture(scope="module")
def val_samples(build_cfg):
    """``[(uint8 RGB [3, H, W], label [H, W])]`` of the toy config's test split, read once."""
    from detectron2.data import DatasetCatalog
    from PIL import Image

    import cat_seg.data  # noqa: F401  (registers the datasets)
    from cat_seg.data.datasets import DatasetNotFoundError

    try:
        records = DatasetCatalog.get(build_cfg(TOY_CONFIG).DATASETS.TEST[0])
    except DatasetNotFoundError:  # not generated; any other error is a failure, not a skip
        records = []
    if not records:
        pytest.skip("the synthetic val split is not generated (run tools/run_toy.py)")
    return [(torch.from_numpy(np.asarray(Image.open(r["file_name"]).convert("RGB")).copy()).permute(2, 0, 1),
             torch.from_numpy(np.asarray(Image.open(r["sem_seg_file_name"])).astype(np.int64)))
            for r in records]


def _labels(model, samples):
    with torch.no_grad():
        return [model([{"image": image}])[0]["sem_seg"].argmax(0).cpu() for image, _ in samples]


def _tf32(monkeypatch, allow: bool):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", allow)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow)


# The GPU runs: evaluation's settings (TF32 allowed in the fp32 regions), and two variants
# that tell where a GPU-only loss of agreement comes from: TF32 off in the bf16 run too, and
# cuBLAS's bf16 GEMMs without reduced-precision (bf16) reductions of split-K partial sums
# (allowed by default; the CPU never reduces in bf16). Each is a setting a user may run, so
# each must meet the target.
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
SETTINGS = {"cpu": {}, "cuda": {"tf32": True}, "cuda-tf32-off": {"tf32": False},
            "cuda-full-bf16-reductions": {"tf32": True, "reduced_precision_reduction": False}}


@pytest.mark.skipif(not CHECKPOINT.is_file(),
                    reason=f"no toy-trained checkpoint at {CHECKPOINT.relative_to(REPO)} (run tools/run_toy.py); "
                           "this test trains nothing")
@pytest.mark.parametrize("setting", [name if name == "cpu" else pytest.param(name, marks=CUDA) for name in SETTINGS])
@pytest.mark.parametrize("sliding", [False, True])
def test_bf16_agrees_with_fp32_on_scored_pixels(build_cfg, val_samples, sliding, setting, monkeypatch):
    from detectron2.modeling import build_model

    import cat_seg.modeling  # noqa: F401
    from cat_seg.checkpoint import CATSegCheckpointer
    from cat_seg.data.synthetic import IGNORE_LABEL
    from cat_seg.modeling.meta_arch import cat_seg as meta_arch

    device = "cpu" if setting == "cpu" else "cuda"
    flags = SETTINGS[setting]
    cfg = build_cfg(TOY_CONFIG, MODEL__SEM_SEG_HEAD__CLIP_WEIGHTS="none", TEST__SLIDING_WINDOW=sliding,
                    MODEL__DEVICE=device, MODEL__COMPILE=False)
    cfg.MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON = str(REPO / "datasets" / "synthetic_val.json")
    model = build_model(cfg).eval()
    CATSegCheckpointer(model).load(str(CHECKPOINT))

    assert model.precision == "fp32"
    if device == "cuda":
        _tf32(monkeypatch, False)
    fp32_labels = _labels(model, val_samples)
    if device == "cuda":
        _tf32(monkeypatch, flags["tf32"])
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_bf16_reduced_precision_reduction",
                            flags.get("reduced_precision_reduction", True))
    model.precision = "bf16"
    monkeypatch.setattr(meta_arch, "resolve_precision", lambda setting, device: torch.bfloat16)
    bf16_labels = _labels(model, val_samples)

    agree = total = 0
    for (_, label), exact, fast in zip(val_samples, fp32_labels, bf16_labels):
        scored = label != IGNORE_LABEL
        agree += int((exact == fast)[scored].sum())
        total += int(scored.sum())
    assert total > 0
    print(f"bf16 agrees with fp32 on {agree / total:.4%} of the scored pixels ({setting}, sliding window: {sliding})")
    assert agree / total >= MIN_AGREEMENT, f"bf16 agrees with fp32 on {agree / total:.4%} of the scored pixels"
