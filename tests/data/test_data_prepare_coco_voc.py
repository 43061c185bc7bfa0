"""COCO-Stuff 171 and Pascal VOC 20 / 20b preparation, checked pixel by pixel."""
import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from cat_seg.data.catalog import class_names
from cat_seg.data.datasets import PrepareError, register_all
from cat_seg.data.prepare import coco_stuff, voc

OPTS = ["--workers", "1", "--no-progress"]


def test_coco_stuff_remapping(tmp_path, raw):
    # raw value = COCO id - 1: 0 person -> 0; 11 (id 12, unused) -> 255; 12 stop sign -> 11;
    # 89 toothbrush -> 79; 90 (id 91, unused) -> 255; 91 banner -> 80; 172 wall-other -> 161;
    # 117 floor-wood -> 106; 181 wood -> 170; 255 unlabeled -> 255
    label = np.array([[0, 11, 12, 89, 90],
                      [91, 172, 117, 181, 255]])
    raw.make_coco(tmp_path, "val2017", {"000000000139": label})
    raw.make_coco(tmp_path, "train2017", {"000000000009": label[::-1]})
    assert coco_stuff.main(["--root", str(tmp_path), *OPTS]) == 0
    out = tmp_path / "coco-stuff/annotations_detectron2"
    expected = np.array([[0, 255, 11, 79, 255],
                         [80, 161, 106, 170, 255]])
    np.testing.assert_array_equal(raw.read(out / "val2017/000000000139.png"), expected)
    np.testing.assert_array_equal(raw.read(out / "train2017/000000000009.png"), expected[::-1])
    register_all(tmp_path)
    try:
        coco = class_names("coco")
        assert coco[161] == "wall-other" and coco[106] == "floor-wood" and coco[11] == "stop sign"
        records = DatasetCatalog.get("coco_2017_test_stuff_all_sem_seg")
        assert len(records) == 1 and records[0]["sem_seg_file_name"].endswith("000000000139.png")
    finally:
        register_all()


def test_coco_stuff_split_option_and_range_check(tmp_path, raw):
    raw.make_coco(tmp_path, "val2017", {"000000000139": np.array([[0, 182]])})
    with pytest.raises(PrepareError, match=r"000000000139.png: label values outside the expected "
                                           r"range \(0..181 or 255\): 182"):
        coco_stuff.main(["--root", str(tmp_path), *OPTS, "--split", "val2017"])
    with pytest.raises(PrepareError, match="missing folder .*coco-stuff/annotations/train2017.*"
                                           r"stuffthingmaps_trainval2017.zip.* \(needed for split train2017; to "
                                           r"prepare the other without it: --split val2017\)$"):
        coco_stuff.main(["--root", str(tmp_path), *OPTS])
    with pytest.raises(PrepareError, match=r"stuffthingmaps_trainval2017.zip .*, or rerun with --download$"):
        coco_stuff.main(["--root", str(tmp_path), *OPTS, "--split", "train2017"])  # asked for: no hint


def test_voc_20_and_20b(tmp_path, raw):
    raw.make_voc(tmp_path, {
        "2007_000033": np.array([[0, 1, 20, 255], [15, 0, 7, 255]]),
        "2007_000042": np.array([[0, 0], [255, 0]]),  # background only
    }, extra_images=["2008_000001"])
    assert voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "voc"]) == 0
    base = tmp_path / "VOCdevkit/VOC2012"
    np.testing.assert_array_equal(raw.read(base / "annotations_detectron2/val/2007_000033.png"),
                                  [[255, 0, 19, 255], [14, 255, 6, 255]])
    np.testing.assert_array_equal(raw.read(base / "annotations_detectron2_bg/val/2007_000033.png"),
                                  [[20, 0, 19, 255], [14, 20, 6, 255]])
    # entirely 255 after mapping: not written for VOC-20, written for VOC-20b
    assert not (base / "annotations_detectron2/val/2007_000042.png").exists()
    np.testing.assert_array_equal(raw.read(base / "annotations_detectron2_bg/val/2007_000042.png"),
                                  [[20, 20], [255, 20]])
    assert sorted(p.name for p in (base / "annotations_detectron2/val").iterdir()) == [
        "2007_000033.png"]


def test_voc_alone_without_pascal_context_says_what_can_be_prepared(tmp_path, raw):
    """prepare_voc.py prepares VOC and both Pascal Contexts by default: with VOC's raw data
    only, the error named Context-59's missing file and suggested --benchmark voc --benchmark
    pc459, which failed again on Context-459's. Every benchmark is looked at first: the error
    names the incomplete ones and the one that is ready, and nothing is written."""
    raw.make_voc(tmp_path, {"2007_000033": np.array([[0, 1], [2, 3]])})
    with pytest.raises(PrepareError) as info:
        voc.main(["--root", str(tmp_path), *OPTS])
    message = str(info.value)
    assert message.startswith("missing ") and "trainval_merged.json" in message
    assert message.endswith("(needed for benchmark pc59; the raw data of pc459 is incomplete too; to prepare the "
                            "one whose raw data is complete: --benchmark voc)")
    assert not (tmp_path / "VOCdevkit/VOC2012/annotations_detectron2").exists()
    assert voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "voc"]) == 0


def test_voc_errors(tmp_path, raw):
    with pytest.raises(PrepareError, match="val.txt.*VOCtrainval_11-May-2012.tar"):
        voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "voc"])
    raw.make_voc(tmp_path, {"2007_000033": np.array([[0, 21]])})
    with pytest.raises(PrepareError, match=r"2007_000033.png: label values outside the expected "
                                           r"range \(0..20 or 255\): 21"):
        voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "voc"])
    (tmp_path / "VOCdevkit/VOC2012/SegmentationClassAug/2007_000033.png").unlink()
    with pytest.raises(PrepareError, match="1 of the 1 ids of .*val.txt have no mask in .*"
                                           "SegmentationClassAug, e.g. 2007_000033.png"):
        voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "voc"])
