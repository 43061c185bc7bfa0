"""The examples of ``docs/segment_your_images.md`` run as written on the tiny random model.

The Python blocks run in order in one namespace, the shell blocks that use the tiny config
run as a real process, the others are syntax-checked (``bash -n``; they need real weights or
the internet). The working directory is a temporary copy of the layout the guide assumes: the
repository's ``configs/`` (linked), ``photo.jpg`` and ``photos/``.
"""
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

GUIDE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "docs", "segment_your_images.md")
TINY = "configs/quick_schedules/tiny_vitb_cpu.yaml"


def code_blocks(language: str):
    with open(GUIDE) as f:
        text = f.read()
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture
def guide_dir(tmp_path, tiny, image_factory, monkeypatch):
    os.symlink(os.path.join(tiny.repo, "configs"), tmp_path / "configs")
    Image.fromarray(image_factory(30, 96, 128)).save(tmp_path / "photo.jpg", quality=95)
    (tmp_path / "photos").mkdir()
    for seed, (h, w) in enumerate([(96, 128), (96, 128), (120, 72)]):
        Image.fromarray(image_factory(31 + seed, h, w)).save(tmp_path / "photos" / f"p{seed}.jpg", quality=95)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_guide_has_examples():
    assert len(code_blocks("python")) >= 6
    assert any(TINY in block for block in code_blocks("bash"))


def test_python_examples_run(guide_dir, capsys):
    namespace = {"__name__": "guide"}
    for block in code_blocks("python"):
        exec(compile(block, GUIDE, "exec"), namespace)
    out = capsys.readouterr().out
    # the error example prints the two one-line errors it provokes
    assert "error: class name at position 0 of the class list is blank" in out
    assert "error: batch_size must be a positive integer or None, got -1" in out
    assert (guide_dir / "photo_features.npz").is_file()
    assert [r.label_map.shape for r in namespace["results"]] == [(96, 128), (96, 128), (120, 72)]


def test_shell_examples(guide_dir, tiny):
    blocks = code_blocks("bash")
    for block in blocks:
        syntax = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True, timeout=1800)
        assert syntax.returncode == 0, syntax.stderr
    runnable = [b for b in blocks if TINY in b]
    for block in runnable:
        command = block.replace("python demo/demo.py", f"{sys.executable} {tiny.demo}")
        proc = subprocess.run(["bash", "-c", command], cwd=guide_dir, capture_output=True, text=True,
                              env=tiny.env, timeout=1800)
        assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in (guide_dir / "out").iterdir())
    assert written == sorted(f"p{i}{suffix}" for i in range(3) for suffix in (".json", "_labels.png", "_overlay.png"))


README = os.path.join(os.path.dirname(GUIDE), os.pardir, "README.md")


def test_the_readme_python_example_runs_on_the_tiny_model(guide_dir, tiny, checkpoint, image_factory):
    """README's "Python" block as written, with the tiny config and random weights in place of
    ViT-B and ``model_final.pth``, and the images it names written first; what its comments
    say of the results holds."""
    import numpy as np
    import torch

    with open(README) as f:
        text = f.read()
    block = re.search(r"^### Python\n\n```python\n(.*?)^```", text, flags=re.S | re.M).group(1)
    released = 'OpenVocabSegmenter.from_config("configs/vitb_384.yaml", weights="model_final.pth", device="cpu")'
    assert released in block
    block = block.replace(released, f"OpenVocabSegmenter.from_config({TINY!r}, weights={checkpoint!r}, device='cpu', "
                                    f"opts={tiny.opts!r})")
    for name, seed in (("a.jpg", 40), ("b.jpg", 41)):
        Image.fromarray(image_factory(seed, 64, 80)).save(guide_dir / name, quality=95)
    namespace = {"__name__": "readme", "frames": [image_factory(42, 48, 64), image_factory(43, 48, 64)]}
    exec(compile(block, README, "exec"), namespace)
    result = namespace["result"]
    assert result.classes == ["cat", "dog", "grass"]
    assert result.label_map.dtype == np.int32 and result.label_map.shape == (96, 128)
    assert result.confidence.dtype == np.float32 and result.probs.shape == (3, 96, 128)
    assert result.probabilities(torch.float16).dtype == torch.float16
    assert sorted(result.areas()) == ["cat", "dog", "grass"]
    assert result.overlay().shape == (96, 128, 3)
    assert [r.label_map.shape for r in namespace["results"]] == [(48, 64), (48, 64)]
    features = namespace["features"]
    assert features.cost_volume.shape == (2, *features.embeddings.shape[1:])
