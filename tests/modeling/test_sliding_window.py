"""Sliding-window geometry and merging (the official protocol, ``docs/architecture.md``)."""
import pytest
import torch
import torch.nn.functional as F

from cat_seg.modeling.sliding_window import (
    coverage,
    crop_windows,
    merge_views,
    merge_windows,
    window_boxes,
    window_stride,
)

CROP, CANVAS = 384, (640, 640)


def test_official_stride_and_boxes():
    stride = window_stride(384, 0.333)
    assert stride == 256
    assert window_boxes(CANVAS, CROP, stride) == [(0, 0), (0, 256), (256, 0), (256, 256)]


def test_coverage_counts_and_areas():
    boxes = window_boxes(CANVAS, CROP, 256)
    counts = coverage(CANVAS, boxes, CROP)
    assert counts.shape == CANVAS
    assert set(counts.unique().tolist()) == {1.0, 2.0, 4.0}
    assert int((counts == 4).sum()) == 128 * 128  # the central patch
    assert int((counts == 2).sum()) == 4 * 128 * 256  # four 128-px bands between the corners
    assert int((counts == 1).sum()) == 4 * 256 * 256  # the four corners
    assert (counts[256:384, 256:384] == 4).all()
    assert (counts[:256, 256:384] == 2).all() and (counts[256:384, :256] == 2).all()
    assert (counts[:256, :256] == 1).all() and (counts[384:, 384:] == 1).all()
    # the official computation: fold of an all-ones unfold
    ones = F.fold(F.unfold(torch.ones(1, 1, *CANVAS), CROP, stride=256), CANVAS, CROP, stride=256)
    torch.testing.assert_close(counts, ones[0, 0], rtol=0, atol=0)


def test_crops_match_unfold_order():
    image = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0))
    boxes = window_boxes((64, 64), 40, 24)
    assert boxes == [(0, 0), (0, 24), (24, 0), (24, 24)]
    crops = crop_windows(image, boxes, 40)
    unfolded = F.unfold(image[None], 40, stride=24)[0]  # [3*40*40, 4]
    want = unfolded.T.reshape(4, 3, 40, 40)
    torch.testing.assert_close(crops, want, rtol=0, atol=0)


def test_merge_windows_averages():
    g = torch.Generator().manual_seed(1)
    boxes = window_boxes(CANVAS, CROP, 256)
    windows = torch.rand(4, 2, CROP, CROP, generator=g)
    merged = merge_windows(windows, boxes, CANVAS)
    assert merged.shape == (2, *CANVAS)
    # against the official fold(sum) / fold(ones)
    cols = windows.reshape(4, -1).T[None]
    summed = F.fold(cols, CANVAS, CROP, stride=256)
    ones = F.fold(torch.ones_like(cols), CANVAS, CROP, stride=256)
    torch.testing.assert_close(merged, (summed / ones)[0], rtol=1e-6, atol=1e-6)
    # spot checks by hand: one, two and four windows
    assert merged[1, 10, 10] == pytest.approx(windows[0, 1, 10, 10].item(), abs=1e-6)
    assert merged[0, 10, 300] == pytest.approx((windows[0, 0, 10, 300] + windows[1, 0, 10, 44]).item() / 2, abs=1e-6)
    assert merged[0, 600, 300] == pytest.approx((windows[2, 0, 344, 300] + windows[3, 0, 344, 44]).item() / 2, abs=1e-6)
    four = windows[0, 1, 300, 330] + windows[1, 1, 300, 74] + windows[2, 1, 44, 330] + windows[3, 1, 44, 74]
    assert merged[1, 300, 330] == pytest.approx(four.item() / 4, abs=1e-6)
    assert merged[1, 639, 639] == pytest.approx(windows[3, 1, 383, 383].item(), abs=1e-6)


def test_merge_of_constant_is_constant():
    boxes = window_boxes(CANVAS, CROP, 256)
    merged = merge_windows(torch.full((4, 3, CROP, CROP), 0.25), boxes, CANVAS)
    torch.testing.assert_close(merged, torch.full((3, *CANVAS), 0.25), rtol=0, atol=1e-7)


def test_tiny_config_geometry():
    """The tiny configs' geometry (crop 128, canvas 213) also gives 4 crops and counts 1/2/4."""
    stride = window_stride(128, 0.333)
    assert stride == 85
    boxes = window_boxes((213, 213), 128, stride)
    assert boxes == [(0, 0), (0, 85), (85, 0), (85, 85)]
    assert set(coverage((213, 213), boxes, 128).unique().tolist()) == {1.0, 2.0, 4.0}


def test_bad_geometry_errors():
    with pytest.raises(ValueError, match=r"TEST.SLIDING_WINDOW_OVERLAP=1.0 leaves no stride"):
        window_stride(384, 1.0)
    with pytest.raises(ValueError):
        window_boxes((300, 300), 384, 256)


@pytest.mark.parametrize("canvas, crop, overlap, uncovered", [
    (640, 384, 0.333, None),  # the paper's protocol: crops at 0 and 256
    (213, 128, 0.333, None),  # the tiny configs
    (640, 384, 0.0, 256),  # stride 384 > canvas - crop: one crop at 0
    (640, 384, 0.1, 256),  # stride 345: crops at 0 only
    (640, 384, 0.5, 64),  # stride 192: crops at 0 and 192, 576 + 64 = 640
])
def test_geometry_check_matches_the_coverage_count(canvas, crop, overlap, uncovered):
    """check_window_geometry (pure Python, when the model is built) rejects exactly the
    geometries whose coverage count has zeros."""
    from cat_seg.modeling.sliding_window import check_window_geometry

    stride = window_stride(crop, overlap)
    holes = int((coverage((canvas, canvas), window_boxes((canvas, canvas), crop, stride), crop) == 0).sum())
    if holes == 0:
        check_window_geometry(canvas, crop, stride)
        assert uncovered is None
    else:
        with pytest.raises(ValueError, match=rf"leave the last {uncovered} pixels of the canvas uncovered: "
                                             rf"TEST.SLIDING_WINDOW_CROP={crop}"):
            check_window_geometry(canvas, crop, stride)
    with pytest.raises(ValueError, match="sliding-window crop larger than the canvas"):
        check_window_geometry(crop - 1, crop, stride)


@pytest.mark.parametrize("crop, canvas, stride", [(128, (213, 213), 85), (48, (80, 80), 32)])
def test_merge_views_matches_fold_and_is_per_class(crop, canvas, stride):
    """Views -> canvas: upsample to the crop, sigmoid, fold-average the crops, average with the
    global view; each class on its own, so merging chunks of classes gives the same bits. On
    the CPU the resize kernel picks its vectorisation by the number of channels and the output
    size (a crop of 48 takes the other branch than 128), with results that differ in the last
    bit: 11 classes merged at once against chunks of 1 to 4 classes catches a resize that
    depends on the number of classes."""
    g = torch.Generator().manual_seed(2)
    boxes = window_boxes(canvas, crop, stride)
    logits = torch.randn(len(boxes) + 1, 11, 32, 32, generator=g) * 3
    merged = merge_views(logits, boxes, crop, canvas)
    probs = F.interpolate(logits, size=(crop, crop), mode="bilinear", align_corners=False).sigmoid()
    cols = probs[:-1].reshape(len(boxes), -1).T[None]
    windows = F.fold(cols, canvas, crop, stride=stride) / F.fold(torch.ones_like(cols), canvas, crop, stride=stride)
    global_view = F.interpolate(probs[-1:], size=canvas, mode="bilinear", align_corners=False)
    torch.testing.assert_close(merged, ((windows + global_view) / 2)[0], rtol=1e-6, atol=1e-6)
    for size in (1, 2, 4):
        chunks = torch.cat([merge_views(logits[:, i:i + size], boxes, crop, canvas) for i in range(0, 11, size)])
        assert torch.equal(chunks, merged), size
