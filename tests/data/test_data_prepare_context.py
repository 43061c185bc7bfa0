"""Pascal Context 59 (Detail json with RLE masks) and 459 (.mat LabelMap) preparation."""
import json

import numpy as np
import pytest

from cat_seg.data.datasets import PrepareError
from cat_seg.data.prepare import voc

OPTS = ["--workers", "1", "--no-progress"]


def box(h, w, top, left, bottom, right):
    mask = np.zeros((h, w), np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def test_context59_paints_in_file_order_and_maps_ids(tmp_path, raw):
    h, w = 4, 6
    images = [
        ("2008_000002.jpg", 2008000002, "val", (h, w)),
        ("2008_000003.jpg", 2008000003, "val", (h, w)),
        ("2008_000008.jpg", 2008000008, "train", (h, w)),  # train: skipped
    ]
    annotations = [
        # aeroplane (id 2 -> 0) on the left half, compressed RLE
        (2008000002, 2, raw.rle(box(h, w, 0, 0, 4, 3))),
        # wood (458 -> 58) over rows 1-2 of everything, written later: overwrites
        (2008000002, 458, raw.rle(box(h, w, 1, 0, 3, 6), compressed=False)),
        # accordion (id 1, not among the 59) in the bottom-right corner
        (2008000002, 1, raw.rle(box(h, w, 3, 5, 4, 6))),
        (2008000008, 2, raw.rle(box(h, w, 0, 0, 4, 6))),
    ]
    raw.make_context59(tmp_path, images, annotations)
    assert voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc59"]) == 0
    out = tmp_path / "VOCdevkit/VOC2010/annotations_detectron2/pc59_val"
    assert sorted(p.name for p in out.iterdir()) == ["2008_000002.png", "2008_000003.png"]
    np.testing.assert_array_equal(raw.read(out / "2008_000002.png"), [
        [0, 0, 0, 255, 255, 255],
        [58, 58, 58, 58, 58, 58],
        [58, 58, 58, 58, 58, 58],
        [0, 0, 0, 255, 255, 255],
    ])
    # no annotation at all: background everywhere -> ignore
    np.testing.assert_array_equal(raw.read(out / "2008_000003.png"), np.full((h, w), 255))


def test_context59_every_listed_id(tmp_path, raw):
    """Each of the 59 ids lands on its index in pc59.json order; id 0 and others on 255."""
    from cat_seg.data.catalog import raw_label_ids

    ids = [0] + raw_label_ids("pc59") + [1, 3, 459]
    w = len(ids)
    annotations = [(1, cat, raw.rle(box(1, w, 0, x, 1, x + 1))) for x, cat in enumerate(ids)]
    raw.make_context59(tmp_path, [("2008_000002.jpg", 1, "val", (1, w))], annotations)
    assert voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc59"]) == 0
    out = raw.read(tmp_path / "VOCdevkit/VOC2010/annotations_detectron2/pc59_val/2008_000002.png")
    np.testing.assert_array_equal(out[0], [255] + list(range(59)) + [255, 255, 255])


def test_context59_errors(tmp_path, raw):
    with pytest.raises(PrepareError, match="trainval_merged.json.*codalabuser"):
        voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc59"])
    raw.make_context59(tmp_path, [("2008_000002.jpg", 1, "val", (2, 2))],
                       [(1, 460, raw.rle(box(2, 2, 0, 0, 1, 1)))])
    with pytest.raises(PrepareError, match="2008_000002.jpg: category_id 460 outside 0..459"):
        voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc59"])
    raw.make_context59(tmp_path, [("2008_000002.jpg", 1, "val", (2, 2))],
                       [(1, 2, raw.rle(box(3, 2, 0, 0, 1, 1)))])
    with pytest.raises(PrepareError, match=r"mask size \[3, 2\] differs from the image size"):
        voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc59"])
    (tmp_path / "VOCdevkit/VOC2010/trainval_merged.json").write_text(json.dumps({"images": []}))
    with pytest.raises(PrepareError, match="lacks 'images' or 'annos_segmentation'"):
        voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc59"])
    # entries without the keys the Detail format has: the entry is named
    json_path = tmp_path / "VOCdevkit/VOC2010/trainval_merged.json"
    raw.make_context59(tmp_path, [("2008_000002.jpg", 1, "val", (2, 2))], [(1, 2, raw.rle(box(2, 2, 0, 0, 1, 1)))])
    good = json.loads(json_path.read_text())
    for entries, index, key, message in (("images", 0, "file_name", r"images\[0\] lacks 'file_name'"),
                                         ("annos_segmentation", 0, "image_id",
                                          r"annos_segmentation\[0\] lacks 'image_id'")):
        damaged = json.loads(json.dumps(good))
        del damaged[entries][index][key]
        json_path.write_text(json.dumps(damaged))
        with pytest.raises(PrepareError, match=f"trainval_merged.json: {message}"):
            voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc59"])
    damaged = json.loads(json.dumps(good))
    damaged["images"][0] = "2008_000002.jpg"
    json_path.write_text(json.dumps(damaged))
    with pytest.raises(PrepareError, match=r"images\[0\] is a str, expected an object"):
        voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc59"])


def test_context459_labelmap_minus_one_as_uint16_tiff(tmp_path, raw):
    raw.make_context459(tmp_path, {
        "2008_000002": np.array([[1, 459, 431], [2, 256, 300]]),
        "2008_000003": np.array([[5]]),
        "2008_000004": np.array([[7]]),  # not in the val list
    }, val_ids=["2008_000002", "2008_000003"])
    assert voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc459"]) == 0
    out = tmp_path / "VOCdevkit/VOC2010/annotations_detectron2/pc459_val"
    assert sorted(p.name for p in out.iterdir()) == ["2008_000002.tif", "2008_000003.tif"]
    label = raw.read(out / "2008_000002.tif")
    assert label.dtype == np.uint16
    np.testing.assert_array_equal(label, [[0, 458, 430], [1, 255, 299]])


def test_context459_errors(tmp_path, raw):
    with pytest.raises(PrepareError, match="pascalcontext_val.txt: .*5104 validation ids"):
        voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc459"])
    raw.make_context459(tmp_path, {"2008_000002": np.array([[0, 3]])})
    with pytest.raises(PrepareError, match=r"2008_000002.mat: LabelMap values outside the "
                                           r"expected range \(1..459\): 0"):
        voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc459"])
    raw.make_context459(tmp_path, {"2008_000002": np.array([[1]])},
                        val_ids=["2008_000002", "2008_000099"])
    with pytest.raises(PrepareError, match="1 of the 2 ids .* e.g. 2008_000099.mat"):
        voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc459"])
    (tmp_path / "VOCdevkit/VOC2010/pascalcontext_val.txt").write_text("<!DOCTYPE html>\n")
    with pytest.raises(PrepareError, match="not a list of VOC image ids.*DOCTYPE"):
        voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc459"])
    (tmp_path / "VOCdevkit/VOC2010/pascalcontext_val.txt").write_text("2008_000099\n")
    (tmp_path / "VOCdevkit/VOC2010/trainval/2008_000099.mat").write_bytes(b"junk")
    # a label without its image: said before converting anything
    with pytest.raises(PrepareError, match=r"^1 of the 1 label files have no image, e.g. .*2008_000099.mat has no "
                                           r".*JPEGImages/2008_000099.jpg: download .*VOCtrainval_03-May-2010.tar"):
        voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc459"])
    raw.write_jpg(tmp_path / "VOCdevkit/VOC2010/JPEGImages/2008_000099.jpg", 2, 2)
    with pytest.raises(PrepareError, match="cannot read .*2008_000099.mat"):
        voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc459"])
    # a label map of another size than its image
    (tmp_path / "VOCdevkit/VOC2010/pascalcontext_val.txt").write_text("2008_000002\n")
    raw.write_jpg(tmp_path / "VOCdevkit/VOC2010/JPEGImages/2008_000002.jpg", 3, 5)
    with pytest.raises(PrepareError, match=r"label map .*2008_000002.mat: size 1x1 \(HxW\), its image "
                                           r".*2008_000002.jpg 3x5"):
        voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc459", "--force"])


def test_context459_val_list_option(tmp_path, raw):
    raw.make_context459(tmp_path, {"2008_000002": np.array([[1]]), "2008_000003": np.array([[2]])})
    (tmp_path / "VOCdevkit/VOC2010/pascalcontext_val.txt").unlink()
    ids = tmp_path / "my_ids.txt"
    ids.write_text("2008_000003\n")
    assert voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc459",
                     "--val-list", str(ids)]) == 0
    out = tmp_path / "VOCdevkit/VOC2010/annotations_detectron2/pc459_val"
    assert [p.name for p in out.iterdir()] == ["2008_000003.tif"]
    with pytest.raises(SystemExit) as exit_status:  # the list of a benchmark not prepared: not ignored silently
        voc.main(["--root", str(tmp_path), *OPTS, "--benchmark", "pc59", "--val-list", str(ids)])
    assert exit_status.value.code == 2
