"""ADE20K-150 and ADE20K-847 preparation, checked pixel by pixel."""
import cv2
import numpy as np
import pytest

from cat_seg.data.datasets import PrepareError
from cat_seg.data.prepare import ade20k, cli

OPTS = ["--workers", "1", "--no-progress"]


def run(root, *args):
    return ade20k.main(["--root", str(root), *OPTS, *args])


def test_ade150_shift_with_wraparound(tmp_path, raw):
    raw.make_ade150(tmp_path, {
        "ADE_val_00000001": np.array([[0, 1, 2, 150], [75, 149, 0, 3]]),
        "ADE_val_00000002": np.array([[150, 150], [0, 0]]),
    })
    assert run(tmp_path, "--benchmark", "150") == 0
    out = tmp_path / "ADEChallengeData2016/annotations_detectron2/validation"
    np.testing.assert_array_equal(raw.read(out / "ADE_val_00000001.png"),
                                  [[255, 0, 1, 149], [74, 148, 255, 2]])
    np.testing.assert_array_equal(raw.read(out / "ADE_val_00000002.png"), [[149, 149], [255, 255]])
    assert raw.read(out / "ADE_val_00000001.png").dtype == np.uint8


def test_ade150_rejects_out_of_range_and_corrupt_labels(tmp_path, raw):
    raw.make_ade150(tmp_path, {"ADE_val_00000001": np.array([[0, 151], [200, 3]])})
    with pytest.raises(PrepareError, match=r"ADE_val_00000001.png: label values outside the "
                                           r"expected range \(0..150\): 151, 200"):
        run(tmp_path, "--benchmark", "150")
    bad = tmp_path / "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(PrepareError, match="cannot read label file .*ADE_val_00000001.png"):
        run(tmp_path, "--benchmark", "150")
    raw.write_png(bad, np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(PrepareError, match="single-channel"):
        run(tmp_path, "--benchmark", "150")
    out = tmp_path / "ADEChallengeData2016/annotations_detectron2/validation"
    assert list(out.iterdir()) == []  # nothing written for a bad input


def test_ade150_labels_need_their_images_of_their_size(tmp_path, raw):
    """A label without its image, or of another size than its image, was converted without a
    word; the dataset left the pair out (or the evaluation failed on it) much later."""
    raw.make_ade150(tmp_path, {"ADE_val_00000001": np.array([[1, 2]]), "ADE_val_00000002": np.array([[3, 4]])})
    base = tmp_path / "ADEChallengeData2016"
    (base / "images/validation/ADE_val_00000002.jpg").unlink()
    with pytest.raises(PrepareError, match=r"^1 of the 2 label files have no image, e.g. .*annotations/validation/"
                                           r"ADE_val_00000002.png has no .*images/validation/ADE_val_00000002.jpg: "
                                           r"download .*ADEChallengeData2016.zip"):
        run(tmp_path, "--benchmark", "150")
    raw.write_jpg(base / "images/validation/ADE_val_00000002.jpg", 3, 2)
    with pytest.raises(PrepareError, match=r"^label map .*ADE_val_00000002.png: size 1x2 \(HxW\), its image "
                                           r".*ADE_val_00000002.jpg 3x2$"):
        run(tmp_path, "--benchmark", "150")
    raw.write_jpg(base / "images/validation/ADE_val_00000002.jpg", 1, 2)
    # what macOS leaves beside each file of an archive unpacked there: not a label
    (base / "annotations/validation/._ADE_val_00000001.png").write_bytes(b"AppleDouble")
    assert run(tmp_path, "--benchmark", "150") == 0
    out = base / "annotations_detectron2/validation"
    assert sorted(p.name for p in out.iterdir()) == ["ADE_val_00000001.png", "ADE_val_00000002.png"]


def test_ade150_missing_raw_folder_names_file_and_download(tmp_path):
    with pytest.raises(PrepareError) as info:
        run(tmp_path, "--benchmark", "150")
    message = str(info.value)
    assert str(tmp_path / "ADEChallengeData2016/annotations/validation") in message
    assert "ADEChallengeData2016.zip" in message and "--download" in message


@pytest.mark.parametrize("hw,expected", [
    ((600, 1000), (512, 853)), ((1000, 600), (853, 512)), ((512, 700), None),
    ((513, 513), (512, 512)), ((600, 1001), (512, 854)), ((40, 60), None),
])
def test_short_side_resize_shape(hw, expected):
    assert ade20k.short_side_resize_shape(*hw) == expected


def test_ade847_decoding_mapping_resize_and_tiff(tmp_path, raw):
    # object ids -> trainIds of the MaskFormer table: 2978 wall 0, 312 building 1, 2420 sky 2,
    # 1089 gear shift 844, 3148 adding machine 846; 0, 5 and 6000 are not in the table.
    small = np.array([[2978, 312, 5, 0],
                      [2420, 2978, 3148, 1089],
                      [6000, 312, 312, 2420]])
    expected_small = np.array([[0, 1, 65535, 65535],
                               [2, 0, 846, 844],
                               [65535, 1, 1, 2]])
    big = np.zeros((600, 1000), np.int64)
    big[:, :400], big[:, 400:700], big[:, 700:] = 2978, 2420, 7
    big[100:250, 50:300] = 3148
    expected_big_full = np.where(big == 2978, 0, np.where(big == 2420, 2, np.where(big == 3148, 846, 65535)))
    edge = np.full((512, 700), 312)
    raw.make_ade_full(tmp_path, [
        ("ADE_val_00000001.jpg", "bathroom", small),
        ("ADE_train_00000001.jpg", "street", small),  # training: skipped
        ("ADE_val_00000002.jpg", "abbey", big),
        ("ADE_val_00000003.jpg", "beach", edge),
    ])
    assert run(tmp_path, "--benchmark", "847") == 0
    base = tmp_path / "ADE20K_2021_17_01"
    labels = base / "annotations_detectron2/validation"
    images = base / "images_detectron2/validation"
    assert sorted(p.name for p in labels.iterdir()) == [
        "ADE_val_00000001.tif", "ADE_val_00000002.tif", "ADE_val_00000003.tif"]
    assert sorted(p.name for p in images.iterdir()) == [
        "ADE_val_00000001.jpg", "ADE_val_00000002.jpg", "ADE_val_00000003.jpg"]
    out = raw.read(labels / "ADE_val_00000001.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, expected_small)
    resized = raw.read(labels / "ADE_val_00000002.tif")
    assert resized.shape == (512, 853)
    np.testing.assert_array_equal(
        resized, cv2.resize(expected_big_full.astype(np.uint16), (853, 512),
                            interpolation=cv2.INTER_NEAREST))
    assert raw.read(images / "ADE_val_00000002.jpg").shape == (512, 853, 3)
    assert raw.read(images / "ADE_val_00000003.jpg").shape == (512, 700, 3)  # short side 512
    np.testing.assert_array_equal(raw.read(labels / "ADE_val_00000003.tif"), np.ones((512, 700)))


def test_ade847_errors(tmp_path, raw):
    with pytest.raises(PrepareError, match="index_ade20k.pkl.*registration"):
        run(tmp_path, "--benchmark", "847")
    raw.make_ade_full(tmp_path, [("ADE_val_00000001.jpg", "abbey", np.zeros((4, 4), np.int64))])
    seg = next((tmp_path / "ADE20K_2021_17_01/images").rglob("*_seg.png"))
    raw.write_png(seg, np.zeros((4, 4), np.uint8))  # grey instead of RGB
    with pytest.raises(PrepareError, match="_seg.png has shape .* expected an RGB"):
        run(tmp_path, "--benchmark", "847")
    raw.write_png(seg, np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(PrepareError, match=r"_seg.png: size 5x4 \(HxW\), its image .*ADE_val_00000001.jpg 4x4"):
        run(tmp_path, "--benchmark", "847")
    for content in (b"garbage", b"garbage\n", b"<html>not found</html>"):  # each unpickler failure
        (tmp_path / "ADE20K_2021_17_01/index_ade20k.pkl").write_bytes(content)
        with pytest.raises(PrepareError, match="cannot read .*index_ade20k.pkl: .*expected the index_ade20k.pkl"):
            run(tmp_path, "--benchmark", "847")


def test_cli_prints_error_and_exits_2(tmp_path, capsys):
    assert cli.run(ade20k.main, ["--root", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: missing folder") and "Traceback" not in err
    assert err.count("\n") == 1


def test_without_benchmark_a_missing_dataset_says_how_to_prepare_the_other(tmp_path, raw):
    """All benchmarks by default: ADE20K-847's registration-only download missing stops the
    run, and the error says how to prepare ADE20K-150 alone (which then works)."""
    raw.make_ade150(tmp_path, {"ADE_val_00000001": np.array([[0, 1], [2, 3]])})
    with pytest.raises(PrepareError, match=r"index_ade20k.pkl.* \(needed for benchmark 847; to prepare the "
                                           r"one whose raw data is complete: --benchmark 150\)$"):
        run(tmp_path)
    with pytest.raises(PrepareError, match=r"index_ade20k.pkl.*registration") as chosen:
        run(tmp_path, "--benchmark", "847")
    assert "needed for benchmark" not in str(chosen.value)  # chosen on purpose: no hint
    assert run(tmp_path, "--benchmark", "150") == 0

