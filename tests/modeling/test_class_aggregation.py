"""Class aggregation: permutation equivariance in the class order, and the layer against the
hand-written computation of ``catseg_reference`` (``docs/architecture.md``, "Class aggregation")."""
import pytest
import torch

import catseg_reference as ref
from cat_seg.modeling.class_aggregation import ClassAggregation, full_attention, linear_attention

D, G, HEADS, T = 16, 8, 2, 5


def make_layer(attention_type, pad_len, seed=0, residual_quirk=True):
    torch.manual_seed(seed)
    layer = ClassAggregation(D, G, HEADS, attention_type=attention_type, pad_len=pad_len,
                             residual_quirk=residual_quirk).eval()
    with torch.no_grad():  # non-trivial padding tokens and norms
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    return layer


def run(layer, x, g, pooling):
    """The layer on ``x [B, D, T, H, W]`` (the reference layout); it computes on ``[B, T, H, W, D]`` tokens."""
    return layer(x.permute(0, 2, 3, 4, 1), g, pooling).permute(0, 4, 1, 2, 3)


def make_inputs(seed=1, t=T):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, D, t, 4, 4, generator=g), torch.randn(2, t, G, generator=g)


CASES = [
    pytest.param("linear", 8, id="linear-padded"),
    pytest.param("linear", 0, id="linear-nopad"),
    pytest.param("linear", T, id="linear-pad_len=T"),
    pytest.param("full", 8, id="full-padded"),
    pytest.param("full", 0, id="full-nopad"),
]


@pytest.mark.parametrize("pooling", [(1, 1), (2, 2)])
@pytest.mark.parametrize("attention_type,pad_len", CASES)
def test_permutation_equivariant(attention_type, pad_len, pooling):
    layer = make_layer(attention_type, pad_len)
    x, g = make_inputs()
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        out = run(layer, x, g, pooling)
        out_perm = run(layer, x[:, :, perm], g[:, perm], pooling)
    assert out.shape == x.shape
    torch.testing.assert_close(out_perm, out[:, :, perm], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention_type,pad_len", CASES)
def test_classes_interact(attention_type, pad_len):
    """Non-trivial check: the output of a class depends on the other classes' inputs."""
    layer = make_layer(attention_type, pad_len)
    x, g = make_inputs()
    x2 = x.clone()
    x2[:, :, 1] += torch.randn(x2[:, :, 1].shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        a, b = run(layer, x, g, (1, 1)), run(layer, x2, g, (1, 1))
    assert (a[:, :, 0] - b[:, :, 0]).abs().max() > 1e-4


def test_padding_tokens_matter():
    layer = make_layer("linear", 8)
    x, g = make_inputs()
    with torch.no_grad():
        a = run(layer, x, g, (1, 1))
        layer.padding_tokens.add_(torch.randn(layer.padding_tokens.shape))
        b = run(layer, x, g, (1, 1))
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("pooling", [(1, 1), (2, 2)])
@pytest.mark.parametrize("attention_type", ["linear", "full"])
@pytest.mark.parametrize("pad_len", [8, 0])
def test_layer_matches_hand_written(attention_type, pooling, pad_len):
    layer = make_layer(attention_type, pad_len)
    x, g = make_inputs()
    with torch.no_grad():
        got = run(layer, x, g, pooling)
        want = ref.class_layer(layer, x, g, pooling, ref.ATTENTION[attention_type], HEADS)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_attention_functions_match_formulas():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 6, 3, 2, 4, generator=g) for _ in range(3))  # [B, S, L, heads, d]
    for fn, ref_fn in ((linear_attention, ref.linear_attention), (full_attention, ref.full_attention)):
        got = fn(q, k, v)
        for n in range(2):
            for loc in range(3):
                for h in range(2):
                    torch.testing.assert_close(got[n, :, loc, h], ref_fn(q[n, :, loc, h], k[n, :, loc, h], v[n, :, loc, h]),
                                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn", [linear_attention, full_attention])
def test_closed_form_padding_equals_appended_tokens(fn):
    """``count`` identical padding keys/values in closed form == appending them to k and v."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 5, 3, 2, 4, generator=g) for _ in range(3))
    pad_k, pad_v = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    count = 7
    k_all = torch.cat([k, pad_k.expand(2, count, 3, 2, 4)], dim=1)
    v_all = torch.cat([v, pad_v.expand(2, count, 3, 2, 4)], dim=1)
    q_all = torch.cat([q, torch.zeros(2, count, 3, 2, 4)], dim=1)
    torch.testing.assert_close(fn(q, k, v, pad_k, pad_v, count), fn(q_all, k_all, v_all)[:, :5], rtol=1e-5, atol=1e-5)


def test_plain_residual_matches_hand_written():
    layer = make_layer("linear", 8, residual_quirk=False)
    x, g = make_inputs()
    with torch.no_grad():
        torch.testing.assert_close(run(layer, x, g, (2, 2)),
                                   ref.class_layer(layer, x, g, (2, 2), ref.linear_attention, HEADS, quirk=False),
                                   rtol=1e-4, atol=1e-4)


def test_residual_quirk_off_drops_pooled_input():
    quirk, plain = make_layer("linear", 8, residual_quirk=True), make_layer("linear", 8, residual_quirk=False)
    x, g = make_inputs()
    with torch.no_grad():
        # pooling (1, 1): quirk output = 2x + delta, plain output = x + delta
        torch.testing.assert_close(run(quirk, x, g, (1, 1)) - run(plain, x, g, (1, 1)), x, rtol=1e-5, atol=1e-5)
