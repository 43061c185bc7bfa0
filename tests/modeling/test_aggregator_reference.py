"""Spatial aggregation, decoder and the whole aggregator against the hand-written
computations of ``catseg_reference`` (``docs/architecture.md``)."""
import pytest
import torch
import torch.nn.functional as F

import catseg_reference as ref
from cat_seg.modeling.aggregator import Aggregator
from cat_seg.modeling.decoder import CostDecoder
from cat_seg.modeling.spatial_aggregation import SpatialAggregation

C, D, HEADS, WINDOW = 8, 16, 2, 4


def run_spatial(module, x, guidance):
    """The module on the reference layout ``x [B, D, T, H, W]``, guidance ``[B, G, H, W]``."""
    tokens = module(x.permute(0, 2, 3, 4, 1), module.normalize_guidance(guidance.permute(0, 2, 3, 1)))
    return tokens.permute(0, 4, 1, 2, 3)


def perturb_(module, seed=0, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module


@pytest.mark.parametrize("size", [(8, 8), (8, 12), (4, 4)])
def test_spatial_aggregation_matches_reference(size):
    torch.manual_seed(0)
    module = perturb_(SpatialAggregation(D, 8, HEADS, WINDOW)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, D, 3, *size, generator=g)
    guidance = torch.randn(2, 8, *size, generator=g)
    with torch.no_grad():
        got = run_spatial(module, x, guidance)
        want = ref.spatial(module, x, guidance, HEADS, WINDOW)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_shift_mask_is_applied():
    """Discriminating check: the reference without the -100 mask differs from the module."""
    torch.manual_seed(0)
    module = perturb_(SpatialAggregation(D, 8, HEADS, WINDOW)).eval()
    g = torch.Generator().manual_seed(2)
    x, guidance = torch.randn(1, D, 1, 8, 8, generator=g), torch.randn(1, 8, 8, 8, generator=g)
    with torch.no_grad():
        got = run_spatial(module, x, guidance)
        xb = x[0].permute(1, 2, 3, 0)
        gn = ref.layer_norm(guidance[0].permute(1, 2, 0), module.guidance_norm)
        xb = ref.swin_block(module.block_1, xb, gn, HEADS, WINDOW, 0)
        # shifted block, but pretend the map is one region (no mask): roll only
        rolled = ref.swin_block(module.block_2, xb, gn, HEADS, WINDOW, WINDOW // 2)
        unshifted = ref.swin_block(module.block_2, xb, gn, HEADS, WINDOW, 0)
    torch.testing.assert_close(got[0], rolled.permute(3, 0, 1, 2), rtol=1e-4, atol=1e-4)
    assert (got[0] - unshifted.permute(3, 0, 1, 2)).abs().max() > 1e-3


def test_decoder_matches_reference():
    torch.manual_seed(0)
    dec = perturb_(CostDecoder(D, (16, 8), (4, 2))).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, D, 3, 4, 4, generator=g)
    guidance = [torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 2, 16, 16, generator=g)]
    with torch.no_grad():
        got = dec(x.permute(0, 2, 3, 4, 1), guidance)
        want = ref.decoder(dec, x, guidance)
    assert got.shape == (2, 3, 16, 16)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_official_decoder_group_norms():
    dec = CostDecoder(128, (64, 32), (32, 16))
    assert [b.conv[1].num_groups for b in dec.blocks] == [4, 2]
    assert [b.conv[4].num_groups for b in dec.blocks] == [4, 2]
    assert [tuple(b.up.weight.shape) for b in dec.blocks] == [(128, 96, 2, 2), (64, 48, 2, 2)]


@pytest.mark.parametrize(
    "num_classes,pad_len,attention,pooling",
    [(5, 8, "linear", (2, 2)), (5, 8, "full", (2, 2)), (10, 8, "linear", (1, 1))],
    ids=["padded-linear-pool2", "padded-full", "pruned-linear"],
)
def test_aggregator_matches_reference(num_classes, pad_len, attention, pooling):
    torch.manual_seed(0)
    agg = Aggregator(
        text_dim=C, appearance_dim=C, num_templates=2, hidden_dim=D, text_guidance_proj_dim=8,
        appearance_guidance_proj_dim=8, decoder_dims=(8, 4), decoder_guidance_dims=(6, 4),
        decoder_guidance_proj_dims=(4, 2), num_layers=2, num_heads=HEADS, window=WINDOW,
        attention_type=attention, pad_len=pad_len,
    )
    perturb_(agg).eval()
    g = torch.Generator().manual_seed(4)
    img = torch.randn(2, C, 8, 8, generator=g)
    text = torch.randn(num_classes, 2, C, generator=g)
    dec = [torch.randn(2, 6, 16, 16, generator=g), torch.randn(2, 4, 32, 32, generator=g)]
    with torch.no_grad():
        got = agg(img, text, img, dec, pooling)
        want = ref.aggregator(agg, img, text, dec, pooling, HEADS, WINDOW, ref.ATTENTION[attention])
    assert got.shape == (2, num_classes, 32, 32)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_guidance_projections_of_zero_channels_mean_no_guidance():
    """TEXT_GUIDANCE_PROJ_DIM / APPEARANCE_GUIDANCE_PROJ_DIM 0 build no projection: the logits
    do not depend on the appearance guidance, and the model trains (gradients reach the cost
    embedding)."""
    torch.manual_seed(0)
    agg = Aggregator(
        text_dim=C, appearance_dim=C, num_templates=2, hidden_dim=D, text_guidance_proj_dim=0,
        appearance_guidance_proj_dim=0, decoder_dims=(8, 4), decoder_guidance_dims=(6, 4),
        decoder_guidance_proj_dims=(4, 2), num_layers=2, num_heads=HEADS, window=WINDOW, pad_len=0,
    )
    assert agg.appearance_guidance_proj is None and agg.text_guidance_proj is None
    g = torch.Generator().manual_seed(4)
    img = torch.randn(2, C, 8, 8, generator=g)
    text = torch.randn(5, 2, C, generator=g)
    dec = [torch.randn(2, 6, 16, 16, generator=g), torch.randn(2, 4, 32, 32, generator=g)]
    logits = agg(img, text, img, dec, (1, 1))
    torch.testing.assert_close(agg(img, text, torch.randn(2, C, 8, 8, generator=g), dec, (1, 1)), logits)
    assert logits.shape == (2, 5, 32, 32)
    logits.square().mean().backward()
    assert agg.cost_embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logit_head_equals_fp32_convolution(dtype):
    """The head's matrix-product form is the fp32 3x3 convolution (zero padding) of its input."""
    from cat_seg.modeling.decoder import single_output_conv3x3

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 7, 5, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(1, 8, 3, 3, generator=g), torch.randn(1, generator=g)
    out = single_output_conv3x3(x, weight, bias)
    assert out.dtype == torch.float32 and out.shape == (3, 1, 7, 5)
    torch.testing.assert_close(out, F.conv2d(x.float(), weight, bias, padding=1), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 whatever the autocast context
        torch.testing.assert_close(single_output_conv3x3(x, weight, bias), out, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [None, 2 * 8 * 7 * 5])  # default; two maps per chunk (uneven: 3 maps)
def test_logit_head_gradients_equal_those_of_the_convolution(dtype, chunk, monkeypatch):
    """The head's own backward gives the gradients autograd gives for the fp32 convolution
    (of the input in its dtype, of the weight and the bias in fp32), whatever the chunking."""
    from cat_seg.modeling import decoder

    if chunk is not None:
        monkeypatch.setattr(decoder, "_HEAD_BACKWARD_CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 7, 5, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(1, 8, 3, 3, generator=g), torch.randn(1, generator=g)
    grad = torch.randn(3, 1, 7, 5, generator=g)
    x, weight, bias = (t.requires_grad_() for t in (x, weight, bias))
    got = torch.autograd.grad(decoder._SingleOutputConv3x3.apply(x, weight, bias), (x, weight, bias), grad)
    x32 = x.detach().float().requires_grad_()
    want = torch.autograd.grad(F.conv2d(x32, weight, bias, padding=1), (x32, weight, bias), grad)
    assert got[0].dtype == dtype and got[0].is_contiguous(memory_format=torch.channels_last)
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # the input's gradient is rounded to bf16 once
    torch.testing.assert_close(got[0].float(), want[0], rtol=tol, atol=tol)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-5)


def test_logit_head_backward_holds_no_fp32_copy_of_the_features(monkeypatch):
    """bf16 features [16, 32, 12, 12] (fp32 copy: 295 KB): the backward makes the bf16
    gradient (147 KB) and, per chunk of 2 maps, an fp32 copy of the chunk, its nine shifted
    output gradients and its fp32 gradient (84 KB); never all the features in fp32."""
    from cat_seg.cli.work_count import WorkCounter
    from cat_seg.modeling import decoder

    n, c, h, w = 16, 32, 12, 12
    monkeypatch.setattr(decoder, "_HEAD_BACKWARD_CHUNK", 2 * c * h * w)
    x = torch.randn(n, c, h, w).to(torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight, bias = torch.randn(1, c, 3, 3, requires_grad=True), torch.randn(1, requires_grad=True)
    out = decoder._SingleOutputConv3x3.apply(x, weight, bias)
    grad = torch.randn_like(out)
    with WorkCounter() as counter:
        out.backward(grad)
    extra = counter.memory()["peak_bytes"] - counter.memory()["before_step_bytes"]
    fp32_features = n * c * h * w * 4
    grad_x = n * c * h * w * 2
    per_chunk = 2 * h * w * (c * 4 * 2 + 9 * 4)  # fp32 chunk + its fp32 gradient + nine shifted maps
    assert grad_x < extra <= grad_x + per_chunk + 4 * n * h * w + 4096  # + the fp32 output gradient, small ones
    assert extra < grad_x + fp32_features / 2


def test_inputs_of_the_wrong_shape_are_named():
    """Standalone use: shapes that do not fit give one ValueError saying what was expected (they
    were torch's IndexError, an einsum error or a conv channel error, or, for fewer decoder
    guidance entries than up-blocks, a smaller output without a word)."""
    from cat_seg.modeling import cosine_cost_volume

    agg = Aggregator(
        text_dim=C, appearance_dim=C, num_templates=2, hidden_dim=D, text_guidance_proj_dim=8,
        appearance_guidance_proj_dim=8, decoder_dims=(8, 4), decoder_guidance_dims=(6, 4),
        decoder_guidance_proj_dims=(4, 2), num_layers=1, num_heads=HEADS, window=WINDOW,
    ).eval()
    img = torch.randn(2, C, 8, 8)
    dec = [torch.randn(2, 6, 16, 16), torch.randn(2, 4, 32, 32)]
    with pytest.raises(ValueError, match=r"expected \[B, C, H, W\] and \[T, P, C\] or \[B, T, P, C\]"):
        cosine_cost_volume(img, torch.randn(5, C))
    with pytest.raises(ValueError, match=r"text embeddings \(3, 5, 2, 8\)"):
        cosine_cost_volume(img, torch.randn(3, 5, 2, C))
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"hold 3 prompt templates .* built for num_templates=2"):
            agg(img, torch.randn(5, 3, C), img, dec)
        with pytest.raises(ValueError, match="1 decoder guidance entries for 2 up-blocks"):
            agg(img, torch.randn(5, 2, C), img, dec[:1])
        with pytest.raises(ValueError, match="1 guidance entries for 2 up-blocks"):
            CostDecoder(D, (8, 4), (4, 2))(torch.randn(2, 5, 8, 8, D), [None])
