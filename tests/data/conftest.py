"""Builders of tiny raw datasets in each public format, exposed as fixtures.

Every builder writes under a dataset root (a ``tmp_path``) exactly the files and folders that
the public downloads provide, with label arrays chosen by the test, so that the prepared
labels can be checked pixel by pixel against hand-computed expectations.
"""
import json
import pickle
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import scipy.io
from PIL import Image
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parents[2]


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_jpg(path: Path, h: int, w: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def read(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def make_ade150(root: Path, labels: Dict[str, np.ndarray]) -> None:
    """ADEChallengeData2016: annotations/validation/<name>.png (uint8) + images/validation."""
    base = root / "ADEChallengeData2016"
    for i, (name, label) in enumerate(labels.items()):
        write_png(base / "annotations/validation" / f"{name}.png", label.astype(np.uint8))
        write_jpg(base / "images/validation" / f"{name}.jpg", *label.shape, seed=i)


def encode_ade_full(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """RGB ``_seg.png`` content whose decoded object id floor(R/10)*256+G equals ``ids``.

    R = 10 * (id // 256) + a random digit 0..9 (dropped by the floor), B random (the real
    files store instance ids there)."""
    rng = np.random.default_rng(seed)
    r = (ids // 256) * 10 + rng.integers(0, 10, ids.shape)
    g = ids % 256
    b = rng.integers(0, 256, ids.shape)
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def make_ade_full(root: Path, entries) -> None:
    """ADE20K_2021_17_01 with ``index_ade20k.pkl``.

    ``entries``: list of ``(filename, scene, ids)`` where ``ids`` is the object-id map. The
    pickle mirrors the real index: a dict of parallel per-image lists (``filename``,
    ``folder``, ``scene``, ...) plus per-class ``objectnames`` and an ``objectPresence``
    matrix; only ``filename`` and ``folder`` are used by the preparation."""
    base = root / "ADE20K_2021_17_01"
    filenames, folders, scenes = [], [], []
    for i, (filename, scene, ids) in enumerate(entries):
        split = "validation" if filename.split("_")[1] == "val" else "training"
        folder = f"ADE20K_2021_17_01/images/ADE/{split}/{scene}"
        h, w = ids.shape
        write_jpg(root / folder / filename, h, w, seed=i)
        write_png(root / folder / filename.replace(".jpg", "_seg.png"), encode_ade_full(ids, i))
        filenames.append(filename)
        folders.append(folder)
        scenes.append(scene)
    index = {
        "filename": filenames,
        "folder": folders,
        "scene": scenes,
        "objectnames": ["-"] * 3688,
        "objectPresence": np.zeros((3688, len(filenames)), dtype=np.uint8),
        "wordnet_found": [0] * 3688,
    }
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)


def make_coco(root: Path, split: str, labels: Dict[str, np.ndarray]) -> None:
    """coco-stuff/annotations/<split>/<name>.png (COCO id - 1) + coco-stuff/images/<split>."""
    for i, (name, label) in enumerate(labels.items()):
        write_png(root / "coco-stuff/annotations" / split / f"{name}.png", label.astype(np.uint8))
        write_jpg(root / "coco-stuff/images" / split / f"{name}.jpg", *label.shape, seed=i)


def make_voc(root: Path, labels: Dict[str, np.ndarray], extra_images=()) -> None:
    """VOC2012: SegmentationClassAug/<id>.png, ImageSets/Segmentation/val.txt, JPEGImages
    (plus ``extra_images`` that have no val label, as in the real JPEGImages folder)."""
    base = root / "VOCdevkit/VOC2012"
    for i, (name, label) in enumerate(labels.items()):
        write_png(base / "SegmentationClassAug" / f"{name}.png", label.astype(np.uint8))
        write_jpg(base / "JPEGImages" / f"{name}.jpg", *label.shape, seed=i)
    for name in extra_images:
        write_jpg(base / "JPEGImages" / f"{name}.jpg", 8, 8)
    val = base / "ImageSets/Segmentation/val.txt"
    val.parent.mkdir(parents=True, exist_ok=True)
    val.write_text("".join(f"{name}\n" for name in labels))


def rle(mask: np.ndarray, compressed: bool = True) -> dict:
    """RLE of a binary mask as stored in JSON: compressed string or uncompressed list."""
    mask = np.asfortranarray(mask.astype(np.uint8))
    if compressed:
        encoded = mask_utils.encode(mask)
        return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode()}
    flat = mask.reshape(-1, order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def make_context59(root: Path, images, annotations) -> None:
    """VOC2010 JPEGImages + trainval_merged.json (Detail API layout).

    ``images``: list of ``(file_name, image_id, phase, (h, w))``; ``annotations``: list of
    ``(image_id, category_id, segmentation)``."""
    base = root / "VOCdevkit/VOC2010"
    for i, (file_name, _, _, (h, w)) in enumerate(images):
        write_jpg(base / "JPEGImages" / file_name, h, w, seed=i)
    data = {
        "info": {"description": "test"},
        "images": [{"file_name": f, "image_id": i, "phase": p, "height": h, "width": w}
                   for f, i, p, (h, w) in images],
        "annos_segmentation": [{"id": k, "image_id": i, "category_id": c, "segmentation": s}
                               for k, (i, c, s) in enumerate(annotations)],
        "categories": [{"category_id": 2, "name": "aeroplane"}],
    }
    (base / "trainval_merged.json").write_text(json.dumps(data))


def make_context459(root: Path, label_maps: Dict[str, np.ndarray], val_ids=None) -> None:
    """VOC2010 trainval/<id>.mat (``LabelMap``), JPEGImages and pascalcontext_val.txt."""
    base = root / "VOCdevkit/VOC2010"
    (base / "trainval").mkdir(parents=True, exist_ok=True)
    for i, (name, label) in enumerate(label_maps.items()):
        scipy.io.savemat(base / "trainval" / f"{name}.mat", {"LabelMap": label.astype(np.uint16)})
        write_jpg(base / "JPEGImages" / f"{name}.jpg", *label.shape, seed=i)
    ids = list(label_maps) if val_ids is None else val_ids
    (base / "pascalcontext_val.txt").write_text("".join(f"{i}\n" for i in ids))


@pytest.fixture
def raw():
    """The builders, as a namespace: ``raw.make_ade150(root, {...})`` etc."""

    class Builders:
        pass

    builders = Builders()
    for fn in (write_png, write_jpg, read, make_ade150, make_ade_full, encode_ade_full,
               make_coco, make_voc, rle, make_context59, make_context459):
        setattr(builders, fn.__name__, staticmethod(fn))
    builders.REPO = REPO
    return builders


@pytest.fixture
def restore_registration():
    """Re-register every dataset under the default root after a test that changed it."""
    yield
    from cat_seg.data.datasets import register_all

    register_all()


@pytest.fixture(scope="session")
def prepare_script_runs(request, tmp_path_factory, run_scripts_in_one_process):
    """The runs of real ``datasets/prepare_*.py`` scripts that the collected test modules
    declare in a module-level ``PREPARE_SCRIPT_RUNS`` (``{run id: {"script", "args", "cwd",
    "files"}}``), all made in one Python process (each as ``python SCRIPT ARGS`` in ``cwd``
    would make it, see tests/script_driver.py), instead of one process each that imports torch,
    detectron2 and cat_seg. ``"{root}"`` in an argument stands for the run's own empty folder,
    in which ``files`` (``{relative path: text}``) are written first.

    ``{run id: record}``, a record having ``returncode``, ``stdout``, ``stderr`` (as
    ``subprocess.run(..., capture_output=True, text=True)`` gives them) and ``root``."""
    declared = {}
    for module in {getattr(item, "module", None) for item in request.session.items} - {None}:
        runs = getattr(module, "PREPARE_SCRIPT_RUNS", {})
        assert not set(runs) & set(declared), f"run ids declared twice: {set(runs) & set(declared)}"
        declared.update(runs)
    roots, runs = {}, []
    for key, run in sorted(declared.items()):
        root = roots[key] = tmp_path_factory.mktemp("prepare-script-run")
        for relpath, text in run.get("files", {}).items():
            (root / relpath).parent.mkdir(parents=True, exist_ok=True)
            (root / relpath).write_text(text)
        runs.append({"id": key, "script": str(run["script"]), "cwd": run.get("cwd") and str(run["cwd"]),
                     "argv": [arg.replace("{root}", str(root)) for arg in run["args"]]})
    records = run_scripts_in_one_process(runs, preload="import cat_seg.data.prepare.cli")
    for key, record in records.items():
        record.root = roots[key]
    return records
