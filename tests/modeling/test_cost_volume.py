"""Cosine cost volume and top-k class pruning with -100 scatter-back."""
import itertools

import pytest
import torch

from cat_seg.modeling.aggregator import Aggregator
from cat_seg.modeling.cost_volume import cosine_cost_volume, scatter_class_logits, select_top_classes

C = 8


def explicit_cosine(a, b):
    a, b = a.double(), b.double()
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


@pytest.mark.parametrize("shared_text", [True, False])
def test_cost_volume_equals_explicit_cosines(shared_text):
    g = torch.Generator().manual_seed(0)
    img = torch.randn(2, C, 3, 5, generator=g) * torch.rand(2, 1, 3, 5, generator=g) * 4  # varied norms
    text = torch.randn(2, 4, 3, C, generator=g) * 3  # [B, T, P, C]
    if shared_text:
        text = text[0]
    cost = cosine_cost_volume(img, text)
    assert cost.shape == (2, 3, 4, 3, 5)  # [B, P, T, H, W]
    entries = [(0, 0, 0, 0, 0), (1, 2, 3, 2, 4), (0, 1, 2, 1, 3), (1, 0, 1, 0, 2), (1, 2, 0, 2, 0)]
    for b, p, t, i, j in entries:
        tv = text[t, p] if shared_text else text[b, t, p]
        assert cost[b, p, t, i, j].item() == pytest.approx(explicit_cosine(img[b, :, i, j], tv), abs=1e-6)
    assert cost.abs().max() <= 1 + 1e-6


def test_cost_volume_full_loop_small():
    g = torch.Generator().manual_seed(1)
    img, text = torch.randn(1, C, 2, 2, generator=g), torch.randn(3, 1, C, generator=g)
    cost = cosine_cost_volume(img, text)
    for t, i, j in itertools.product(range(3), range(2), range(2)):
        assert cost[0, 0, t, i, j].item() == pytest.approx(explicit_cosine(img[0, :, i, j], text[t, 0]), abs=1e-6)


# --------------------------------------------------------------------------- top-k pruning
def tiny_aggregator(pad_len, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"num_layers": 1, **kw}
    return Aggregator(
        text_dim=C, appearance_dim=C, num_templates=1, hidden_dim=16, text_guidance_proj_dim=8,
        appearance_guidance_proj_dim=8, decoder_dims=(8, 4), decoder_guidance_dims=(8, 4),
        decoder_guidance_proj_dims=(4, 2), num_heads=2, window=4, pad_len=pad_len, **kw,
    ).eval()


def aggregator_inputs(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, C, 8, 8, generator=g)
    dec = [torch.randn(batch, 8, 16, 16, generator=g), torch.randn(batch, 4, 32, 32, generator=g)]
    return img, dec


def make_pruning_case(num_classes=7, favourites=((0, 1, 2, 3), (3, 4, 5, 6)), seed=0):
    """Text for ``num_classes`` classes; image b contains one pixel equal to each of its favourite
    classes' embedding (cosine 1, the maximum), so its top-4 is exactly ``favourites[b]``."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(num_classes, 1, C, generator=g)
    img, dec = aggregator_inputs(len(favourites), seed)
    for b, fav in enumerate(favourites):
        for n, t in enumerate(fav):
            img[b, :, 0, n] = 2.5 * text[t, 0]
    return img, text, dec


def hand_top_classes(img, text, k):
    """Top-k classes per image by max cosine over pixels, with explicit loops."""
    out = []
    for b in range(img.shape[0]):
        scores = []
        for t in range(text.shape[0]):
            best = max(
                explicit_cosine(img[b, :, i, j], text[t, p])
                for p in range(text.shape[1]) for i in range(img.shape[2]) for j in range(img.shape[3])
            )
            scores.append(best)
        out.append(set(sorted(range(len(scores)), key=lambda t: -scores[t])[:k]))
    return out


def pruned_maps(logits):
    """Per image, the set of class maps that are -100 everywhere."""
    return [{t for t in range(logits.shape[1]) if bool((logits[b, t] == -100).all())} for b in range(logits.shape[0])]


def test_topk_prunes_exactly_t_minus_pad_len_per_image():
    agg = tiny_aggregator(pad_len=4)
    img, text, dec = make_pruning_case()
    expected_kept = hand_top_classes(img, text, 4)
    assert expected_kept == [{0, 1, 2, 3}, {3, 4, 5, 6}]  # construction sanity: images differ
    with torch.no_grad():
        logits = agg(img, text, img, dec)
    assert logits.shape == (2, 7, 32, 32)
    pruned = pruned_maps(logits)
    for b in range(2):
        assert len(pruned[b]) == 7 - 4
        assert pruned[b] == set(range(7)) - expected_kept[b]
        kept = sorted(expected_kept[b])
        assert (logits[b, kept] != -100).all()
        # a kept class's logits are those of running the image alone on its kept classes
        with torch.no_grad():
            alone = agg(img[b:b + 1], text[kept], img[b:b + 1], [d[b:b + 1] for d in dec])
        torch.testing.assert_close(logits[b, kept], alone[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_classes", [4, 3, 1])
def test_no_pruning_when_t_le_pad_len(num_classes):
    agg = tiny_aggregator(pad_len=4)
    img, dec = aggregator_inputs(2)
    text = torch.randn(num_classes, 1, C, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = agg(img, text, img, dec)
    assert logits.shape == (2, num_classes, 32, 32)
    assert pruned_maps(logits) == [set(), set()]
    assert (logits != -100).all()


def test_select_top_classes_and_scatter():
    img, text, _ = make_pruning_case()
    cost = cosine_cost_volume(img, text)
    kept_cost, kept_text, idx = select_top_classes(cost, text, 4)
    assert kept_cost.shape == (2, 1, 4, 8, 8) and kept_text.shape == (2, 4, 1, C) and idx.shape == (2, 4)
    assert [set(i.tolist()) for i in idx] == [{0, 1, 2, 3}, {3, 4, 5, 6}]
    for b in range(2):
        for n, t in enumerate(idx[b].tolist()):
            torch.testing.assert_close(kept_cost[b, :, n], cost[b, :, t])
            torch.testing.assert_close(kept_text[b, n, 0], text[t, 0] / text[t, 0].norm())
    maps = torch.randn(2, 4, 3, 3)
    full = scatter_class_logits(maps, idx, 7)
    for b in range(2):
        for n, t in enumerate(idx[b].tolist()):
            assert torch.equal(full[b, t], maps[b, n])
        for t in set(range(7)) - set(idx[b].tolist()):
            assert (full[b, t] == -100).all()


# --------------------------------------------------------------------------- intermediates
@pytest.mark.parametrize("num_classes, pad_len", [(3, 0), (7, 4)], ids=["all-classes", "top-4-of-7"])
def test_intermediates_are_what_the_logits_are_computed_from(num_classes, pad_len):
    """``return_intermediates``: the cost volume, the embedding and each layer's output, each
    equal to recomputing that step from the previous one, and the same logits."""
    agg = tiny_aggregator(pad_len, num_layers=2)
    img, dec = aggregator_inputs(2)
    text = torch.randn(num_classes, 1, C, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = agg(img, text, img, dec)
        out = agg(img, text, img, dec, return_intermediates=True)
        kept_classes = pad_len or num_classes
        assert torch.equal(out.logits, logits) and logits.shape == (2, num_classes, 32, 32)
        assert out.cost_volume.shape == (2, 1, kept_classes, 8, 8)
        full = cosine_cost_volume(img, text)
        if pad_len:
            assert out.kept.shape == (2, pad_len)
            expected = torch.stack([full[b][:, out.kept[b]] for b in range(2)])
        else:
            assert out.kept is None
            expected = full
        torch.testing.assert_close(out.cost_volume, expected)
        torch.testing.assert_close(out.cost_embedding, agg.embed_cost(out.cost_volume))
        assert len(out.layer_outputs) == 2
        assert out.layer_outputs[0].shape == (2, kept_classes, 8, 8, 16)
        decoded = agg._decode(out.layer_outputs[-1], *out.decoder_guidance)
        if pad_len:
            decoded = scatter_class_logits(decoded, out.kept, num_classes)
        torch.testing.assert_close(decoded, logits)
        assert not torch.equal(out.layer_outputs[0], out.layer_outputs[1])  # each layer's own output
