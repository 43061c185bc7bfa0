"""Inference (``docs/architecture.md``): hand-written pipelines, batch == alone, CPU-only end to end."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
NAMES = ["cat", "dog", "car"]
POOLING = (2, 2)  # tiny configs: POOLING_SIZES [2, 2], TEST_POOLING_SIZES empty (= POOLING_SIZES)


@pytest.fixture(scope="module", params=["b", "l"])
def model(request, tiny_model):
    return tiny_model(request.param).eval()


# the official CLIP statistics x 255 (the official values), independent of the model's buffers
MEAN = torch.tensor([122.7709383, 116.7460125, 104.09373615]).view(-1, 1, 1)
STD = torch.tensor([68.5005327, 66.6321579, 70.3231630]).view(-1, 1, 1)


def normalise(model, images):
    return (images.float() - MEAN) / STD


def logits_of(model, clip_input, pooling=POOLING):
    bb = model.backbone
    if tuple(clip_input.shape[-2:]) != bb.resolution:
        clip_input = F.interpolate(clip_input, size=bb.resolution, mode="bilinear", align_corners=False)
    return model.sem_seg_head(bb(clip_input), model.text_embeddings(NAMES), pooling=pooling)


def bilinear(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def ref_whole_image(model, image, out_size):
    """Official whole-image inference with the padding removed: normalise, pad to /32 with zeros, squash to the CLIP
    resolution, sigmoid, back to the padded size, crop, resize to the output size; without padding, one resize to
    the output size (the official code's)."""
    h, w = image.shape[-2:]
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    x = F.pad(normalise(model, image), (0, pw - w, 0, ph - h))[None]
    probs = logits_of(model, x).sigmoid()
    if (ph, pw) != (h, w):
        probs = bilinear(probs, (ph, pw))[..., :h, :w]
    return bilinear(probs, out_size)[0]


def ref_sliding(model, image, out_size, crop=128, canvas=(213, 213), stride=85):
    """Official sliding-window protocol with unfold/fold as in the official code."""
    img = image.float()[None]
    canvas_img = bilinear(img, canvas)
    cols = F.unfold(canvas_img, crop, stride=stride)  # [1, 3*crop*crop, n]
    n = cols.shape[-1]
    crops = cols[0].T.reshape(n, 3, crop, crop)
    views = torch.cat([crops, bilinear(img, (crop, crop))])
    logits = logits_of(model, normalise(model, views))
    probs = bilinear(logits, (crop, crop)).sigmoid()  # upsample, then sigmoid
    t = probs.shape[1]
    win = probs[:n].reshape(n, t * crop * crop).T[None]
    summed = F.fold(win, canvas, crop, stride=stride)
    counts = F.fold(torch.ones_like(win), canvas, crop, stride=stride)
    merged = (summed / counts + bilinear(probs[n:], canvas)) / 2
    return bilinear(merged, out_size)[0]


@pytest.mark.parametrize("size,out", [((100, 150), None), ((128, 96), (200, 150))])
def test_whole_image_inference_matches_reference(model, random_images, size, out):
    image = random_images([size])[0]
    x = {"image": image}
    if out is not None:
        x.update(height=out[0], width=out[1])
    model.sliding_window = False
    with torch.no_grad():
        got = model([x], class_names=NAMES)[0]["sem_seg"]
        want = ref_whole_image(model, image, out or size)
    assert got.shape == (len(NAMES), *(out or size))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_sliding_window_matches_reference(model, random_images):
    image = random_images([(90, 140)], seed=3)[0]
    model.sliding_window = True
    try:
        assert model.window_stride == 85 and model.window_crop == 128
        with torch.no_grad():
            got = model([{"image": image, "height": 180, "width": 280}], class_names=NAMES)[0]["sem_seg"]
            want = ref_sliding(model, image, (180, 280))
    finally:
        model.sliding_window = False
    assert got.shape == (3, 180, 280)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_release_inference_caches_drops_text_embeddings_and_merge_weights(model, random_images):
    """What an evaluation during training leaves behind: the vocabulary's text embeddings and
    the sliding window's merge weights (cached per canvas on the device) are dropped, and the
    next inference computes the same result again."""
    from cat_seg.modeling import sliding_window

    image = random_images([(90, 140)], seed=3)[0]
    model.sliding_window = True
    try:
        with torch.no_grad():
            first = model([{"image": image}], class_names=NAMES)[0]["sem_seg"]
            assert sliding_window._cached_weights.cache_info().currsize > 0
            assert len(model.text_encoder._cache) == 1
            model.release_inference_caches()
            assert sliding_window._cached_weights.cache_info().currsize == 0
            assert len(model.text_encoder._cache) == 0
            again = model([{"image": image}], class_names=NAMES)[0]["sem_seg"]
    finally:
        model.sliding_window = False
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def batch_vs_alone(model, images, sliding):
    model.sliding_window = sliding
    try:
        with torch.no_grad():
            batch = model([{"image": im} for im in images], class_names=NAMES)
            alone = [model([{"image": im}], class_names=NAMES)[0] for im in images]
    finally:
        model.sliding_window = False
    assert len(batch) == len(images)
    for im, b, a in zip(images, batch, alone):
        assert b["sem_seg"].shape == (len(NAMES), *im.shape[-2:])
        torch.testing.assert_close(b["sem_seg"], a["sem_seg"], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def model_b(tiny_model):
    return tiny_model("b").eval()


def test_batch_equals_alone_same_size(model_b, random_images):
    batch_vs_alone(model_b, random_images([(96, 128), (96, 128)], seed=4), sliding=False)


def test_batch_equals_alone_mixed_sizes(model_b, random_images):
    batch_vs_alone(model_b, random_images([(100, 150), (128, 96)], seed=5), sliding=False)


def test_batch_equals_alone_sliding(model_b, random_images):
    batch_vs_alone(model_b, random_images([(100, 150), (70, 90)], seed=6), sliding=True)


# --------------------------------------------------------------------------- CPU only
CPU_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import torch.cuda

    def no_cuda(*args, **kwargs):
        raise RuntimeError("CUDA was touched")

    torch.cuda._lazy_init = no_cuda  # any .cuda() / device='cuda' allocation goes through here
    sys.path.insert(0, "tests")
    from conftest import build_cfg
    import cat_seg.modeling  # noqa: F401
    from detectron2.modeling import build_model

    torch.set_num_threads(1)
    cfg = build_cfg("b")
    assert cfg.MODEL.DEVICE == "cpu"
    model = build_model(cfg)
    assert all(p.device.type == "cpu" for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=g)
    model.train()
    loss = model([{"image": image, "sem_seg": torch.randint(0, 5, (64, 64), generator=g)}])["loss_sem_seg"]
    loss.backward()
    model.eval()
    with torch.no_grad():
        out = model([{"image": image}])
    assert out[0]["sem_seg"].shape == (4, 64, 64)
    assert not torch.cuda.is_initialized()
    print("CPU-OK", float(loss))
    """
)


def test_cpu_only_end_to_end():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", CPU_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800)  # hang guard only
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CPU-OK" in proc.stdout


def test_no_cuda_initialised_in_process(tiny_model, random_images):
    model = tiny_model("l", train=True)
    batch = [{"image": im, "sem_seg": torch.zeros(64, 64, dtype=torch.long)} for im in random_images([(64, 64)])]
    model(batch)["loss_sem_seg"].backward()
    assert model.device.type == "cpu"
    assert not torch.cuda.is_initialized()


def test_assigning_the_test_class_json_switches_the_vocabulary(tiny_model, class_jsons, tmp_path, monkeypatch,
                                                                caplog):
    """The class names are cached per class json path: assigning another path is seen, and so
    is a change of the file, except in training."""
    import logging

    import cat_seg.utils

    train_json, test_json, train_classes, test_classes = class_jsons
    model = tiny_model("b").eval()
    model.test_class_json = test_json
    assert model.class_names("test") == test_classes
    other = tmp_path / "other.json"
    other.write_text('["sky", "road"]')
    model.test_class_json = str(other)
    assert model.class_names("test") == ["sky", "road"]
    model.test_class_json = test_json
    assert model.class_names("test") == test_classes
    assert model.class_names("train") == train_classes
    # an edited file is read again (a long-lived process kept the first list), also when named
    # relative to another folder than the working one; a broken or removed one keeps the names
    # read before, and so does a training
    other.write_text('["sky", "road", "tree"]')
    model.test_class_json = str(other)
    assert model.class_names("test") == ["sky", "road", "tree"]
    other.write_text('["sky", "road", "tr')  # half-written by an editor
    with caplog.at_level(logging.WARNING, logger="cat_seg"):
        assert model.class_names("test") == ["sky", "road", "tree"]
    assert "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON: keeping the 3 class names read before" in caplog.text
    other.unlink()
    assert model.class_names("test") == ["sky", "road", "tree"]
    # named relative to the checkout root (tried when the working folder has no such file)
    relative = tmp_path.name + "/" + other.name
    monkeypatch.setattr(cat_seg.utils, "REPO_ROOT", str(tmp_path.parent))
    monkeypatch.chdir(tmp_path)
    other.write_text('["sea"]')
    model.test_class_json = relative
    assert model.class_names("test") == ["sea"]
    other.write_text('["sea", "sand"]')
    assert model.class_names("test") == ["sea", "sand"]
    train_json = tmp_path / "train.json"
    train_json.write_text('["sea", "sand"]')
    model.train_class_json = str(train_json)
    model.train()
    assert model.class_names("train") == ["sea", "sand"]
    train_json.write_text('["lake"]')
    assert model.class_names("train") == ["sea", "sand"]  # training keeps its vocabulary
    assert model.eval().class_names("train") == ["lake"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_are_refused_with_the_supported_way(tiny_model, random_images, dtype):
    """``.to(bf16)`` is not how the model runs in reduced precision: one clear error that names
    ``MODEL.PRECISION`` instead of a dtype mismatch deep in a convolution."""
    model = tiny_model("b").eval().to(dtype)
    with pytest.raises(TypeError, match=r"weights are torch\.(bfloat16|float16).*MODEL\.PRECISION"):
        model([{"image": random_images([(32, 32)])[0]}])


def test_eval_mode_with_gradients_enabled_and_class_chunks(tiny_model):
    """Inference with gradients (attribution, test-time adaptation of a frozen model): the
    class blocks' location chunks wrote in place, which autograd refused ("functions with
    out=... arguments don't support automatic differentiation") once the classes were
    chunked; the results equal those without gradients, and a gradient reaches the input."""
    model = tiny_model("b", MODEL__SEM_SEG_HEAD__PAD_LEN=256).eval()  # no top-k pruning to 32 classes
    names = [f"thing {i}" for i in range(40)]  # more than the CPU's 32-class chunks
    views = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.predict_logits(views, names, (1, 1))
    views.requires_grad_(True)
    with torch.enable_grad():
        logits = model.predict_logits(views, names, (1, 1))
        logits.float().sum().backward()
    assert (logits.detach() - expected).abs().max() <= 1e-5
    assert views.grad is not None and views.grad.abs().sum() > 0
