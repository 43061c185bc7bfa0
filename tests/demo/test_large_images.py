"""Large images and large vocabularies through the Python API: labels, confidence and overlays
without the ``[T, H, W]`` probability maps at full resolution."""
import numpy as np
import pytest
import torch
from PIL import Image

from cat_seg import SegmentationResult
from cat_seg.api import OVERLAY_MAX_PIXELS, UNLABELED, _nearest_resize

MANY = [f"class {i}" for i in range(100)]  # more than the tiny PAD_LEN (32): most classes pruned


@pytest.fixture(scope="module")
def large(image_factory):
    return image_factory(7, 240, 360)


def test_many_classes_without_full_maps(segmenter, large, largest_allocation):
    height, width = large.shape[:2]
    with largest_allocation() as mode:
        result = segmenter(large, MANY)
    assert mode.largest < len(MANY) * height * width // 2
    assert result._probs is None  # not computed until asked for
    assert result.label_map.shape == (height, width) and result.confidence.shape == (height, width)
    probs = result.probs  # computed now, from the kept model-resolution maps
    assert probs.shape == (len(MANY), height, width) and result._probs is probs
    assert np.array_equal(result.label_map, probs.argmax(0).numpy())
    assert np.array_equal(result.confidence, probs.max(0).values.numpy())
    assert torch.equal(result.probabilities(torch.float16), probs.half())
    # per-class mean confidence from labels + confidence == from the probability maps
    by_hand = SegmentationResult(image=large, classes=MANY, label_map=result.label_map, probs=probs)
    for (name, got), want in zip(result.mean_probabilities().items(), by_hand.mean_probabilities().values()):
        assert got == pytest.approx(want, abs=1e-6) if want is not None else got is None, name


def test_background_options_use_the_streamed_confidence(segmenter, large):
    plain = segmenter(large, MANY[:40])
    threshold = float(np.median(plain.confidence))
    result = segmenter(large, MANY[:40], background=threshold)
    assert np.array_equal(result.label_map == UNLABELED, plain.confidence < threshold)
    assert np.array_equal(result.confidence, plain.confidence)
    prompts = segmenter(large, MANY[:40], background="prompts")
    assert prompts.probs.shape[0] == 40
    full = segmenter(large, MANY[:40] + prompts.background_classes)
    assert np.array_equal(prompts.label_map, np.where(full.label_map >= 40, UNLABELED, full.label_map))
    assert torch.equal(prompts.probs, full.probs[:40])


def block_result(image_factory, height, width):
    """Three labeled quadrants and one unlabeled."""
    image = image_factory(5, height, width)
    labels = np.full((height, width), UNLABELED, np.int32)
    h, w = height // 2, width // 2
    labels[:h, :w], labels[:h, w:], labels[h:, :w] = 0, 1, 2
    return SegmentationResult(image=image, classes=["cat", "dog", "person, human"], label_map=labels,
                              confidence=np.full((height, width), 0.5, np.float32))


def test_large_overlay_is_drawn_at_display_size(image_factory):
    result = block_result(image_factory, 2000, 3000)
    overlay = result.overlay(legend=True)
    h, w = overlay.shape[:2]
    assert overlay.dtype == np.uint8 and overlay.shape[2] == 3
    assert h * w <= OVERLAY_MAX_PIXELS and h * w > 0.9 * OVERLAY_MAX_PIXELS
    assert abs(w / h - 1.5) < 0.01  # aspect ratio kept
    small = np.asarray(Image.fromarray(result.image).resize((w, h), Image.BILINEAR, reducing_gap=2.0)).astype(int)
    changed = (overlay.astype(int) != small).any(axis=2)
    for y, x in ((0, 0), (0, w // 2), (h // 2, 0)):  # labeled quadrants (the top-right holds the legend)
        assert changed[y + 20:y + h // 2 - 20, x + 20:x + w // 2 - 20].mean() > 0.99
    assert changed[h // 2 + 20:-20, w // 2 + 20:-20].mean() < 0.05  # unlabeled quadrant kept
    assert result.mean_probabilities() == {"cat": 0.5, "dog": 0.5, "person, human": 0.5}


def test_overlay_size_limit_is_the_callers(image_factory):
    result = block_result(image_factory, 300, 400)
    assert result.overlay(legend=False).shape == (300, 400, 3)  # small images: full size
    assert result.overlay(legend=False, max_pixels=30_000).shape == (150, 200, 3)
    assert result.overlay(legend=False, max_pixels=None).shape == (300, 400, 3)


def test_nearest_resize_of_labels():
    labels = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert np.array_equal(_nearest_resize(labels, (3, 4)), labels)
    assert np.array_equal(_nearest_resize(labels, (6, 8)), labels.repeat(2, 0).repeat(2, 1))
    assert np.array_equal(_nearest_resize(labels.repeat(3, 0).repeat(3, 1), (3, 4)), labels)
