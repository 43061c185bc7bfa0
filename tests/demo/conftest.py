"""Fixtures for the demo / Python API tests: a tiny CPU CAT-Seg with saved random weights."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CONFIG = os.path.join(REPO, "configs", "quick_schedules", "tiny_vitb_cpu.yaml")
# the tiny config names its CLIP model with a path relative to the repository root
TINY_OPTS = ["MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED", os.path.join(REPO, "configs", "clip_models", "tiny-vit-b16.json")]
DEMO = os.path.join(REPO, "demo", "demo.py")


def subprocess_env(**changes) -> dict:
    """Environment for subprocesses: this checkout's ``cat_seg`` first on the path (the
    editable install may point at another checkout), plus ``changes`` (``None`` removes)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def make_image(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth random RGB image (blocky colour regions, so segments are not single pixels)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 8, 1), max(width // 8, 1), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


@pytest.fixture(scope="session")
def tiny():
    """Paths of the tiny setup: ``repo``, ``config``, ``opts`` (config overrides), ``demo``
    (the wrapper script), ``env`` (subprocess environment importing this checkout)."""
    return SimpleNamespace(repo=REPO, config=TINY_CONFIG, opts=list(TINY_OPTS), demo=DEMO, env=subprocess_env())


@pytest.fixture(scope="session")
def image_factory():
    """:func:`make_image` (``seed, height, width -> RGB uint8``)."""
    return make_image


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A random-weight tiny checkpoint written with the project checkpointer."""
    from cat_seg import OpenVocabSegmenter
    from cat_seg.checkpoint import CATSegCheckpointer

    torch.manual_seed(0)
    seg = OpenVocabSegmenter.from_config(TINY_CONFIG, device="cpu", opts=TINY_OPTS)
    directory = tmp_path_factory.mktemp("weights")
    CATSegCheckpointer(seg.model, save_dir=str(directory)).save("tiny_random")
    return str(directory / "tiny_random.pth")


@pytest.fixture(scope="session")
def segmenter(checkpoint):
    """The tiny model loaded from :func:`checkpoint` through ``weights=``."""
    from cat_seg import OpenVocabSegmenter

    torch.manual_seed(1)  # different init: the test below only passes if the weights are loaded
    return OpenVocabSegmenter.from_config(TINY_CONFIG, weights=checkpoint, device="cpu", opts=TINY_OPTS)


@pytest.fixture(scope="session")
def images():
    """Three images: two of the same size, one of another size and aspect ratio."""
    return [make_image(0, 96, 128), make_image(1, 96, 128), make_image(2, 120, 72)]


@pytest.fixture(scope="session")
def demo_module():
    """The demo's module :mod:`cat_seg.cli.demo` (to call ``main`` in-process)."""
    from cat_seg.cli import demo

    return demo
