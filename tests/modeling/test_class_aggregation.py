"""Class aggregation (spec 2.6): permutation equivariance in the class order, and the layer
against a hand-written computation of the spec."""
import pytest
import torch
import torch.nn.functional as F

from cat_seg.modeling.class_aggregation import ClassAggregation

D, G, HEADS, T = 16, 8, 2, 5


def make_layer(attention_type, pad_len, seed=0, residual_quirk=True):
    torch.manual_seed(seed)
    layer = ClassAggregation(D, G, HEADS, attention_type=attention_type, pad_len=pad_len,
                             residual_quirk=residual_quirk).eval()
    with torch.no_grad():  # non-trivial padding tokens and norms
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    return layer


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
        out = layer(x, g, pooling)
        out_perm = layer(x[:, :, perm], g[:, perm], pooling)
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
        a, b = layer(x, g, (1, 1)), layer(x2, g, (1, 1))
    assert (a[:, :, 0] - b[:, :, 0]).abs().max() > 1e-4


def test_padding_tokens_matter():
    layer = make_layer("linear", 8)
    x, g = make_inputs()
    with torch.no_grad():
        a = layer(x, g, (1, 1))
        layer.padding_tokens.add_(torch.randn(layer.padding_tokens.shape))
        b = layer(x, g, (1, 1))
    assert (a - b).abs().max() > 1e-4


# --------------------------------------------------------------------------- reference
def ref_linear_attention(q, k, v):
    """Spec 2.6 formula per head: q,k,v [S, d]."""
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    s = v.shape[0]
    kv = phi_k.T @ (v / s)  # [d, dv]
    z = 1.0 / (phi_q @ phi_k.sum(0) + 1e-6)  # [S]
    return (phi_q @ kv) * z[:, None] * s


def ref_full_attention(q, k, v):
    return torch.softmax(q @ k.T / q.shape[-1] ** 0.5, dim=-1) @ v


def ref_layer(layer, x, g, pooling, attention):
    """Hand-written class block: pool, pad, per-location transformer over classes, upsample, quirk residual."""
    b, d, t, h, w = x.shape
    ph, pw = h // pooling[0], w // pooling[1]
    out = torch.empty_like(x)
    pad = layer.pad_len - t if layer.pad_len > t else 0
    for bi in range(b):
        pooled = torch.zeros(d, t, ph, pw)
        for i in range(ph):
            for j in range(pw):
                win = x[bi, :, :, i * pooling[0]:(i + 1) * pooling[0], j * pooling[1]:(j + 1) * pooling[1]]
                pooled[:, :, i, j] = win.mean(dim=(-1, -2))
        z_all = torch.zeros(d, t, ph, pw)
        guid = torch.cat([g[bi], layer.padding_guidance[0].expand(pad, G)]) if pad else g[bi]
        for i in range(ph):
            for j in range(pw):
                z = pooled[:, :, i, j].T  # [t, d]
                if pad:
                    z = torch.cat([z, layer.padding_tokens[0].expand(pad, d)])
                n1 = F.layer_norm(z, (d,), layer.norm1.weight, layer.norm1.bias)
                cat = torch.cat([n1, guid], dim=-1)
                q = cat @ layer.attn.q.weight.T + layer.attn.q.bias
                k = cat @ layer.attn.k.weight.T + layer.attn.k.bias
                v = n1 @ layer.attn.v.weight.T + layer.attn.v.bias
                hd = d // HEADS
                a = torch.cat([attention(q[:, s:s + hd], k[:, s:s + hd], v[:, s:s + hd]) for s in range(0, d, hd)], -1)
                z = z + a
                n2 = F.layer_norm(z, (d,), layer.norm2.weight, layer.norm2.bias)
                z = z + layer.mlp[2](torch.relu(layer.mlp[0](n2)))
                z_all[:, :, i, j] = z[:t].T
        if (ph, pw) != (h, w):
            z_all = F.interpolate(z_all.reshape(1, d * t, ph, pw), size=(h, w), mode="bilinear", align_corners=True)
            z_all = z_all.reshape(d, t, h, w)
        out[bi] = x[bi] + z_all  # quirk Q4: z already contains the pooled input
    return out


@pytest.mark.parametrize("pooling", [(1, 1), (2, 2)])
@pytest.mark.parametrize("attention_type,attention", [("linear", ref_linear_attention), ("full", ref_full_attention)])
def test_layer_matches_hand_written(attention_type, attention, pooling):
    layer = make_layer(attention_type, 8)
    x, g = make_inputs()
    with torch.no_grad():
        got = layer(x, g, pooling)
        want = ref_layer(layer, x, g, pooling, attention)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_residual_quirk_off_drops_pooled_input():
    quirk, plain = make_layer("linear", 8, residual_quirk=True), make_layer("linear", 8, residual_quirk=False)
    x, g = make_inputs()
    with torch.no_grad():
        # pooling (1, 1): quirk output = 2x + delta, plain output = x + delta
        torch.testing.assert_close(quirk(x, g, (1, 1)) - plain(x, g, (1, 1)), x, rtol=1e-5, atol=1e-5)
