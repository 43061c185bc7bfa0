"""Shared test settings and helpers.

Session-wide: exact fp32 matmuls (TF32 off) and two CPU threads, so that tests running side
by side on a small machine stay lean and numerically reproducible.

Helpers are exposed as fixtures (``build_cfg``, ``tiny_model``, ``class_jsons``,
``random_images``) rather than imported, so that other ``conftest.py`` files in
subdirectories cannot shadow them.
"""
import atexit
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
SCRIPT_DRIVER = REPO / "tests" / "script_driver.py"

TINY_CONFIGS = {
    "b": REPO / "configs/quick_schedules/tiny_vitb_cpu.yaml",
    "l": REPO / "configs/quick_schedules/tiny_vitl_cpu.yaml",
}
VITB_CONFIG = REPO / "configs/vitb_384.yaml"

# Vocabularies written to a temporary directory (the tiny configs name dataset jsons that
# only exist after the synthetic benchmark has been generated).
TRAIN_CLASSES = ["sky", "grass", "road", "car", "person"]
TEST_CLASSES = ["sky", "tree", "building, edifice", "water"]

_tmp_dir = None


def _class_json_dir() -> Path:
    global _tmp_dir
    if _tmp_dir is None:
        _tmp_dir = Path(tempfile.mkdtemp(prefix="catseg-test-classes-"))
        atexit.register(shutil.rmtree, _tmp_dir, True)
        (_tmp_dir / "train.json").write_text(json.dumps(TRAIN_CLASSES))
        (_tmp_dir / "test.json").write_text(json.dumps(TEST_CLASSES))
    return _tmp_dir


def _set_key(cfg, dotted: str, value):
    node = cfg
    *parents, leaf = dotted.split(".")
    for name in parents:
        node = node[name]
    if leaf not in node:
        raise KeyError(f"unknown config key {dotted}")
    node[leaf] = value


def build_cfg(path, opts=None, **overrides):
    """A frozen-free cfg: detectron2 defaults + cat-seg keys + ``path`` + overrides.

    ``path`` is a config file (absolute, relative to the repository, or ``"b"``/``"l"`` for
    the tiny B-/L-like configs). Relative CLIP model-config jsons are made absolute, class
    jsons point at small temporary vocabularies, ``MODEL.DEVICE`` is ``cpu``.
    Overrides: ``opts={"MODEL.SEM_SEG_HEAD.PAD_LEN": 4}`` and/or keyword arguments with
    ``__`` for ``.`` (``MODEL__SEM_SEG_HEAD__PAD_LEN=4``); unknown keys raise ``KeyError``.
    """
    from detectron2.config import get_cfg

    from cat_seg.config import add_cat_seg_config

    path = TINY_CONFIGS.get(path, path)
    path = Path(path)
    if not path.is_absolute():
        path = REPO / path
    cfg = get_cfg()
    add_cat_seg_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = "cpu"
    head = cfg.MODEL.SEM_SEG_HEAD
    if head.CLIP_PRETRAINED.endswith(".json") and not Path(head.CLIP_PRETRAINED).is_absolute():
        head.CLIP_PRETRAINED = str(REPO / head.CLIP_PRETRAINED)
    classes = _class_json_dir()
    head.TRAIN_CLASS_JSON = str(classes / "train.json")
    head.TEST_CLASS_JSON = str(classes / "test.json")
    # fp32 unless a test asks otherwise: MODEL.PRECISION auto would pick bf16 on CPUs with
    # native bf16 only, and results must not depend on the machine running the suite
    cfg.MODEL.PRECISION = "fp32"
    for key, value in dict(opts or {}).items():
        _set_key(cfg, key, value)
    for key, value in overrides.items():
        _set_key(cfg, key.replace("__", "."), value)
    return cfg


def tiny_model(variant="b", *, seed=0, train=False, opts=None, **overrides):
    """Build the tiny B-like (``"b"``) or L-like (``"l"``) CAT-Seg model with seeded weights."""
    from detectron2.modeling import build_model

    import cat_seg.modeling  # noqa: F401  (registers the components)

    cfg = build_cfg(variant, opts, **overrides)
    torch.manual_seed(seed)
    model = build_model(cfg)
    return model.train(train)


def random_images(sizes, seed=0):
    """uint8 RGB images ``[3, h, w]`` for each ``(h, w)`` in ``sizes``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in sizes]


class LargestAllocation(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns (checks that no
    ``[T, H, W]`` all-class map at full resolution is built)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.fixture(name="largest_allocation", scope="session")
def largest_allocation_fixture():
    """The :class:`LargestAllocation` dispatch mode: ``with largest_allocation() as mode: ...``."""
    return LargestAllocation


@pytest.fixture(scope="session")
def class_jsons():
    """``(train_json, test_json, train_classes, test_classes)`` of the default vocabularies."""
    d = _class_json_dir()
    return str(d / "train.json"), str(d / "test.json"), list(TRAIN_CLASSES), list(TEST_CLASSES)


@pytest.fixture(name="build_cfg", scope="session")
def build_cfg_fixture():
    return build_cfg


@pytest.fixture(name="tiny_model", scope="session")
def tiny_model_fixture():
    return tiny_model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint file (our layout) of the tiny B-like model (``tiny_vitb_cpu.yaml``) with
    seeded random weights: what ``MODEL.WEIGHTS`` must hold for that config (the web app's
    process and a test's API see the same model)."""
    path = tmp_path_factory.mktemp("tiny-ckpt") / "tiny.pth"
    torch.save({"model": tiny_model("b", seed=3).state_dict()}, path)
    return str(path)


@pytest.fixture(name="random_images", scope="session")
def random_images_fixture():
    return random_images


def run_scripts_in_one_process(runs, *, preload="", python=sys.executable, env=None, cwd=None, timeout=1800):
    """Run ``runs`` (Python scripts or ``-c`` code, each as in a process of its own) one after
    another in ONE process of ``python`` (``tests/script_driver.py``, which describes ``runs``
    and ``preload``), so that torch, detectron2 and cat_seg are imported once instead of once
    per script. Returns ``{run id: record}``, a record having the ``returncode``, ``stdout``
    and ``stderr`` that ``subprocess.run(..., capture_output=True, text=True)`` would give.
    ``env`` and ``cwd`` are the process's, as for :func:`subprocess.run`; ``timeout`` is a hang
    guard."""
    with tempfile.TemporaryDirectory(prefix="catseg-script-driver-") as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(json.dumps({"preload": preload, "runs": runs}))
        proc = subprocess.run([str(python), str(SCRIPT_DRIVER), str(spec), str(out)], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0 and out.is_file(), (
            f"the script driver failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        records = json.loads(out.read_text())["runs"]
    assert sorted(records) == sorted(run["id"] for run in runs)
    return {key: SimpleNamespace(**record) for key, record in records.items()}


@pytest.fixture(name="run_scripts_in_one_process", scope="session")
def run_scripts_in_one_process_fixture():
    """:func:`run_scripts_in_one_process`."""
    return run_scripts_in_one_process
