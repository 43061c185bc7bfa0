"""Dense CLIP image encode (``docs/architecture.md``, "Backbone") against hand-written computations."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cat_seg.modeling.backbone.clip_vit import (
    CLIPVisionBackbone,
    default_guidance_blocks,
    interpolate_positional_embedding,
)

REPO = Path(__file__).resolve().parents[2]
CLIP_JSONS = {v: REPO / f"configs/clip_models/{name}.json" for v, name in (("b", "tiny-vit-b16"), ("l", "tiny-vit-l14"))}


# --------------------------------------------------------------------------- reference code
def layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def mlp(block, x):
    h = quick_gelu(x @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias)
    return h @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias


def packed_qkv(block, x):
    """``ln_1(x) @ [Wq; Wk; Wv]^T + in_proj_bias`` split in three ``[N, L, W]`` chunks."""
    attn = block.attn
    weight = torch.cat([attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight], dim=0)
    y = layer_norm(x, block.ln_1) @ weight.T + attn.in_proj_bias
    return y.chunk(3, dim=-1)


def out_proj(block, x):
    return x @ block.attn.out_proj.weight.T + block.attn.out_proj.bias


def ref_standard_block(block, x, heads):
    """Ordinary pre-LN residual attention block on ``[N, L, W]``."""
    n, length, width = x.shape
    d = width // heads
    q, k, v = (t.reshape(n, length, heads, d).permute(0, 2, 1, 3) for t in packed_qkv(block, x))
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    o = (attn @ v).permute(0, 2, 1, 3).reshape(n, length, width)
    x = x + out_proj(block, o)
    return x + mlp(block, layer_norm(x, block.ln_2))


def ref_dense_last_block(block, x):
    """Dense last block: v-path only, out_proj on v, residual = class-token row of the input, MLP."""
    _q, _k, v = packed_qkv(block, x)
    v = out_proj(block, v)
    v = v + x[:, :1]
    return v + mlp(block, layer_norm(v, block.ln_2))


def ref_pos_embed(table, grid):
    side = int(round(math.sqrt(table.shape[0] - 1)))
    if side * side == grid[0] * grid[1] and side == grid[0]:
        return table
    patches = table[1:].reshape(side, side, -1).permute(2, 0, 1)[None]
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    return torch.cat([table[:1], patches[0].permute(1, 2, 0).reshape(grid[0] * grid[1], -1)])


def ref_dense_encode(clip, images, heads, guidance_blocks):
    visual = clip.visual
    patch = visual.conv1.kernel_size[0]
    x = F.conv2d(images, visual.conv1.weight, stride=patch)  # no bias
    b, width, h, w = x.shape
    tokens = x.reshape(b, width, h * w).permute(0, 2, 1)  # row-major
    tokens = torch.cat([visual.class_embedding.expand(b, 1, width), tokens], dim=1)
    tokens = tokens + ref_pos_embed(visual.positional_embedding, (h, w))
    tokens = layer_norm(tokens, visual.ln_pre)
    blocks = visual.transformer.resblocks
    guidance = {}
    for i, block in enumerate(blocks[:-1]):
        tokens = ref_standard_block(block, tokens, heads)
        guidance[i] = tokens
    tokens = ref_dense_last_block(blocks[-1], tokens)
    feats = layer_norm(tokens, visual.ln_post) @ visual.proj

    def to_map(t):
        return t[:, 1:].reshape(b, h, w, -1).permute(0, 3, 1, 2)

    return to_map(feats), [to_map(guidance[i]) for i in guidance_blocks]


def perturb_(module, seed=0, scale=0.05):
    """Add noise to every parameter (non-trivial LN affine, non-zero biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", params=["b", "l"])
def backbone(request, tiny_model):
    model = tiny_model(request.param)
    perturb_(model.backbone.clip, seed=1)
    with open(CLIP_JSONS[request.param]) as f:
        vision = json.load(f)["vision_cfg"]
    heads = vision["width"] // vision["head_width"]
    return model.backbone, heads, vision


# --------------------------------------------------------------------------- tests
def test_mlp_activation_is_quick_gelu(backbone):
    bb, _, _ = backbone
    act = bb.clip.visual.transformer.resblocks[0].mlp[1]
    x = torch.linspace(-4, 4, 50)
    torch.testing.assert_close(act(x), quick_gelu(x))


def test_dense_last_block_matches_hand_written(backbone):
    bb, heads, _ = backbone
    block = bb.clip.visual.transformer.resblocks[-1]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1 + 8 * 8, bb.width, generator=g)
    with torch.no_grad():
        got = CLIPVisionBackbone.dense_last_block(block, x)
        want = ref_dense_last_block(block, x)
        # the reference is discriminating: ordinary attention or a per-token residual differ
        standard = ref_standard_block(block, x, heads)
        per_token = x + out_proj(block, packed_qkv(block, x)[2])
        per_token = per_token + mlp(block, layer_norm(per_token, block.ln_2))
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - standard).abs().max() > 1e-2
    assert (got - per_token).abs().max() > 1e-2


def test_dense_last_block_ignores_q_and_k(backbone):
    """q/k weights of the last block do not influence the output (their gradient is zero)."""
    bb, _, _ = backbone
    block = bb.clip.visual.transformer.resblocks[-1]
    x = torch.randn(1, 1 + 16, bb.width, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = CLIPVisionBackbone.dense_last_block(block, x)
        saved = block.attn.q_proj_weight.clone(), block.attn.k_proj_weight.clone()
        block.attn.q_proj_weight.mul_(3.0)
        block.attn.k_proj_weight.add_(1.0)
        after = CLIPVisionBackbone.dense_last_block(block, x)
        block.attn.q_proj_weight.copy_(saved[0])
        block.attn.k_proj_weight.copy_(saved[1])
    torch.testing.assert_close(before, after, rtol=0, atol=0)


@pytest.mark.parametrize("size", [(128, 128), (128, 96)])
def test_dense_encode_matches_spec_pipeline(backbone, size):
    """Whole dense encode  incl. pos-embed interpolation and guidance features."""
    bb, heads, vision = backbone
    patch = vision["patch_size"]
    size = tuple(s // 16 * patch for s in size)  # same grid for both patch sizes
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = bb(images)
        dense, guidance = ref_dense_encode(bb.clip, images, heads, bb.guidance_blocks)
    h, w = size[0] // patch, size[1] // patch
    assert out["dense_embeddings"].shape == (2, bb.embed_dim, h, w)
    torch.testing.assert_close(out["dense_embeddings"], dense, rtol=1e-4, atol=1e-4)
    assert set(out) == {"dense_embeddings", *(f"block{i}" for i in bb.guidance_blocks)}
    assert len(bb.guidance_blocks) == 2
    for i, got, want in zip(bb.guidance_blocks, [out[f"block{i}"] for i in bb.guidance_blocks], guidance):
        assert got.shape == (2, bb.width, h, w)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out[f"block{i}"], got, rtol=0, atol=0)
    # the stored table is never resized
    assert bb.clip.visual.positional_embedding.shape[0] == 1 + (vision["image_size"] // patch) ** 2


def test_default_guidance_blocks():
    assert default_guidance_blocks(12) == [3, 7]  # ViT-B
    assert default_guidance_blocks(24) == [7, 15]  # ViT-L
    for depth in (4, 6):
        blocks = default_guidance_blocks(depth)
        assert all(0 <= b < depth - 1 for b in blocks)


# --------------------------------------------------------------------------- pos-embed interpolation
def _table(side, width, seed=0):
    return torch.randn(1 + side * side, width, generator=torch.Generator().manual_seed(seed))


def test_pos_embed_matches_direct_interpolate():
    table = _table(4, 10)
    got = interpolate_positional_embedding(table, (8, 6))
    direct = F.interpolate(
        table[1:].reshape(1, 4, 4, 10).permute(0, 3, 1, 2), size=(8, 6), mode="bicubic", align_corners=False
    )
    assert got.shape == (1 + 48, 10)
    torch.testing.assert_close(got[0], table[0], rtol=0, atol=0)  # class row unchanged
    # the two one-axis passes are the 2-D call's arithmetic: equal bit for bit
    torch.testing.assert_close(got[1:], direct[0].permute(1, 2, 0).reshape(48, 10), rtol=0, atol=0)
    # not the bilinear / align_corners=True variants
    for kwargs in ({"mode": "bilinear", "align_corners": False}, {"mode": "bicubic", "align_corners": True}):
        other = F.interpolate(table[1:].reshape(1, 4, 4, 10).permute(0, 3, 1, 2), size=(8, 6), **kwargs)
        assert (got[1:] - other[0].permute(1, 2, 0).reshape(48, 10)).abs().max() > 1e-3


@pytest.mark.parametrize("side, grid, width", [(14, (24, 24), 768), (16, (24, 24), 1024), (7, (9, 5), 3)])
def test_pos_embed_equals_2d_bicubic_bit_for_bit(side, grid, width):
    """ViT-B/16 and ViT-L/14 table sizes (14 or 16 -> 24 per side) and a non-square grid."""
    table = _table(side, width, seed=side)
    direct = F.interpolate(table[1:].reshape(1, side, side, width).permute(0, 3, 1, 2), size=grid,
                           mode="bicubic", align_corners=False)[0].permute(1, 2, 0).reshape(-1, width)
    assert torch.equal(interpolate_positional_embedding(table, grid)[1:], direct)


def test_pos_embed_constant_table_stays_constant():
    table = torch.full((1 + 14 * 14, 6), 0.7)
    table[0] = -3.0
    got = interpolate_positional_embedding(table, (24, 24))
    assert got.shape == (1 + 576, 6)
    assert got[0].eq(-3.0).all()
    torch.testing.assert_close(got[1:], torch.full((576, 6), 0.7), rtol=0, atol=1e-6)


def test_pos_embed_row_major_layout():
    """Channel 0 encodes the row, channel 1 the column of the stored grid: after resizing to
    a non-square grid channel 0 varies only along rows and channel 1 only along columns."""
    side = 5
    rows = torch.arange(side, dtype=torch.float32)[:, None].expand(side, side)
    cols = torch.arange(side, dtype=torch.float32)[None, :].expand(side, side)
    table = torch.cat([torch.zeros(1, 2), torch.stack([rows, cols], -1).reshape(-1, 2)])
    got = interpolate_positional_embedding(table, (9, 7))[1:].reshape(9, 7, 2)
    r, c = got[..., 0], got[..., 1]
    torch.testing.assert_close(r, r[:, :1].expand(9, 7), rtol=0, atol=1e-5)
    torch.testing.assert_close(c, c[:1, :].expand(9, 7), rtol=0, atol=1e-5)
    assert (r[1:, 0] - r[:-1, 0] >= -1e-5).all() and r[-1, 0] - r[0, 0] > 3
    assert (c[0, 1:] - c[0, :-1] >= -1e-5).all() and c[0, -1] - c[0, 0] > 3


def test_pos_embed_identity_when_sizes_match(backbone):
    table = _table(6, 4)
    assert torch.equal(interpolate_positional_embedding(table, (6, 6)), table)
    bb, _, vision = backbone
    native = vision["image_size"] // vision["patch_size"]
    torch.testing.assert_close(
        bb.positional_embedding((native, native)), bb.clip.visual.positional_embedding, rtol=0, atol=0
    )


# --------------------------------------------------------------------------- split q/k/v attention
@pytest.mark.parametrize("variant", ["b", "l"])
def test_split_attention_equals_packed_open_clip(variant):
    """The split-q/k/v CLIP computes exactly what open_clip's packed nn.MultiheadAttention does
    (text tower with its causal mask, and the ordinary image forward)."""
    import copy

    import open_clip

    from cat_seg.modeling.clip.attention import SplitQKVAttention, replace_multihead_attention

    with open(CLIP_JSONS[variant]) as f:
        cfg = json.load(f)
    quick_gelu = cfg.pop("quick_gelu")
    torch.manual_seed(0)
    packed = open_clip.CLIP(**cfg, quick_gelu=quick_gelu).eval()
    perturb_(packed, seed=2)
    split = copy.deepcopy(packed)
    n = replace_multihead_attention(split)
    assert n == cfg["vision_cfg"]["layers"] + cfg["text_cfg"]["layers"]
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in split.modules())
    attn = split.transformer.resblocks[0].attn
    assert isinstance(attn, SplitQKVAttention) and attn.in_proj_bias.shape == (3 * cfg["text_cfg"]["width"],)
    w = cfg["text_cfg"]["width"]
    packed_w = packed.transformer.resblocks[0].attn.in_proj_weight
    torch.testing.assert_close(attn.v_proj_weight, packed_w[2 * w:], rtol=0, atol=0)
    tokens = open_clip.tokenize(["a photo of a cat", "a dog"])
    image = torch.randn(1, 3, cfg["vision_cfg"]["image_size"], cfg["vision_cfg"]["image_size"])
    with torch.no_grad():
        torch.testing.assert_close(split.encode_text(tokens), packed.encode_text(tokens), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(split.encode_image(image), packed.encode_image(image), rtol=1e-5, atol=1e-5)


def test_dense_last_block_keeps_the_layer_scales(tmp_path):
    """A CLIP with layer scale (open_clip's ``ls_init_value``, e.g. ViT-M-16-alt): the dense last
    block scales its value branch by ``ls_1`` and its MLP branch by ``ls_2``, as the block's own
    forward does."""
    from cat_seg.modeling.clip.builder import build_clip_model

    config = json.loads(CLIP_JSONS["b"].read_text())
    config["vision_cfg"]["ls_init_value"] = 0.3
    path = tmp_path / "tiny-layer-scale.json"
    path.write_text(json.dumps(config))
    clip = build_clip_model(str(path), "none")
    perturb_(clip, seed=4)
    block = clip.visual.transformer.resblocks[-1]
    gamma_1, gamma_2 = block.ls_1.gamma, block.ls_2.gamma  # perturbed: not 0.3 everywhere
    x = torch.randn(2, 1 + 4 * 4, config["vision_cfg"]["width"], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = CLIPVisionBackbone.dense_last_block(block, x)
        v = gamma_1 * out_proj(block, packed_qkv(block, x)[2]) + x[:, :1]
        want = v + gamma_2 * mlp(block, layer_norm(v, block.ln_2))
        unscaled = ref_dense_last_block(block, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - unscaled).abs().max() > 1e-2


def test_a_failed_clip_download_is_one_line_naming_what_to_do(monkeypatch):
    """The hub reachable but the download refused (a mirror without the file, HTTP 5xx, a
    dropped connection): open_clip's FileNotFoundError ended the demo and train_net in a
    traceback; it is a CLIPLoadError, which the commands print as one line."""
    from cat_seg.modeling.clip import builder

    monkeypatch.setattr(builder, "clip_weights_source",
                        lambda arch, weights: ("pretrained", "ViT-B-16/openai", {"hf_hub": "timm/clip/"}))

    def refused(pretrained_cfg):
        raise OSError("HTTP 503 Service Unavailable\n  (retry later)")

    monkeypatch.setattr(builder.open_clip, "download_pretrained", refused)
    with pytest.raises(builder.CLIPLoadError) as info:
        builder.build_clip_model(str(CLIP_JSONS["b"]), "openai")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("CLIP weights ViT-B-16/openai (MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS) cannot be downloaded "
                              "(OSError: HTTP 503 Service Unavailable (retry later)); fetch them once where the "
                              "download works: python -c \"import open_clip; open_clip.download_pretrained("
                              "open_clip.get_pretrained_cfg('ViT-B-16', 'openai'))\", or pass a local CLIP file")


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", ["none", "bool", "float", "padding", "bool+padding", "per-head", "causal",
                                   "cross"])
def test_split_qkv_attention_matches_multihead_attention(batch_first, masks):
    """SplitQKVAttention is a drop-in nn.MultiheadAttention: the same outputs for the same
    arguments, masks with torch's meaning (boolean True = not attended, float = added)."""
    from cat_seg.modeling.clip.attention import SplitQKVAttention

    torch.manual_seed(0)
    n, length, width, heads = 2, 5, 16, 4
    mha = torch.nn.MultiheadAttention(width, heads, batch_first=batch_first).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
    split = SplitQKVAttention.from_multihead_attention(mha).eval()
    shape = (n, length, width) if batch_first else (length, n, width)
    x = torch.randn(shape)
    source = torch.randn((n, length + 2, width) if batch_first else (length + 2, n, width))
    kv_length = length + 2 if masks == "cross" else length
    blocked = torch.rand(length, kv_length) < 0.3
    blocked[:, 0] = False  # every query attends somewhere (no all -inf row)
    padding = torch.zeros(n, kv_length, dtype=torch.bool)
    padding[1, -2:] = True
    kwargs = {
        "none": {},
        "bool": {"attn_mask": blocked},
        "float": {"attn_mask": torch.randn(length, kv_length)},
        "padding": {"key_padding_mask": padding},
        "bool+padding": {"attn_mask": blocked, "key_padding_mask": padding},
        "per-head": {"attn_mask": torch.randn(n * heads, length, kv_length)},
        "causal": {"attn_mask": torch.nn.Transformer.generate_square_subsequent_mask(length), "is_causal": True},
        "cross": {"key_padding_mask": padding},
    }[masks]
    args = (x, source, source) if masks == "cross" else (x, x, x)
    with torch.no_grad():
        expected, _ = mha(*args, need_weights=False, **kwargs)
        got, weights = split(*args, need_weights=False, **kwargs)
    assert weights is None
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_split_qkv_attention_refuses_to_return_weights():
    from cat_seg.modeling.clip.attention import SplitQKVAttention

    with pytest.raises(ValueError, match="does not return attention weights"):
        SplitQKVAttention(8, 2)(torch.randn(1, 3, 8), need_weights=True)


def _scripted_archive(state: dict, path) -> None:
    """A TorchScript archive whose state dict is ``state`` (as OpenAI's CLIP release is one)."""
    class Holder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    for key, value in state.items():
        *parents, name = key.split(".")
        module = root
        for parent in parents:
            if not hasattr(module, parent):
                module.add_module(parent, Holder())
            module = getattr(module, parent)
        module.register_parameter(name, torch.nn.Parameter(value.clone(), requires_grad=False))
    torch.jit.save(torch.jit.script(root), str(path))


def test_clip_checkpoint_formats_read_the_same(tmp_path):
    """CLIP_WEIGHTS files: torch.save (zip and legacy), a TorchScript archive, safetensors, and a
    wrapped state dict with DDP's ``module.`` prefix all give the same tensors."""
    from safetensors.torch import save_file

    from cat_seg.modeling.clip.builder import read_clip_state_dict

    torch.manual_seed(0)
    state = {"visual.proj": torch.randn(4, 3), "transformer.resblocks.0.attn.in_proj_bias": torch.randn(6),
             "logit_scale": torch.tensor(2.0)}
    files = {name: tmp_path / f"{name}.pth" for name in ("zip", "legacy", "scripted", "wrapped")}
    torch.save(state, files["zip"])
    torch.save(state, files["legacy"], _use_new_zipfile_serialization=False)
    _scripted_archive(state, files["scripted"])
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, files["wrapped"])
    files["safetensors"] = tmp_path / "w.safetensors"
    save_file(state, str(files["safetensors"]))
    for name, path in files.items():
        got = read_clip_state_dict(str(path))
        assert got.keys() == state.keys(), name
        for key in state:
            torch.testing.assert_close(got[key], state[key], rtol=0, atol=0, msg=f"{name}: {key}")


def test_clip_weights_that_do_not_fit_are_named_in_the_checkpoints_words():
    """A CLIP state dict with a key missing, one too many and one of another shape: one error
    naming each, in the words a CAT-Seg checkpoint's mismatch uses (one wording for both)."""
    from cat_seg.modeling.clip.builder import CLIPLoadError, build_clip_model, fitted_clip_state

    model = build_clip_model("configs/clip_models/tiny-vit-b16.json", weights=None)
    state = dict(model.state_dict())
    state.pop("ln_final.bias")
    state["extra.weight"] = torch.zeros(2)
    state["ln_final.weight"] = torch.zeros(3)
    with pytest.raises(CLIPLoadError) as info:
        fitted_clip_state(model, state, "clip.pt")
    width = model.ln_final.weight.shape[0]
    assert str(info.value) == (
        "CLIP weights clip.pt do not fit the model: 1 missing key(s): ln_final.bias; 1 unexpected key(s): "
        f"extra.weight; 1 shape mismatch(es): ln_final.weight [3] vs model [{width}]")
