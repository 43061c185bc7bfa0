"""MaskFormerSemanticDatasetMapper and ColorAugSSDTransform (the official train mapper)."""
import random
import re

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T

from cat_seg.data.dataset_mappers import InferenceDatasetMapper, MaskFormerSemanticDatasetMapper, SemanticTrainMapper
from cat_seg.data.datasets import DatasetFileError
from cat_seg.data.transforms import ColorAugSSDTransform

IGNORE = 255


def make_cfg(min_size, *, crop=None, max_area=1.0, color_aug=False, flip="none", size_div=-1):
    """detectron2 default cfg plus the keys cat_seg/config.py adds for the mapper."""
    cfg = get_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.COLOR_AUG_SSD = color_aug
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = max_area
    cfg.INPUT.SIZE_DIVISIBILITY = size_div
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (min_size,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1333
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.CROP.ENABLED = crop is not None
    if crop is not None:
        cfg.INPUT.CROP.TYPE = "absolute"
        cfg.INPUT.CROP.SIZE = crop
    cfg.INPUT.RANDOM_FLIP = flip
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = IGNORE
    return cfg


def write_sample(tmp_path, image, label, name="sample"):
    image_file = tmp_path / f"{name}.png"
    label_file = tmp_path / f"{name}_label{'.tif' if label.dtype == np.uint16 else '.png'}"
    Image.fromarray(image).save(image_file)
    Image.fromarray(label).save(label_file)
    h, w = label.shape
    return {
        "file_name": str(image_file),
        "sem_seg_file_name": str(label_file),
        "height": h,
        "width": w,
    }


def seed(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def random_sample(tmp_path, h=50, w=70, num_classes=4):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    label = rng.integers(0, num_classes, size=(h, w)).astype(np.uint8)
    label[:5, :5] = IGNORE
    return image, label, write_sample(tmp_path, image, label)


def test_identity_output_types_and_padding(tmp_path):
    image, label, record = random_sample(tmp_path)  # 50x70, resize target = short side
    mapper = MaskFormerSemanticDatasetMapper(make_cfg(50, size_div=64), is_train=True)
    out = mapper(record)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 64, 128)
    assert out["sem_seg"].dtype == torch.int64 and out["sem_seg"].shape == (64, 128)
    assert "sem_seg_file_name" not in out and record["sem_seg_file_name"]  # input not mutated
    np.testing.assert_array_equal(out["image"][:, :50, :70].numpy(), image.transpose(2, 0, 1))
    np.testing.assert_array_equal(out["sem_seg"][:50, :70].numpy(), label)
    assert (out["image"][:, 50:, :] == 128).all() and (out["image"][:, :, 70:] == 128).all()
    assert (out["sem_seg"][50:, :] == IGNORE).all() and (out["sem_seg"][:, 70:] == IGNORE).all()
    assert SemanticTrainMapper is MaskFormerSemanticDatasetMapper


def test_official_layout_crop_then_pad_to_size_divisibility(tmp_path):
    _, label, record = random_sample(tmp_path, h=30, w=70)
    # short side 30 -> 30x70; crop 40x40 gives min(40,30) x 40 = 30x40; pad to 48x48
    mapper = MaskFormerSemanticDatasetMapper(make_cfg(30, crop=(40, 40), size_div=48))
    seed(0)
    out = mapper(record)
    assert out["image"].shape == (3, 48, 48) and out["sem_seg"].shape == (48, 48)
    assert (out["image"][:, 30:, :] == 128).all() and (out["image"][:, :, 40:] == 128).all()
    assert (out["sem_seg"][30:, :] == IGNORE).all() and (out["sem_seg"][:, 40:] == IGNORE).all()
    crop = out["sem_seg"][:30, :40].numpy()
    # the crop is a horizontal window of the original label
    matches = [x0 for x0 in range(31) if np.array_equal(label[:, x0 : x0 + 40], crop)]
    assert matches


def test_resize_shortest_edge_with_max_size(tmp_path):
    image, label, record = random_sample(tmp_path)  # 50x70
    out = MaskFormerSemanticDatasetMapper(make_cfg(25))(record)
    assert out["image"].shape == (3, 25, 35) and out["sem_seg"].shape == (25, 35)
    assert set(np.unique(out["sem_seg"].numpy())) <= set(np.unique(label))  # nearest
    cfg = make_cfg(100)
    cfg.INPUT.MAX_SIZE_TRAIN = 120  # 100x140 exceeds 120 -> long side 120, h int(85.7+.5)
    out = MaskFormerSemanticDatasetMapper(cfg)(record)
    assert out["image"].shape == (3, 86, 120) and out["sem_seg"].shape == (86, 120)


def _crop_ok(crop, max_area):
    labels, counts = np.unique(crop, return_counts=True)
    counts = counts[labels != IGNORE]
    return len(counts) > 1 and counts.max() < counts.sum() * max_area


def test_crop_category_area_constraint(tmp_path):
    # Left half class 0, right half class 1, top 4 rows ignore. For 16x16 crops 60% of the
    # positions satisfy max_area 0.95, so a plain crop often violates it, while 10 retries
    # find a valid window with probability 1 - 0.4**10.
    label = np.zeros((40, 40), dtype=np.uint8)
    label[:, 20:] = 1
    label[:4] = IGNORE
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    record = write_sample(tmp_path, image, label)
    constrained = MaskFormerSemanticDatasetMapper(make_cfg(40, crop=(16, 16), max_area=0.95))
    crop_aug = [
        a for a in constrained.tfm_gens if isinstance(a, T.RandomCrop_CategoryAreaConstraint)
    ]
    assert crop_aug[0].single_category_max_area == 0.95
    assert crop_aug[0].ignored_category == IGNORE
    plain = MaskFormerSemanticDatasetMapper(make_cfg(40, crop=(16, 16), max_area=1.0))
    plain_ok = []
    for s in range(25):
        seed(s)
        out = constrained(record)
        assert out["sem_seg"].shape == (16, 16)
        assert _crop_ok(out["sem_seg"].numpy(), 0.95), f"seed {s}"
        seed(s)
        plain_ok.append(_crop_ok(plain(record)["sem_seg"].numpy(), 0.95))
    assert not all(plain_ok)  # the check above is not vacuous


@pytest.mark.parametrize("direction", ["horizontal", "vertical"])
def test_flip_applies_to_image_and_label_alike(tmp_path, direction):
    h, w = 12, 20
    label = (np.arange(h * w).reshape(h, w) % 23).astype(np.uint8)
    image = np.stack([label * 10, label, np.full_like(label, 7)], axis=-1)  # R encodes label
    record = write_sample(tmp_path, image, label)
    mapper = MaskFormerSemanticDatasetMapper(make_cfg(h, flip=direction))
    flipped_label = label[:, ::-1] if direction == "horizontal" else label[::-1, :]
    seen = set()
    for s in range(12):
        seed(s)
        out = mapper(record)
        sem_seg, img = out["sem_seg"].numpy(), out["image"].numpy()
        np.testing.assert_array_equal(img[0], sem_seg * 10)
        np.testing.assert_array_equal(img[1], sem_seg)
        if np.array_equal(sem_seg, flipped_label):
            seen.add("flipped")
        else:
            np.testing.assert_array_equal(sem_seg, label)
            seen.add("identity")
    assert seen == {"flipped", "identity"}


def test_color_aug_changes_image_only(tmp_path):
    image, label, record = random_sample(tmp_path)
    mapper = MaskFormerSemanticDatasetMapper(make_cfg(50, color_aug=True))
    assert any(isinstance(a, ColorAugSSDTransform) for a in mapper.tfm_gens)
    changed = 0
    for s in range(6):
        seed(s)
        out = mapper(record)
        assert out["image"].dtype == torch.uint8
        np.testing.assert_array_equal(out["sem_seg"].numpy(), label)
        changed += not np.array_equal(out["image"].numpy(), image.transpose(2, 0, 1))
    assert changed >= 3


def test_uint16_tiff_label_values_survive(tmp_path):
    label = np.array([[300, 1000, 2], [458, 459, 65535]], dtype=np.uint16)
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    record = write_sample(tmp_path, image, label)
    out = MaskFormerSemanticDatasetMapper(make_cfg(2))(record)
    np.testing.assert_array_equal(out["sem_seg"].numpy(), label.astype(np.int64))


def test_mapper_errors(tmp_path):
    image, label, record = random_sample(tmp_path)
    cfg = make_cfg(50)
    with pytest.raises(RuntimeError, match="training only"):
        MaskFormerSemanticDatasetMapper(cfg, is_train=False)(record)
    with pytest.raises(ValueError, match="sem_seg_file_name"):
        MaskFormerSemanticDatasetMapper(cfg)({"file_name": record["file_name"]})
    other = write_sample(tmp_path, image[:10], label[:12], name="mismatch")
    other.pop("height"), other.pop("width")
    with pytest.raises(ValueError, match="mismatch_label.png"):
        MaskFormerSemanticDatasetMapper(cfg)(other)
    del cfg.INPUT["COLOR_AUG_SSD"]
    with pytest.raises(KeyError, match="INPUT.COLOR_AUG_SSD"):
        MaskFormerSemanticDatasetMapper(cfg)


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def test_unreadable_training_files_are_named(tmp_path):
    """A truncated image or label is a DatasetFileError naming the file (PIL's message does not)."""
    _, _, record = random_sample(tmp_path)
    cfg = make_cfg(50)
    for key, message in (("sem_seg_file_name", f"label map {re.escape(record['sem_seg_file_name'])}: cannot be "
                                                 r"read \(.*truncated"),
                         ("file_name", f"cannot read image {re.escape(record['file_name'])}: .*truncated")):
        _truncate(record[key])
        with pytest.raises(DatasetFileError, match=message):
            MaskFormerSemanticDatasetMapper(cfg)(dict(record))


def test_inference_mapper_is_detectron2s_without_the_label_and_names_unreadable_files(tmp_path):
    """detectron2's test mapper's outputs but the label (the evaluator reads the ground truth
    from its file); a damaged image is named; a label is not read, so one of another size no
    longer stops the mapper with a bare assertion (the evaluator names it)."""
    image, label, record = random_sample(tmp_path, h=60, w=90)
    cfg = make_cfg(50)
    cfg.INPUT.MIN_SIZE_TEST = 40
    cfg.INPUT.MAX_SIZE_TEST = 1333
    ours = InferenceDatasetMapper(cfg, False)(dict(record))
    theirs = DatasetMapper(cfg, False)(dict(record))
    assert ours.keys() == theirs.keys() - {"sem_seg"} and tuple(ours["image"].shape) == (3, 40, 60)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]) if torch.is_tensor(ours[key]) else ours[key] == theirs[key]
    Image.fromarray(label[:30, :45]).save(record["sem_seg_file_name"])
    assert torch.equal(InferenceDatasetMapper(cfg, False)(dict(record))["image"], ours["image"])
    _truncate(record["file_name"])
    with pytest.raises(DatasetFileError, match=f"cannot read image {re.escape(record['file_name'])}: .*truncated"):
        InferenceDatasetMapper(cfg, False)(dict(record))


def test_16_bit_images_are_scaled_as_the_api_scales_them(tmp_path):
    """detectron2's read_image converted a 16-bit image to RGB by clipping: nearly all white in
    training and evaluation, while the Python API scales by 1/257."""
    from cat_seg.api import load_image

    ramp = (np.arange(60 * 90, dtype=np.uint32) * 65535 // (60 * 90 - 1)).astype(np.uint16).reshape(60, 90)
    _, label, record = random_sample(tmp_path, h=60, w=90)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    record["file_name"] = str(tmp_path / "ramp.png")
    expected = load_image(record["file_name"])
    assert 120 < expected.mean() < 135  # a ramp over the whole range, not white
    cfg = make_cfg(60)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 60, 1333
    trained = MaskFormerSemanticDatasetMapper(cfg)(dict(record))["image"]
    evaluated = InferenceDatasetMapper(cfg, False)(dict(record))["image"]
    np.testing.assert_array_equal(trained.numpy().transpose(1, 2, 0), expected)
    np.testing.assert_array_equal(evaluated.numpy().transpose(1, 2, 0), expected)


def test_labels_follow_their_exif_orientation_in_training_and_evaluation(tmp_path):
    """A label saved with its photo's EXIF orientation tag (tools copy the metadata) is turned
    with it in training and, as well, by the evaluator's ground-truth reader (it was read as
    stored there, so the scores compared rotated maps)."""
    from cat_seg.evaluation import load_sem_seg_gt

    rng = np.random.default_rng(3)
    stored_image = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    stored_label = rng.integers(0, 4, size=(40, 60)).astype(np.uint8)
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    Image.fromarray(stored_image).save(tmp_path / "photo.jpg", exif=exif, quality=100)
    Image.fromarray(stored_label).save(tmp_path / "photo.png", exif=exif)
    record = {"file_name": str(tmp_path / "photo.jpg"), "sem_seg_file_name": str(tmp_path / "photo.png")}
    shown = np.rot90(stored_label, k=-1)  # as the photo is shown: 60 x 40
    np.testing.assert_array_equal(load_sem_seg_gt(record["sem_seg_file_name"]), shown)
    out = MaskFormerSemanticDatasetMapper(make_cfg(40))(dict(record))
    assert tuple(out["image"].shape) == (3, 60, 40)
    np.testing.assert_array_equal(out["sem_seg"].numpy(), shown)
    # evaluation: the prediction's size (the mapper's height / width) is the turned ground truth's
    cfg = make_cfg(40)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 40, 1333
    evaluated = InferenceDatasetMapper(cfg, False)(dict(record))
    assert (evaluated["height"], evaluated["width"]) == shown.shape


def test_labels_below_zero_are_named(tmp_path):
    """A label using -1 (not the ignore value) for unlabeled pixels failed inside the loss."""
    _, label, record = random_sample(tmp_path)
    signed = label.astype(np.int32)
    signed[10:12, 10:12] = -1
    Image.fromarray(signed).save(tmp_path / "signed.tif")
    record["sem_seg_file_name"] = str(tmp_path / "signed.tif")
    cfg = make_cfg(50)
    mapper = MaskFormerSemanticDatasetMapper(cfg)
    with pytest.raises(DatasetFileError, match=re.escape(f"label map {tmp_path / 'signed.tif'}: value(s) -1 "
                                                         "outside the class indices (>= 0) and not the ignore "
                                                         "value 255")):
        mapper(dict(record))


def test_a_label_of_another_size_than_its_image_is_said_as_check_labels_says_it(tmp_path):
    _, label, record = random_sample(tmp_path)
    Image.fromarray(label[:40]).save(tmp_path / "short.png")
    record["sem_seg_file_name"] = str(tmp_path / "short.png")
    with pytest.raises(DatasetFileError) as info:
        MaskFormerSemanticDatasetMapper(make_cfg(50))(dict(record))
    assert str(info.value) == (f"label map {tmp_path / 'short.png'}: size 40x70 (HxW), its image "
                               f"{record['file_name']} 50x70")


def test_a_colour_coded_label_is_told_to_be_converted_and_a_grey_one_saved_as_rgb_is_read(tmp_path):
    """A label saved as RGB with three equal channels (a tool that writes RGB) is its grey
    values; a colour-coded one is an error that says to convert it."""
    _, label, record = random_sample(tmp_path)
    grey = MaskFormerSemanticDatasetMapper(make_cfg(50))(dict(record))["sem_seg"]
    Image.fromarray(np.stack([label] * 3, axis=2)).save(tmp_path / "grey_rgb.png")
    assert torch.equal(MaskFormerSemanticDatasetMapper(make_cfg(50))(
        dict(record, sem_seg_file_name=str(tmp_path / "grey_rgb.png")))["sem_seg"], grey)
    Image.fromarray(np.stack([label, label // 2, label], axis=2)).save(tmp_path / "rgb.png")
    record["sem_seg_file_name"] = str(tmp_path / "rgb.png")
    with pytest.raises(DatasetFileError, match=r"rgb.png: not single-channel \(shape \(50, 70, 3\)\), a class index per "
                                               r"pixel expected \(a colour-coded mask: convert each colour"):
        MaskFormerSemanticDatasetMapper(make_cfg(50))(dict(record))


# ---------------------------------------------------------------- ColorAugSSDTransform
# detectron2's (PointRend's) transform draws from the `random` module of its own file
from detectron2.projects.point_rend import color_augmentation  # noqa: E402


class ScriptedRandom:
    """Stands in for the `random` module: returns scripted values, checks the call order."""

    def __init__(self, script):
        self.script = list(script)

    def _next(self, method):
        expected, value = self.script.pop(0)
        assert method == expected, f"expected random.{expected}, got random.{method}"
        return value

    def randrange(self, n):
        return self._next("randrange")

    def uniform(self, a, b):
        return self._next("uniform")

    def randint(self, a, b):
        return self._next("randint")


def _image():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)


def _trunc(x):
    return np.clip(x, 0, 255).astype(np.uint8)


def _hsv_op(bgr, channel, fn):
    hsv = cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2HSV)
    hsv[:, :, channel] = fn(hsv[:, :, channel])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def test_color_aug_brightness_then_contrast(monkeypatch):
    img = _image()
    script = [
        ("randrange", 1), ("uniform", 40.7),  # brightness on, +40.7
        ("randrange", 1),  # order: contrast, saturation, hue
        ("randrange", 1), ("uniform", 0.5),  # contrast x0.5
        ("randrange", 0), ("randrange", 0),  # no saturation, no hue
    ]
    monkeypatch.setattr(color_augmentation, "random", ScriptedRandom(script))
    out = ColorAugSSDTransform("RGB").apply_image(img)
    expected = _trunc(_trunc(img.astype(np.float32) + 40.7).astype(np.float32) * 0.5)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8 and out.max() <= 255 // 2 + 1


def test_color_aug_saturation_hue_contrast_order_in_bgr(monkeypatch):
    img = _image()  # RGB
    script = [
        ("randrange", 0),  # no brightness
        ("randrange", 0),  # order: saturation, hue, contrast
        ("randrange", 1), ("uniform", 1.3),  # saturation x1.3
        ("randrange", 1), ("randint", -17),  # hue -17 (mod 180)
        ("randrange", 1), ("uniform", 1.4),  # contrast x1.4
    ]
    monkeypatch.setattr(color_augmentation, "random", ScriptedRandom(script))
    out = ColorAugSSDTransform("RGB").apply_image(img)

    def reference(bgr, order):
        ops = {
            "sat": lambda x: _hsv_op(x, 1, lambda s: _trunc(s.astype(np.float32) * 1.3)),
            "hue": lambda x: _hsv_op(x, 0, lambda h: (h.astype(int) - 17) % 180),
            "con": lambda x: _trunc(x.astype(np.float32) * 1.4),
        }
        for name in order:
            bgr = ops[name](bgr)
        return bgr

    expected = reference(img[:, :, ::-1], ["sat", "hue", "con"])[:, :, ::-1]
    np.testing.assert_array_equal(out, expected)
    # the order and the BGR interpretation both matter for this input
    other_order = reference(img[:, :, ::-1], ["con", "sat", "hue"])[:, :, ::-1]
    assert not np.array_equal(out, other_order)
    as_if_bgr = reference(img, ["sat", "hue", "con"])
    assert not np.array_equal(out, as_if_bgr)


def test_color_aug_leaves_segmentation_and_rejects_bad_input(monkeypatch):
    tfm = ColorAugSSDTransform("BGR")
    seg = np.arange(12).reshape(3, 4)
    assert tfm.apply_segmentation(seg) is seg
    # a flipped view (negative strides) and no op drawn: a contiguous copy, not the view
    flipped = _image()[:, ::-1]
    monkeypatch.setattr(color_augmentation, "random", ScriptedRandom([("randrange", 0)] * 5))
    out = tfm.apply_image(flipped)
    np.testing.assert_array_equal(out, flipped)
    assert out.flags["C_CONTIGUOUS"]
    with pytest.raises(ValueError, match="uint8"):
        tfm.apply_image(np.zeros((3, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="RGB or BGR"):
        ColorAugSSDTransform("YUV")


def test_flips_of_resized_images_do_not_warn_about_read_only_arrays(tmp_path):
    """After detectron2's PIL resize the image array is read-only and fvcore's flip wraps it
    with torch.from_numpy: torch warns once per process (a scary "undefined behavior" line in
    every training log). The mapper silences that one warning; checked in a fresh process,
    since the warning is only ever given once."""
    import subprocess
    import sys
    from pathlib import Path

    script = f"""
import sys, warnings
sys.path.insert(0, {str(Path(__file__).parent)!r})
import numpy as np
from pathlib import Path
from test_semantic_mapper import make_cfg, seed, write_sample
from cat_seg.data.dataset_mappers import MaskFormerSemanticDatasetMapper
label = (np.arange(12 * 20).reshape(12, 20) % 23).astype(np.uint8)
record = write_sample(Path({str(tmp_path)!r}), np.stack([label, label, label], axis=-1), label)
for direction in ("horizontal", "vertical"):
    mapper = MaskFormerSemanticDatasetMapper(make_cfg(24, flip=direction))  # resized, then flipped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for s in range(8):
            seed(s)
            mapper(record)
    messages = [str(w.message) for w in caught if "not writable" in str(w.message)]
    assert not messages, messages
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr[-3000:]


@pytest.mark.parametrize("change, message", [
    ({"MIN_SIZE_TRAIN_SAMPLING": "uniform"}, "INPUT.MIN_SIZE_TRAIN_SAMPLING='uniform': expected one of choice, range"),
    ({"MIN_SIZE_TRAIN_SAMPLING": "range"}, "INPUT.MIN_SIZE_TRAIN=(64,): expected two sizes (min, max) with "
                                           "INPUT.MIN_SIZE_TRAIN_SAMPLING='range'"),
    ({"CROP.TYPE": "square"}, "INPUT.CROP.TYPE='square': expected one of absolute, absolute_range, relative, "
                              "relative_range"),
    ({"RANDOM_FLIP": "both"}, "INPUT.RANDOM_FLIP must be horizontal, vertical or none, got 'both'"),
    # values detectron2 turns into empty images, an IndexError or an assertion
    ({"MIN_SIZE_TRAIN": (-1,)}, "INPUT.MIN_SIZE_TRAIN=(-1,): expected sizes of the shorter side in pixels (0: keep "
                                "the image's size)"),
    ({"MAX_SIZE_TRAIN": 0}, "INPUT.MAX_SIZE_TRAIN=0: expected a positive longest side in pixels"),
    ({"CROP.SIZE": [0, 0]}, "INPUT.CROP.SIZE=[0, 0]: expected two positive sizes [height, width] in pixels "
                            "(INPUT.CROP.TYPE 'absolute')"),
    ({"CROP.SIZE": [32]}, "INPUT.CROP.SIZE=[32]: expected two positive sizes [height, width] in pixels "
                          "(INPUT.CROP.TYPE 'absolute')"),
    ({"CROP.TYPE": "relative", "CROP.SIZE": [1.5, 0.5]},
     "INPUT.CROP.SIZE=[1.5, 0.5]: expected two fractions in (0, 1] of the image's height and width "
     "(INPUT.CROP.TYPE 'relative')"),
    ({"CROP.TYPE": "absolute_range", "CROP.SIZE": [64, 32]},
     "INPUT.CROP.SIZE=[64, 32]: expected the smallest and the largest crop side in pixels, [min, max] with "
     "1 <= min <= max (INPUT.CROP.TYPE 'absolute_range')"),
])
def test_augmentation_settings_detectron2_would_assert_on_are_named(change, message):
    """detectron2's augmentations reject these with a bare AssertionError; the mapper names the
    key (and check_config_values calls it before training starts)."""
    from cat_seg.data.dataset_mappers import build_train_augmentations

    cfg = make_cfg(64, crop=(32, 32))
    for key, value in change.items():
        node = cfg.INPUT
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    with pytest.raises(ValueError) as info:
        build_train_augmentations(cfg)
    assert str(info.value) == message


@pytest.mark.parametrize("crop_type, size", [("relative", [0.5, 1.0]), ("relative_range", [0.5, 0.5]),
                                             ("absolute", [24, 40]), ("absolute_range", [16, 48])])
def test_crop_settings_detectron2_accepts_crop_within_the_image(crop_type, size):
    """The crop checks accept what detectron2's RandomCrop reads, and the crop stays inside the
    resized 64 x 96 image."""
    from detectron2.data import transforms as T

    from cat_seg.data.dataset_mappers import build_train_augmentations

    cfg = make_cfg(64, crop=(32, 32))
    cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = crop_type, size
    augmented = T.AugInput(np.zeros((64, 96, 3), np.uint8), sem_seg=np.zeros((64, 96), np.uint8))
    T.AugmentationList(build_train_augmentations(cfg))(augmented)
    height, width = augmented.image.shape[:2]
    assert 1 <= height <= 64 and 1 <= width <= 96
    if crop_type == "absolute":
        assert (height, width) == (24, 40)


def test_label_value_outside_the_training_classes_names_the_file(tmp_path):
    """A label value that is neither one of the TRAIN_CLASS_JSON classes nor the ignore value
    stops with the file's name (the loss failed on it later, without one)."""
    import json

    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(["a", "b", "c"]))
    cfg = make_cfg(8)
    cfg.MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON = str(classes)
    mapper = MaskFormerSemanticDatasetMapper(cfg)
    image = np.zeros((8, 8, 3), np.uint8)
    fine = np.full((8, 8), IGNORE, np.uint8)
    fine[:4] = 2
    assert set(mapper(write_sample(tmp_path, image, fine, "fine"))["sem_seg"].unique().tolist()) == {2, IGNORE}
    bad = fine.copy()
    bad[0, 0] = 7
    record = write_sample(tmp_path, image, bad, "bad")
    with pytest.raises(DatasetFileError) as info:
        mapper(record)
    assert str(info.value) == (f"label map {record['sem_seg_file_name']}: value(s) 7 outside the 3 classes of "
                               f"MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON (0..2) and not the ignore value 255")


def test_a_jpeg_label_with_values_no_class_has_is_told_why(tmp_path):
    _, label, record = random_sample(tmp_path)
    Image.fromarray(np.where(label == IGNORE, 1, label) * 60).save(tmp_path / "label.jpg", quality=50)
    record["sem_seg_file_name"] = str(tmp_path / "label.jpg")
    mapper = MaskFormerSemanticDatasetMapper(make_cfg(50))
    mapper.num_classes = 4
    with pytest.raises(DatasetFileError, match=r"\(a JPEG label: JPEG compression changes values; save label maps "
                                               r"as PNG\)$"):
        mapper(dict(record))


def test_a_label_with_fractional_values_is_refused_everywhere_it_is_read(tmp_path):
    """A floating-point TIFF label holding 1.5 was truncated to class 1 by the training mapper
    and the evaluator and passed --check-labels: each now names the file and the value."""
    from cat_seg.data.datasets.label_check import label_problem
    from cat_seg.evaluation import load_sem_seg_gt

    _, label, record = random_sample(tmp_path)
    values = label.astype(np.float32)
    Image.fromarray(values).save(tmp_path / "whole.tif")  # whole numbers in a float TIFF: read as they are
    whole = dict(record, sem_seg_file_name=str(tmp_path / "whole.tif"))
    assert MaskFormerSemanticDatasetMapper(make_cfg(50))(whole)["sem_seg"].tolist() == (
        MaskFormerSemanticDatasetMapper(make_cfg(50))(dict(record))["sem_seg"].tolist())
    values[3, 4] = 1.5
    Image.fromarray(values).save(tmp_path / "float.tif")
    record["sem_seg_file_name"] = str(tmp_path / "float.tif")
    message = (f"label map {tmp_path / 'float.tif'}: value 1.5 is not a whole number (class indices expected; save "
               "the label map with an integer pixel type)")
    with pytest.raises(DatasetFileError) as info:
        MaskFormerSemanticDatasetMapper(make_cfg(50))(dict(record))
    assert str(info.value) == message
    with pytest.raises(DatasetFileError) as info:
        load_sem_seg_gt(str(tmp_path / "float.tif"))
    assert str(info.value) == message
    assert label_problem(record, 4, IGNORE) == message
