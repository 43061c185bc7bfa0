"""Output stage (``cat_seg.modeling.postprocess``): streamed labels/confidence and chunked
probabilities are identical to the all-classes computation, and memory is bounded by the chunk."""
import pytest
import torch
import torch.nn.functional as F

from cat_seg.modeling import postprocess
from cat_seg.modeling.cost_volume import PRUNED_CLASS_LOGIT
from cat_seg.modeling.postprocess import (
    OutputRequest,
    SlidingWindowMaps,
    WholeImageMaps,
)
from cat_seg.modeling.sliding_window import coverage, merge_views, window_boxes, window_stride


def bilinear(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def full_whole_image(logits, padded, image_size, out_size):
    """All classes at once, as the output stage was written before streaming."""
    probs = bilinear(logits.float().sigmoid()[None], padded)[..., :image_size[0], :image_size[1]]
    return bilinear(probs, out_size)[0]


def full_sliding(logits, boxes, crop, canvas, out_size):
    """All classes at once: upsample every view to the crop, sigmoid, average the crops over
    their coverage (loop over the boxes), average with the global view, resize."""
    probs = bilinear(logits.float(), (crop, crop)).sigmoid()
    summed = torch.zeros(probs.shape[1], *canvas)
    for window, (y, x) in zip(probs[:-1], boxes):
        summed[:, y:y + crop, x:x + crop] += window
    merged = (summed / coverage(canvas, boxes, crop) + bilinear(probs[-1:], canvas)[0]) / 2
    return bilinear(merged[None], out_size)[0]


def random_logits(shape, class_dim, pruned, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 3
    index = [slice(None)] * len(shape)
    index[class_dim] = pruned
    logits[tuple(index)] = PRUNED_CLASS_LOGIT
    return logits


@pytest.fixture(params=["row by row", "per chunk"])
def merge(request, monkeypatch):
    """Both ways of merging the output-size maps into the running best (the CPU's and the
    GPU's; ``postprocess._merges_row_by_row``) give the same labels and confidence."""
    monkeypatch.setattr(postprocess, "_merges_row_by_row", lambda device: request.param == "row by row")
    return request.param


WHOLE = dict(padded=(64, 96), image_size=(50, 90), out_size=(77, 131))
PRUNED = [1, 4, 5, 9]


def whole_maps(logits, chunk):
    return WholeImageMaps(logits, WHOLE["padded"], WHOLE["image_size"], WHOLE["out_size"], chunk)


@pytest.mark.parametrize("chunk", [1, 3, 4, 0, -1])
@pytest.mark.parametrize("pruned", [[], PRUNED])
def test_whole_image_streamed_equals_full(chunk, pruned, merge):
    logits = random_logits((11, 16, 24), 0, pruned)
    want = full_whole_image(logits, **WHOLE)
    maps = whole_maps(logits, chunk)
    assert maps.num_rows == (11 - len(pruned) + 1 if pruned else 11)  # pruned classes share one row
    torch.testing.assert_close(maps.probabilities(), want, rtol=0, atol=0)
    labels, confidence = maps.labels_and_confidence()
    best, argmax = want.max(dim=0)
    assert labels.dtype == torch.int64 and confidence.dtype == torch.float32
    assert torch.equal(labels, argmax) and torch.equal(labels, want.argmax(dim=0))
    assert torch.equal(confidence, best)
    assert len(labels.unique()) > 3  # several classes win somewhere


@pytest.mark.parametrize("chunk", [1, 2, 5, 0])
@pytest.mark.parametrize("pruned", [[], [0, 2, 3]])
def test_sliding_window_streamed_equals_full(chunk, pruned, merge):
    crop, canvas = 40, (66, 66)
    boxes = window_boxes(canvas, crop, window_stride(crop, 0.333))
    logits = random_logits((len(boxes) + 1, 7, 10, 10), 1, pruned, seed=1)
    if not pruned:  # a class pruned in some views only is not pruned
        logits[:2, 3] = PRUNED_CLASS_LOGIT
    out_size = (90, 55)
    # every class at once through the product's merge: the streamed output has the same bits
    want = bilinear(merge_views(logits, boxes, crop, canvas)[None], out_size)[0]
    maps = SlidingWindowMaps(logits, boxes, crop, canvas, out_size, chunk)
    assert maps.num_rows == (7 - len(pruned) + 1 if pruned else 7)
    torch.testing.assert_close(maps.probabilities(), want, rtol=0, atol=0)
    # ... and the official formula up to float32 rounding (the merge adds in another order)
    torch.testing.assert_close(want, full_sliding(logits, boxes, crop, canvas, out_size), rtol=0, atol=3e-7)
    labels, confidence = maps.labels_and_confidence()
    best, argmax = want.max(dim=0)
    assert torch.equal(labels, argmax) and torch.equal(confidence, best)


def test_single_chunk_probabilities_in_any_dtype():
    """All classes in one chunk: the expanded maps are the result, in the dtype asked for."""
    logits = random_logits((5, 16, 24), 0, [])
    want = full_whole_image(logits, **WHOLE)
    maps = whole_maps(logits, 0)
    assert maps.chunk_size() >= 5
    assert torch.equal(maps.probabilities(), want)
    half = maps.probabilities(dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.equal(half, want.half())


def test_element_cap_splits_chunks(monkeypatch, merge):
    """A large output is expanded a few classes at a time whatever the chunk setting."""
    logits = random_logits((11, 16, 24), 0, [])
    maps = whole_maps(logits, 0)
    per_class = 16 * 24 + 64 * 96 + 77 * 131  # logits, padded-size maps, output
    monkeypatch.setattr(postprocess, "MAX_CHUNK_ELEMENTS", 2 * per_class + 1)
    assert maps.chunk_size() == 2
    labels, confidence = maps.labels_and_confidence()
    best, argmax = full_whole_image(logits, **WHOLE).max(dim=0)
    assert torch.equal(labels, argmax) and torch.equal(confidence, best)


def test_candidate_rows_leave_out_only_losers(merge):
    """A class below another one by a margin everywhere is not expanded; tied classes are."""
    logits = random_logits((6, 16, 24), 0, [])
    logits[0] = 6 + logits[0] / 30  # probability near 0.997 everywhere
    logits[2] = logits[0] - 5  # about 0.73 everywhere: never the highest
    logits[4] = logits[1]
    maps = whole_maps(logits, 2)
    candidates = maps.candidate_rows().tolist()
    assert 2 not in candidates and {0, 1, 4} <= set(candidates)
    want = full_whole_image(logits, **WHOLE)
    labels, confidence = maps.labels_and_confidence()
    assert torch.equal(labels, want.argmax(0)) and torch.equal(confidence, want.amax(0))


@pytest.mark.parametrize("shape", [(3, 7, 9), (3, 1, 9), (3, 7, 1), (2, 1, 1)])
def test_block_extremes_equal_max_pooling(shape):
    maps = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    kernel = (min(2, shape[1]), min(2, shape[2]))
    low, high = postprocess._block_reduce(maps, torch.minimum), postprocess._block_reduce(maps, torch.maximum)
    assert torch.equal(low, -F.max_pool2d(-maps[None], kernel, stride=1)[0])
    assert torch.equal(high, F.max_pool2d(maps[None], kernel, stride=1)[0])


def sliding_with_losers(seed=6):
    """Sliding-window logits of 9 classes on a 66x66 canvas, with classes that never win."""
    crop, canvas = 40, (66, 66)
    boxes = window_boxes(canvas, crop, window_stride(crop, 0.333))
    logits = random_logits((len(boxes) + 1, 9, 10, 10), 1, [], seed=seed)
    logits[:, 0] = 8 + logits[:, 0] / 30  # near 1 everywhere
    logits[:, [2, 5, 6]] = logits[:, :1] - 6  # always below class 0 by a margin
    logits[:, 7] = logits[:, 0]  # tied with class 0
    return logits, boxes, crop, canvas


@pytest.mark.parametrize("keep", ["all", "few"])
def test_labels_compute_each_map_once(monkeypatch, keep, merge):
    """The labels of an output larger than the canvas merge every class's views once (the
    candidate rows' maps are kept for their expansion); when more would have to be kept than
    allowed, only the candidates are merged a second time. Same labels and confidence either
    way, and the same candidates as the rule computed on all maps at once."""
    logits, boxes, crop, canvas = sliding_with_losers()
    out_size = (150, 120)  # larger than the canvas: only candidates are expanded
    merged = merge_views(logits, boxes, crop, canvas)  # [T, 66, 66], all classes at once
    block_min = -F.max_pool2d(-merged[None], 2, stride=1)[0]
    block_max = F.max_pool2d(merged[None], 2, stride=1)[0]
    lower = block_min.amax(dim=0) - postprocess.ROUNDING_MARGIN
    want_candidates = (block_max > lower).flatten(1).any(dim=1).nonzero().squeeze(1).tolist()
    assert {0, 7} <= set(want_candidates) and not {2, 5, 6} & set(want_candidates)
    want = bilinear(merged[None], out_size)[0]

    if keep == "few":  # one map of the canvas' size may be kept: classes 0 and 7 both win somewhere
        monkeypatch.setattr(postprocess, "MAX_CHUNK_ELEMENTS", 66 * 66)
    maps = SlidingWindowMaps(logits, boxes, crop, canvas, out_size, 2)
    sourced = []
    source = maps._source
    monkeypatch.setattr(maps, "_source", lambda rows: sourced.append(source(rows).shape[0]) or source(rows))
    labels, confidence = maps.labels_and_confidence()
    assert torch.equal(labels, want.argmax(dim=0)) and torch.equal(confidence, want.amax(dim=0))
    if keep == "all":
        assert sum(sourced) == 9  # each class's views merged once
    else:
        assert 9 < sum(sourced) < 9 + 9  # the survivors of the first pass again, not every class
    sourced.clear()
    assert maps.candidate_rows().tolist() == want_candidates


@pytest.mark.parametrize("chunk", [2, 0])
def test_ties_go_to_the_lowest_class(chunk, merge):
    """Identical maps in different chunks (chunk 2) or in one chunk (0): the first class wins,
    as with argmax."""
    logits = random_logits((6, 16, 24), 0, [])
    logits[4] = logits[1]
    logits[5] = logits[1] + 50  # class 5 wins everywhere
    logits[3] = logits[5]  # ... tied with class 3, earlier
    maps = whole_maps(logits, chunk)
    labels, _ = maps.labels_and_confidence()
    assert (labels == 3).all()


@pytest.fixture(params=[2, 5])
def threads(request):
    """CPU thread counts whose ranges split class maps at different positions."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def odd_size_maps(kind, chunk):
    """Class 3 a copy of class 0, maps whose size is not a multiple of 32: a 7x7 grid's 28x28
    logits (whole image), or 7x7 views upsampled to 100-pixel crops (sliding window)."""
    if kind == "whole image":
        logits = random_logits((5, 28, 28), 0, [])
        logits[3] = logits[0]
        return WholeImageMaps(logits, (32, 32), (32, 32), (45, 37), chunk)
    crop, canvas = 10, (16, 16)
    boxes = window_boxes(canvas, crop, window_stride(crop, 0.333))
    views = random_logits((len(boxes) + 1, 5, 7, 7), 1, [])
    views[:, 3] = views[:, 0]
    return SlidingWindowMaps(views, boxes, crop, canvas, (21, 19), chunk)


@pytest.mark.parametrize("kind", ["whole image", "sliding window"])
def test_chunking_and_ties_bit_exact_for_odd_map_sizes(kind, threads, merge):
    """Odd map sizes at several thread counts: chunked == all at once, bit for bit, and
    classes with equal logits get equal probabilities, so the lowest one wins. (torch's CPU
    sigmoid rounds the elements of a call's partial 32-element runs differently; the output
    stage calls it per class map.)"""
    probs = {chunk: odd_size_maps(kind, chunk).probabilities() for chunk in (0, 1, 2)}
    for chunk in (1, 2):
        assert torch.equal(probs[chunk], probs[0])
    assert torch.equal(probs[0][0], probs[0][3])
    for chunk in (0, 1, 2):
        labels, _ = odd_size_maps(kind, chunk).labels_and_confidence()
        assert not (labels == 3).any()


def test_pruned_classes_can_win(merge):
    """Where no live class beats the pruned constant (all underflow to 0 here), the argmax over
    the full tensor is the lowest class index, here the first pruned class: streaming agrees."""
    logits = random_logits((6, 16, 24), 0, [0, 4])
    logits[[1, 2, 3, 5], :8] = -300.0
    want = full_whole_image(logits, **WHOLE)
    labels, confidence = whole_maps(logits, 1).labels_and_confidence()
    assert torch.equal(labels, want.argmax(dim=0)) and torch.equal(confidence, want.amax(dim=0))
    assert (labels == 0).any() and not (labels == 4).any()


def test_probabilities_subset_dtype_device():
    logits = random_logits((11, 16, 24), 0, PRUNED)
    want = full_whole_image(logits, **WHOLE)
    maps = whole_maps(logits, 3)
    classes = [9, 0, 4, 10]
    got = maps.probabilities(classes=classes, dtype=torch.float16, device="cpu")
    assert got.dtype == torch.float16 and got.shape == (4, *WHOLE["out_size"])
    assert torch.equal(got, want[classes].half())


@pytest.mark.parametrize("classes", [None, list(range(11))[::-1], [2, 3, 6, 7, 8, 0, 1], [5]])
def test_probabilities_of_any_class_order(classes):
    """Whatever the order of the classes asked for (runs of consecutive rows written as slices,
    or one gather when there are many runs), each class gets its own map."""
    logits = random_logits((11, 16, 24), 0, PRUNED)
    want = full_whole_image(logits, **WHOLE)
    got = whole_maps(logits, 3).probabilities(classes=classes)
    assert torch.equal(got, want if classes is None else want[classes])


def test_runs_of_consecutive_values():
    assert postprocess._runs(torch.tensor([], dtype=torch.long)) == []
    assert postprocess._runs(torch.tensor([4, 5, 6, 8, 9, 3])) == [(0, 3), (3, 5), (5, 6)]
    assert postprocess._runs(torch.tensor([2])) == [(0, 1)]


def test_same_device():
    """The rule the output stage (and the work counter) match devices by: a device without an
    index matches every index of its type."""
    from cat_seg.utils import same_device

    d = torch.device
    assert same_device(d("cpu"), d("cpu")) and same_device(d("cuda"), d("cuda:1"))
    assert same_device(d("cuda:1"), d("cuda")) and same_device(d("cuda:0"), d("cuda:0"))
    assert not same_device(d("cuda:0"), d("cuda:1")) and not same_device(d("cpu"), d("cuda"))


def test_output_request_keys(merge):
    logits = random_logits((5, 16, 24), 0, [])
    want = full_whole_image(logits, **WHOLE)
    assert set(OutputRequest().outputs(whole_maps(logits, 2))) == {"sem_seg"}
    labels_only = OutputRequest(probabilities=False, labels=True).outputs(whole_maps(logits, 2))
    assert set(labels_only) == {"sem_seg_labels", "sem_seg_confidence"}
    assert torch.equal(labels_only["sem_seg_labels"], want.argmax(0))
    both = OutputRequest(labels=True, maps=True, dtype=torch.bfloat16).outputs(whole_maps(logits, 2))
    assert both["sem_seg"].dtype == torch.bfloat16
    assert torch.equal(both["sem_seg_labels"], want.argmax(0)) and torch.equal(both["sem_seg_confidence"], want.amax(0))
    assert isinstance(both["sem_seg_maps"], WholeImageMaps)


# --------------------------------------------------------------------------- the model
NAMES = [f"class {i}" for i in range(40)]  # more than the tiny PAD_LEN (32): 8 classes pruned


@pytest.fixture(scope="module")
def model(tiny_model):
    model = tiny_model("b").eval()
    model.class_chunk_size = 4
    return model


def run(model, inputs, request, sliding):
    model.sliding_window, model.output_request = sliding, request
    try:
        with torch.no_grad():
            return model(inputs, class_names=NAMES)
    finally:
        model.sliding_window, model.output_request = False, OutputRequest()


@pytest.mark.parametrize("sliding", [False, True])
def test_model_labels_equal_argmax_of_probabilities(model, random_images, sliding):
    images = random_images([(64, 96), (80, 60)], seed=2)
    inputs = [{"image": images[0], "height": 130, "width": 190}, {"image": images[1]}]
    full = run(model, inputs, OutputRequest(), sliding)
    streamed = run(model, inputs, OutputRequest(probabilities=False, labels=True), sliding)
    for f, s in zip(full, streamed):
        probs = f["sem_seg"]
        assert set(s) == {"sem_seg_labels", "sem_seg_confidence"}
        assert s["sem_seg_labels"].shape == probs.shape[1:]
        pruned = (probs == probs[:, :1, :1]).flatten(1).all(1)  # constant maps: the pruned classes
        assert (8 if not sliding else 1) <= int(pruned.sum()) < len(NAMES)  # sliding: pruned in every view
        assert torch.equal(s["sem_seg_labels"], probs.argmax(dim=0))
        assert torch.equal(s["sem_seg_confidence"], probs.amax(dim=0))


@pytest.mark.parametrize("sliding", [False, True])
def test_model_labels_never_allocate_all_class_maps(model, random_images, sliding, largest_allocation):
    image = random_images([(64, 96)], seed=3)[0]
    inputs = [{"image": image, "height": 400, "width": 600}]
    all_maps = len(NAMES) * 400 * 600
    with largest_allocation() as labels_mode:
        out = run(model, inputs, OutputRequest(probabilities=False, labels=True), sliding)
    assert out[0]["sem_seg_labels"].shape == (400, 600)
    assert labels_mode.largest <= 4 * 400 * 600 + 4 * 3 * 213 * 213  # one chunk of 4 classes
    with largest_allocation() as probabilities_mode:  # the check sees the [T, H, W] maps when asked for
        run(model, inputs, OutputRequest(), sliding)
    assert probabilities_mode.largest >= all_maps


def test_request_per_input_overrides_the_model(model, random_images):
    image = random_images([(64, 96)], seed=4)[0]
    labels_request = OutputRequest(probabilities=False, labels=True)
    with torch.no_grad():
        out = model([{"image": image, "output_request": labels_request}, {"image": image}], class_names=NAMES)
    assert set(out[0]) == {"sem_seg_labels", "sem_seg_confidence"} and set(out[1]) == {"sem_seg"}
    assert torch.equal(out[0]["sem_seg_labels"], out[1]["sem_seg"].argmax(0))
    assert not hasattr(model, "output_request") or model.output_request == OutputRequest()
