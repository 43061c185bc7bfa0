"""Synthetic toy benchmark: determinism, seen/unseen split, label ranges, file counts."""
import json

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from cat_seg.data import synthetic
from cat_seg.data.catalog import class_names
from cat_seg.data.datasets import register_all

SMALL = dict(num_train=24, num_val=16, image_size=64)


def files(root):
    base = root / "synthetic"
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*"))
            if p.is_file()}


def test_class_split():
    val = synthetic.val_class_names()
    train = synthetic.train_class_names()
    assert len(val) == 16 and len(train) == 12 and val[0] == "red striped"
    unseen = [val[i] for i in synthetic.unseen_class_indices()]
    assert unseen == ["red plain", "green speckled", "blue dotted", "yellow striped"]
    assert [val[i] for i in synthetic.seen_class_indices()] == train
    # one unseen class per colour and per pattern; every word is still seen in training
    assert sorted(n.split()[0] for n in unseen) == sorted(synthetic.COLOURS)
    assert sorted(n.split()[1] for n in unseen) == sorted(synthetic.PATTERNS)
    assert {n.split()[0] for n in train} == set(synthetic.COLOURS)
    assert {n.split()[1] for n in train} == set(synthetic.PATTERNS)
    assert class_names("synthetic_train") == train
    assert class_names("synthetic_val") == val


def test_deterministic_from_seed(tmp_path):
    synthetic.generate_synthetic(tmp_path / "a", seed=3, verbose=False, **SMALL)
    synthetic.generate_synthetic(tmp_path / "b", seed=3, verbose=False, **SMALL)
    synthetic.generate_synthetic(tmp_path / "c", seed=4, verbose=False, **SMALL)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_layout_counts_labels_and_registration(tmp_path, restore_registration):
    out = synthetic.generate_synthetic(tmp_path, seed=0, verbose=False, **SMALL)
    assert out == tmp_path / "synthetic"
    for split, count, k in (("train", 24, 12), ("val", 16, 16)):
        images = sorted((out / "images" / split).glob("*.jpg"))
        labels = sorted((out / "annotations" / split).glob("*.png"))
        assert len(images) == len(labels) == count
        present = set()
        for image_path, label_path in zip(images, labels):
            assert image_path.stem == label_path.stem
            label = np.asarray(synthetic.cv2.imread(str(label_path), -1))
            image = synthetic.cv2.imread(str(image_path))
            assert label.dtype == np.uint8 and label.shape == (64, 64) == image.shape[:2]
            values = set(np.unique(label).tolist())
            assert values <= set(range(k)) | {255}
            assert 255 in values and len(values) >= 2  # background + at least one shape
            present |= values - {255}
        assert present == set(range(k))  # every class occurs, unseen ones only in val
    info = json.loads((out / "synthetic_info.json").read_text())
    assert info["seed"] == 0 and info["unseen_classes"] == synthetic.unseen_class_indices()

    register_all(tmp_path)
    records = DatasetCatalog.get("synthetic_val_sem_seg")
    assert len(records) == 16 and len(DatasetCatalog.get("synthetic_train_sem_seg")) == 24
    meta = MetadataCatalog.get("synthetic_val_sem_seg")
    assert meta.stuff_classes == synthetic.val_class_names() and meta.ignore_label == 255


def test_shape_pixels_have_their_colour_and_pattern(tmp_path):
    """Labels agree with the image: the lit half of a class's pixels is closest to that
    class's colour, and only ``plain`` objects are flat (the patterns darken part of them)."""
    out = synthetic.generate_synthetic(tmp_path, seed=1, verbose=False, num_train=4, num_val=16,
                                       image_size=256)
    checked = set()
    names = synthetic.val_class_names()
    palette = np.array(list(synthetic.COLOURS.values()), float)
    for i in range(16):
        image = synthetic.cv2.imread(str(out / f"images/val/{i:06d}.jpg"))[:, :, ::-1]
        label = synthetic.cv2.imread(str(out / f"annotations/val/{i:06d}.png"), -1)
        for k in set(np.unique(label).tolist()) - {255}:
            eroded = synthetic.cv2.erode((label == k).astype(np.uint8), np.ones((3, 3)))
            if eroded.sum() < 200:
                continue
            pixels = image[eroded.astype(bool)].astype(float)
            luminance = pixels.mean(axis=1)
            lit = pixels[luminance >= np.median(luminance)].mean(axis=0)
            colour, pattern = names[k].split()
            nearest = list(synthetic.COLOURS)[np.argmin(((palette - lit) ** 2).sum(1))]
            assert nearest == colour
            # relative spread of the luminance: plain objects only have shading and grain
            # (measured <= 0.08), patterns darken part of the object to 0.35x (>= 0.29)
            spread = luminance.std() / luminance.mean()
            if pattern == "plain":
                assert spread < 0.15, (i, names[k], spread)
            else:
                assert spread > 0.2, (i, names[k], spread)
            checked.add(pattern)
    assert checked == set(synthetic.PATTERNS)


def test_unknown_pattern_is_rejected():
    with pytest.raises(ValueError, match="unknown fill pattern 'wavy'"):
        synthetic._fill("wavy", np.random.default_rng(0), 16, np.ones(3))


def test_rerun_skips_and_new_parameters_regenerate(tmp_path, capsys):
    synthetic.generate_synthetic(tmp_path, **SMALL)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "synthetic").rglob("*.png")}
    synthetic.generate_synthetic(tmp_path, **SMALL)
    assert "already complete" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "synthetic").rglob("*.png")} == before
    synthetic.generate_synthetic(tmp_path, num_train=5, num_val=3, image_size=64, verbose=False)
    assert len(list((tmp_path / "synthetic/images/train").iterdir())) == 5
    assert len(list((tmp_path / "synthetic/annotations/val").iterdir())) == 3


def test_cli(tmp_path, capsys):
    assert synthetic.main(["--root", str(tmp_path), "--num-train", "3", "--num-val", "2",
                           "--image-size", "64", "--seed", "5"]) == 0
    assert len(list((tmp_path / "synthetic/images/val").iterdir())) == 2
    for option, value, least in (("--image-size", "8", 64), ("--num-train", "-1", 0), ("--num-val", "0", 1),
                                 ("--seed", "-1", 0)):
        assert synthetic.main(["--root", str(tmp_path / "bad"), option, value]) == 2
        name = option[2:].replace("-", "_")
        assert capsys.readouterr().err == f"error: {name}={value} ({option}): expected at least {least}\n"
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("size", [64, 256])
def test_render_sample_label_matches_drawn_shapes(size):
    rng = np.random.default_rng(0)
    image, label = synthetic.render_sample(rng, size, [0, 5], synthetic.val_class_names())
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert set(np.unique(label).tolist()) <= {0, 5, 255} and 0 in label


def test_a_generation_that_did_not_finish_is_refused(tmp_path, restore_registration):
    """The record is removed first and written last: without it the splits may come from two
    runs (a regeneration with other parameters stopped half-way), so loading refuses."""
    from cat_seg.data.datasets import DatasetNotFoundError

    out = synthetic.generate_synthetic(tmp_path, seed=0, verbose=False, **SMALL)
    register_all(tmp_path)
    assert len(DatasetCatalog.get("synthetic_val_sem_seg")) == 16
    (out / "synthetic_info.json").unlink()
    for name in ("synthetic_train_sem_seg", "synthetic_val_sem_seg"):
        with pytest.raises(DatasetNotFoundError) as info:
            DatasetCatalog.get(name)
        assert str(info.value) == (
            f"dataset '{name}': the toy benchmark's record {out / 'synthetic_info.json'} is not found: its generation "
            f"did not finish (registered with the dataset root {tmp_path}); register it with the folder holding the "
            "datasets as its root or run: python datasets/prepare_synthetic.py")
    # never generated under that root: a folder not found, not a generation that did not finish
    register_all(tmp_path / "empty")
    with pytest.raises(DatasetNotFoundError, match=rf"^dataset 'synthetic_val_sem_seg': folder "
                                                   rf"{tmp_path / 'empty' / 'synthetic'} not found \("):
        DatasetCatalog.get("synthetic_val_sem_seg")


def test_a_root_that_is_a_file_is_named_from_python_too(tmp_path):
    """The command line checked the root; generate_synthetic itself raised the OS's error."""
    root = tmp_path / "afile"
    root.write_text("")
    with pytest.raises(ValueError, match=rf"^dataset root {root} is a file; expected a folder"):
        synthetic.generate_synthetic(root, verbose=False, **SMALL)
