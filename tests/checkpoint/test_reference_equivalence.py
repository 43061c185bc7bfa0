"""Our model with converted official weights computes what the official code computes.

Tiny configuration (tiny_vitb_cpu.yaml), fp32, TF32 off (tests/conftest.py); the yardstick is
the plain-PyTorch reference ``tests/reference/official_reference.py`` run on the official
state dict. Probabilities must agree within 1e-4.
"""
import open_clip
import pytest
import torch
import torch.nn.functional as F
from official_reference import (
    clip_dense_encode,
    clip_encode_text,
    reference_inference_probs,
    reference_logits,
    reference_sliding_window_probs,
    reference_text_embeddings,
)

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model(load_tiny):
    return load_tiny()


@pytest.fixture(scope="module")
def clip_images():
    torch.manual_seed(0)
    return torch.randn(2, 3, 128, 128)


def _text(num_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(num_classes, 1, 32, generator=g), dim=-1)


def _assert_close_probs(ours, ref):
    assert ours.shape == ref.shape
    assert ref.std() > 0.02  # the comparison is not between saturated maps
    assert (ours - ref).abs().max().item() < TOLERANCE


@torch.no_grad()
def test_dense_image_encode(model, official_tiny, tiny_cfg, clip_images):
    features = model.backbone(clip_images)
    clip_features, hooked = clip_dense_encode(official_tiny, clip_images, tiny_cfg)
    b = clip_images.shape[0]
    expected = clip_features[:, 1:].permute(0, 2, 1).reshape(b, -1, 8, 8)
    assert (features["dense_embeddings"] - expected).abs().max() < 1e-4
    for ours, ref in zip(features["guidance"], hooked):
        assert (ours - ref[1:].permute(1, 2, 0).reshape(b, -1, 8, 8)).abs().max() < 1e-4


@torch.no_grad()
def test_text_encode(model, official_tiny, tiny_cfg):
    tokens = open_clip.tokenize(["A photo of a sky in the scene", "A photo of a building in the scene", "x"])
    ours = model.backbone.encode_text(tokens)
    assert ours.shape == (3, 32)
    assert (ours - clip_encode_text(official_tiny, tokens, tiny_cfg)).abs().max() < 1e-4


@pytest.mark.parametrize("pooling", [(2, 2), (1, 1)])
@torch.no_grad()
def test_head_with_explicit_text_embeddings(model, official_tiny, tiny_cfg, clip_images, pooling):
    text = _text(6)
    ours = model.sem_seg_head(model.backbone(clip_images), text, pooling=pooling)
    ref = reference_logits(official_tiny, clip_images, text, tiny_cfg, pooling)
    assert ours.shape == (2, 6, 32, 32)
    _assert_close_probs(ours.sigmoid(), ref.sigmoid())


@torch.no_grad()
def test_vocabulary_larger_than_pad_len(model, official_tiny, tiny_cfg, clip_images):
    """PAD_LEN 32, 40 classes: per image the 32 best classes are aggregated, 8 get -100."""
    text = _text(40, seed=3)
    ours = model.sem_seg_head(model.backbone(clip_images), text, pooling=(1, 1))
    ref = reference_logits(official_tiny, clip_images, text, tiny_cfg, (1, 1))
    ours_cut = (ours == -100).flatten(2).all(-1)
    ref_cut = (ref == -100).flatten(2).all(-1)
    assert ours_cut.sum(1).tolist() == [8, 8]
    assert torch.equal(ours_cut, ref_cut)
    assert not torch.equal(ours_cut[0], ours_cut[1])  # selection is per image
    kept = ~ref_cut
    _assert_close_probs(ours.sigmoid()[kept], ref.sigmoid()[kept])
    assert (ours.sigmoid() - ref.sigmoid()).abs().max() < TOLERANCE


@pytest.mark.parametrize("pooling", [(2, 2), (1, 1)])
@torch.no_grad()
def test_whole_image_inference_through_the_text_tower(load_tiny, official_tiny, tiny_cfg, class_jsons, pooling):
    """model([{"image"}]) with the test class json; image size a multiple of 32 (no padding)."""
    model = load_tiny(MODEL__SEM_SEG_HEAD__TEST_POOLING_SIZES=list(pooling))
    image = torch.randint(0, 256, (3, 128, 160), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    ours = model([{"image": image}])[0]["sem_seg"]
    text = reference_text_embeddings(official_tiny, class_jsons[3], tiny_cfg)
    ref = reference_inference_probs(official_tiny, image.float(), text, tiny_cfg, pooling)
    assert ours.shape == (len(class_jsons[3]), 128, 160)
    _assert_close_probs(ours, ref)


@torch.no_grad()
def test_sliding_window_inference(load_tiny, official_tiny, tiny_cfg, class_jsons):
    """Sliding window (crop 128 on a 213 canvas: 2x2 crops + global view), output at a third size."""
    model = load_tiny(TEST__SLIDING_WINDOW=True, MODEL__SEM_SEG_HEAD__TEST_POOLING_SIZES=[1, 1])
    image = torch.randint(0, 256, (3, 150, 170), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    ours = model([{"image": image, "height": 100, "width": 120}])[0]["sem_seg"]
    text = reference_text_embeddings(official_tiny, class_jsons[3], tiny_cfg)
    ref = reference_sliding_window_probs(official_tiny, image.float(), text, tiny_cfg, (1, 1), 100, 120)
    assert ours.shape == (len(class_jsons[3]), 100, 120)
    _assert_close_probs(ours, ref)
