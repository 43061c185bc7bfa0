"""Registration: names, class counts, metadata, lazy disk access, clear loading errors."""
import importlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import cat_seg.data.datasets as datasets_pkg
from cat_seg.data.catalog import class_names
from cat_seg.data.datasets import DatasetNotFoundError, register_all

# name -> (number of classes, ignore label, evaluator type, class json, label extension)
EXPECTED = {
    "coco_2017_train_stuff_all_sem_seg": (171, 255, "sem_seg", "coco", "png"),
    "coco_2017_test_stuff_all_sem_seg": (171, 255, "sem_seg", "coco", "png"),
    "ade20k_150_test_sem_seg": (150, 255, "sem_seg", "ade150", "png"),
    "ade20k_full_sem_seg_freq_val_all": (847, 65535, "sem_seg", "ade847", "tif"),
    "voc_2012_test_sem_seg": (20, 255, "sem_seg", "voc20", "png"),
    "voc_2012_test_background_sem_seg": (21, 255, "sem_seg_background", "voc20b", "png"),
    "context_59_test_sem_seg": (59, 255, "sem_seg", "pc59", "png"),
    "context_459_test_sem_seg": (459, 459, "sem_seg", "pc459", "tif"),
    "synthetic_train_sem_seg": (12, 255, "sem_seg", "synthetic_train", "png"),
    "synthetic_val_sem_seg": (16, 255, "sem_seg", "synthetic_val", "png"),
}


def test_all_names_and_metadata(tmp_path, restore_registration):
    names = register_all(tmp_path)
    assert names == list(EXPECTED)
    for name, (k, ignore, evaluator, key, ext) in EXPECTED.items():
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_classes) == k, name
        assert meta.ignore_label == ignore and meta.evaluator_type == evaluator
        assert meta.class_json == f"datasets/{key}.json"
        assert meta.image_root.startswith(str(tmp_path)) and meta.sem_seg_root.startswith(
            str(tmp_path))
        if key != "voc20b":
            assert meta.stuff_classes == class_names(key)
    bg = MetadataCatalog.get("voc_2012_test_background_sem_seg")
    assert bg.stuff_classes == class_names("voc20") + ["background"]
    assert len(class_names(bg.class_json)) == 59
    coco = MetadataCatalog.get("coco_2017_test_stuff_all_sem_seg")
    mapping = coco.stuff_dataset_id_to_contiguous_id
    assert len(mapping) == 171 and sorted(mapping.values()) == list(range(171))
    assert min(mapping) == 1 and max(mapping) == 182
    ade847 = MetadataCatalog.get("ade20k_full_sem_seg_freq_val_all")
    assert ade847.sem_seg_root == str(tmp_path / "ADE20K_2021_17_01/annotations_detectron2/validation")
    assert ade847.image_root == str(tmp_path / "ADE20K_2021_17_01/images_detectron2/validation")
    val = MetadataCatalog.get("synthetic_val_sem_seg")
    assert sorted(val.seen_classes + val.unseen_classes) == list(range(16))
    assert len(val.unseen_classes) == 4


def test_registering_never_touches_the_disk(tmp_path, monkeypatch, restore_registration):
    def forbidden(*args, **kwargs):
        raise AssertionError("registration touched the disk")

    for fn in ("stat", "listdir", "scandir", "lstat"):
        monkeypatch.setattr(os, fn, forbidden)
    register_all(tmp_path / "does-not-exist")
    monkeypatch.undo()
    assert not (tmp_path / "does-not-exist").exists()


def test_root_from_environment_and_reregistration(tmp_path, monkeypatch, restore_registration):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "a"))
    register_all()
    assert MetadataCatalog.get("ade20k_150_test_sem_seg").image_root.startswith(str(tmp_path / "a"))
    register_all()  # same root again: harmless
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "b"))
    importlib.reload(datasets_pkg)  # importing the registration module again: harmless
    assert MetadataCatalog.get("ade20k_150_test_sem_seg").image_root.startswith(str(tmp_path / "b"))


def test_missing_folder_error_is_one_clear_line(tmp_path, monkeypatch, restore_registration):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    register_all()
    with pytest.raises(DatasetNotFoundError) as info:
        DatasetCatalog.get("ade20k_150_test_sem_seg")
    message = str(info.value)
    assert "\n" not in message
    assert "ade20k_150_test_sem_seg" in message
    assert str(tmp_path / "ADEChallengeData2016") in message
    assert "DETECTRON2_DATASETS" in message
    assert "python datasets/prepare_ade20k.py --benchmark 150" in message
    with pytest.raises(DatasetNotFoundError, match="prepare_voc.py --benchmark pc459"):
        DatasetCatalog.get("context_459_test_sem_seg")
    # registered with a root of its own: the message names that root, not the variable
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "elsewhere"))
    register_all(tmp_path / "mine")
    with pytest.raises(DatasetNotFoundError) as info:
        DatasetCatalog.get("ade20k_150_test_sem_seg")
    assert str(info.value) == (
        f"dataset 'ade20k_150_test_sem_seg': folder {tmp_path / 'mine' / 'ADEChallengeData2016'}/images/validation "
        f"not found (registered with the dataset root {tmp_path / 'mine'}); register it with the folder holding the "
        "datasets as its root or run: python datasets/prepare_ade20k.py --benchmark 150")


def test_empty_label_folder(tmp_path, restore_registration):
    register_all(tmp_path)
    (tmp_path / "ADEChallengeData2016/images/validation").mkdir(parents=True)
    (tmp_path / "ADEChallengeData2016/annotations_detectron2/validation").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no .png label files"):
        DatasetCatalog.get("ade20k_150_test_sem_seg")


def test_loader_matches_basenames_and_keeps_intersection(tmp_path, raw, restore_registration):
    # VOC JPEGImages holds every image; only those with a prepared label are used.
    labels = tmp_path / "VOCdevkit/VOC2012/annotations_detectron2/val"
    for name in ("2007_000033", "2007_000042"):
        raw.write_png(labels / f"{name}.png", np.zeros((4, 4), np.uint8))
    for name in ("2007_000033", "2007_000042", "2008_000001", "2009_000002"):
        raw.write_jpg(tmp_path / "VOCdevkit/VOC2012/JPEGImages" / f"{name}.jpg", 4, 4)
    (labels / ".2007_000099.png.123.tmp").write_bytes(b"partial")  # never listed
    register_all(tmp_path)
    records = DatasetCatalog.get("voc_2012_test_sem_seg")
    assert [Path(r["file_name"]).stem for r in records] == ["2007_000033", "2007_000042"]
    for r in records:
        assert set(r) == {"file_name", "sem_seg_file_name"}
        assert Path(r["file_name"]).stem == Path(r["sem_seg_file_name"]).stem
        assert r["sem_seg_file_name"].endswith(".png") and r["file_name"].endswith(".jpg")


def test_own_folder_pairs_are_matched_in_any_case_and_unpaired_files_are_named(tmp_path, caplog):
    """Images and labels left out were counted only when the two counts differed (a missing
    label and an orphan label passed unseen), .JPG was not a jpg, and several image
    extensions could not be given."""
    from cat_seg.data.datasets import register_sem_seg_folder

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for stem, image_name in (("a", "a.jpg"), ("b", "b.JPG"), ("c", "c.png"), ("d", "d.jpg")):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(images / image_name, format="PNG")
        if stem != "d":  # d: no label
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(labels / f"{stem}.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(labels / "orphan.png")
    classes = tmp_path / "classes.json"
    classes.write_text('["sky", "grass"]')
    try:
        register_sem_seg_folder("own", images, labels, str(classes), image_ext=[".jpg", "png"], label_ext=".PNG")
        with caplog.at_level("WARNING"):
            records = DatasetCatalog.get("own")
        assert [Path(r["file_name"]).name for r in records] == ["a.jpg", "b.JPG", "c.png"]
        assert (f"dataset 'own': 1 image(s) without a label in {labels} (d.jpg) and 1 label(s) without an image in "
                f"{images} (orphan.png) are left out; 3 pairs are used") in caplog.text
        # nothing pairs: both sides' names are shown
        register_sem_seg_folder("own", images, labels, str(classes), image_ext="tif")
        with pytest.raises(DatasetNotFoundError) as info:
            DatasetCatalog.get("own")
        assert str(info.value) == (
            f"dataset 'own': no image in {images} matches a label in {labels} by name: labels such as a.png, b.png, "
            f"c.png (+1 more), no .tif image (it holds 3 .jpg file(s), 1 .png file(s))")
        # a relative folder that is not there: the working folder is named
        register_sem_seg_folder("own", "no_such_images", labels, str(classes))
        with pytest.raises(DatasetNotFoundError, match=r"^dataset 'own': folder no_such_images not found \(relative to "
                                                       f"the working folder {re.escape(os.getcwd())}\\)$"):
            DatasetCatalog.get("own")
        # labels in subfolders: said
        nested = tmp_path / "nested"
        (nested / "train").mkdir(parents=True)
        register_sem_seg_folder("own", images, nested, str(classes))
        with pytest.raises(DatasetNotFoundError, match=r"no \.png label files in .*nested \(subfolders are not "
                                                       r"searched: train\)$"):
            DatasetCatalog.get("own")
    finally:
        DatasetCatalog.remove("own")
        MetadataCatalog.remove("own")


def test_compound_extensions_and_a_name_taken_twice(tmp_path, caplog):
    """A label extension with a dot (`mask.png`, as detectron2's loader accepts) is cut off
    whole; two files of one name with two extensions: the first is used, the other named."""
    from cat_seg.data.datasets.loader import load_sem_seg_files

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name in ("a.jpg", "a.png", "b.jpg"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(images / name, format="PNG")
    for name in ("a.mask.png", "b.mask.png"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(labels / name)
    with caplog.at_level("WARNING"):
        records = load_sem_seg_files("own", str(labels), str(images), gt_ext="mask.png", image_ext=["jpg", "png"])
    assert [(Path(r["file_name"]).name, Path(r["sem_seg_file_name"]).name) for r in records] == [
        ("a.jpg", "a.mask.png"), ("b.jpg", "b.mask.png")]
    assert f"{images}: 1 file(s) with the name of another one and another extension are left out (a.png)" in caplog.text


def test_a_benchmark_with_another_number_of_pairs_than_its_complete_split_is_a_warning(
        tmp_path, raw, caplog, restore_registration):
    """An interrupted preparation (or deleted files) leaves part of a benchmark: its scores
    would not compare with published ones, so loading it says so."""
    images = tmp_path / "ADEChallengeData2016/images/validation"
    labels = tmp_path / "ADEChallengeData2016/annotations_detectron2/validation"
    for name in ("ADE_val_00000001", "ADE_val_00000002"):
        raw.write_jpg(images / f"{name}.jpg", 4, 4)
    raw.write_png(labels / "ADE_val_00000001.png", np.zeros((4, 4), np.uint8))
    register_all(tmp_path)
    with caplog.at_level("WARNING"):
        assert len(DatasetCatalog.get("ade20k_150_test_sem_seg")) == 1
    assert (f"dataset 'ade20k_150_test_sem_seg': 1 image/label pairs in {labels}, the complete split has 2000: its "
            "scores do not compare with published ones; if its preparation was interrupted, rerun: python "
            "datasets/prepare_ade20k.py --benchmark 150") in caplog.text


def test_label_extensions_match_the_longest_whatever_their_order(tmp_path):
    """``gt_ext=["png", "mask.png"]`` found ``x.mask.png`` as the label of an image ``x.mask``
    (none), so the pairs depended on the order the extensions were listed in."""
    from cat_seg.data.datasets.loader import load_sem_seg_files

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(images / "x.jpg")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(labels / "x.mask.png")
    for order in (["png", "mask.png"], ["mask.png", "png"]):
        records = load_sem_seg_files("own", str(labels), str(images), gt_ext=order, prepare_command=None)
        assert [Path(r["sem_seg_file_name"]).name for r in records] == ["x.mask.png"], order


def test_a_numpy_integer_ignore_label_is_an_integer(tmp_path, restore_registration):
    from cat_seg.data.datasets import register_sem_seg_folder

    classes = tmp_path / "classes.json"
    classes.write_text('["a", "b", "c"]')
    register_sem_seg_folder("own_np", tmp_path, tmp_path, str(classes), ignore_label=np.int64(255))
    meta = MetadataCatalog.get("own_np")
    assert meta.ignore_label == 255 and type(meta.ignore_label) is int
    DatasetCatalog.remove("own_np")
    MetadataCatalog.remove("own_np")


def test_a_benchmarks_labels_without_an_image_are_warned_alone(tmp_path, caplog):
    """A benchmark's image folder may hold every image of the dataset (VOC's JPEGImages): its
    images without a label are INFO; a label without its image is a WARNING of its own, not
    one that starts with the thousands of expected images."""
    import logging

    from cat_seg.data.datasets.loader import load_sem_seg_files

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for stem in ("a", "b", "c"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(images / f"{stem}.jpg")
    for stem in ("a", "z"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(labels / f"{stem}.png")
    with caplog.at_level("INFO", logger="cat_seg.data.datasets.loader"):
        records = load_sem_seg_files("bench", str(labels), str(images), prepare_command="python prepare.py")
    assert [Path(r["file_name"]).name for r in records] == ["a.jpg"]
    by_level = {level: [r.getMessage() for r in caplog.records if r.levelno == level and "left out" in r.getMessage()]
                for level in (logging.INFO, logging.WARNING)}
    assert by_level[logging.WARNING] == [
        f"dataset 'bench': 1 label(s) without an image in {images} (z.png) are left out; 1 pairs are used"]
    assert by_level[logging.INFO] == [
        f"dataset 'bench': 2 image(s) without a label in {labels} (b.jpg, c.jpg) are left out; 1 pairs are used"]


def test_your_folders_under_a_benchmarks_name_replace_it_with_a_warning(tmp_path, caplog, restore_registration):
    """Registering a name again replaces it (documented); for a built-in benchmark's name that
    was silent, and the benchmark's evaluation then scored the user's folders."""
    from cat_seg.data.datasets import register_sem_seg_folder

    classes = tmp_path / "classes.json"
    classes.write_text('["a", "b", "c"]')
    with caplog.at_level("WARNING", logger="cat_seg.data.datasets.builtin"):
        register_sem_seg_folder("my_own_split", tmp_path, tmp_path, str(classes))
        assert not caplog.records
        register_sem_seg_folder("ade20k_150_test_sem_seg", tmp_path, tmp_path, str(classes))
    assert [r.getMessage() for r in caplog.records] == [
        "register_sem_seg_folder: 'ade20k_150_test_sem_seg' is a built-in benchmark's name; your folders replace "
        "that benchmark in this process (another name keeps both)"]
    assert MetadataCatalog.get("ade20k_150_test_sem_seg").stuff_classes == ["a", "b", "c"]
    for catalog in (DatasetCatalog, MetadataCatalog):
        catalog.remove("my_own_split")
