"""Plain-PyTorch reference of the OFFICIAL CAT-Seg computation, on official-layout weights.

Written from the official code's computation (see ``docs/architecture.md``) and independent of ``cat_seg.modeling``: every step is spelled out with
``F.linear`` / ``F.conv2d`` on the tensors of an official state dict (keys
``sem_seg_head.predictor.clip_model.*``, ``sem_seg_head.predictor.transformer.*``,
``upsample1/2.*``), following the official code's order of operations (sequence-first CLIP
with split q/k/v weights, guidance repeated over classes, explicit window partition and
``torch.roll``, padding tokens, top-k truncation with ``sorted=False``, unfold/fold
sliding window). It is the yardstick both the checkpoint tests and the performance work
compare against; keep it slow and obvious.

Public API:

* :func:`make_official_state_dict` / :func:`official_key_shapes`: random weights with
  exactly the official key names and shapes, ViT-B (``vit-b``), ViT-L (``vit-l``)
  or the tiny test model (``tiny-b``: ``configs/quick_schedules/tiny_vitb_cpu.yaml`` +
  ``configs/clip_models/tiny-vit-b16.json``).
* :data:`REFERENCE_CONFIGS` (:class:`ReferenceConfig`): hyper-parameters not stored in
  the weights (heads, resolutions, hooked blocks, window, pad_len, sliding geometry).
* :func:`clip_dense_encode`, :func:`clip_encode_text`, :func:`reference_text_embeddings`,
  :func:`aggregator_forward`, :func:`reference_logits`, :func:`reference_inference_probs`,
  :func:`reference_sliding_window_probs`.

Only deviation from the official code: GroupNorm groups are ``max(C // 16, 1)`` (the
official ``C // 16`` is 0 for the 8-channel tiny decoder, which the official code cannot
build; identical for every released configuration).
"""
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

CLIP = "sem_seg_head.predictor.clip_model."
AGG = "sem_seg_head.predictor.transformer."

SINGLE_TEMPLATE = "A photo of a {} in the scene"
CLIP_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_PIXEL_STD = (68.5005327, 66.6321579, 70.3231630)


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ReferenceConfig:
    """Hyper-parameters of the official computation that the weights do not carry.

    Attributes:
        clip_resolution: side of the square image fed to CLIP (384 ViT-B, 336 ViT-L).
        patch_size: CLIP patch size.
        visual_heads, text_heads: attention heads of the two CLIP towers.
        hooked_blocks: visual blocks whose outputs feed ``upsample1`` / ``upsample2``.
        feature_resolution: CLIP patch grid ``(h, w)`` (24x24).
        num_heads: aggregator heads (spatial and class attention).
        window: Swin window size.
        pad_len: class-sequence length of the class attention (256).
        attention_type: ``linear`` (released) or ``full``.
        size_divisibility: model-side padding in non-sliding inference (32).
        sliding_kernel, sliding_overlap, sliding_out_res: sliding-window geometry (384, 0.333, 640).
    """

    clip_resolution: int
    patch_size: int
    visual_heads: int
    text_heads: int
    hooked_blocks: Tuple[int, int]
    feature_resolution: Tuple[int, int]
    num_heads: int
    window: int
    pad_len: int
    attention_type: str = "linear"
    size_divisibility: int = 32
    sliding_kernel: int = 384
    sliding_overlap: float = 0.333
    sliding_out_res: int = 640


REFERENCE_CONFIGS: Dict[str, ReferenceConfig] = {
    "vit-b": ReferenceConfig(384, 16, 12, 8, (3, 7), (24, 24), 4, 12, 256),
    "vit-l": ReferenceConfig(336, 14, 16, 12, (7, 15), (24, 24), 4, 12, 256),
    # tiny_vitb_cpu.yaml: 4-block CLIP (width 48, head width 16), 8x8 grid, window 4,
    # PAD_LEN 32, 2 heads; guidance blocks derived as in our model (0 and 1); sliding crop
    # 128 on a 213 canvas (stride int(128 * 0.667) = 85, 2x2 crops).
    "tiny-b": ReferenceConfig(128, 16, 3, 2, (0, 1), (8, 8), 2, 4, 32, sliding_kernel=128, sliding_out_res=213),
}

# Architecture sizes for the state-dict generator (official models; tiny from the configs).
_ARCHS = {
    "vit-b": dict(embed=512, text_width=512, text_layers=12, vocab=49408, context=77,
                  vis_width=768, vis_layers=12, patch=16, pos_rows=197, hidden=128, layers=2,
                  text_proj=128, app_proj=128, decoder_dims=(64, 32), dec_guidance=(256, 128),
                  dec_guidance_proj=(32, 16), window=12, grid=24),
    "vit-l": dict(embed=768, text_width=768, text_layers=12, vocab=49408, context=77,
                  vis_width=1024, vis_layers=24, patch=14, pos_rows=577, hidden=128, layers=2,
                  text_proj=128, app_proj=128, decoder_dims=(64, 32), dec_guidance=(256, 128),
                  dec_guidance_proj=(32, 16), window=12, grid=24),
    "tiny-b": dict(embed=32, text_width=32, text_layers=2, vocab=49408, context=77,
                   vis_width=48, vis_layers=4, patch=16, pos_rows=17, hidden=32, layers=2,
                   text_proj=16, app_proj=16, decoder_dims=(16, 8), dec_guidance=(16, 8),
                   dec_guidance_proj=(8, 4), window=4, grid=8),
}


# ----------------------------------------------------------------------------- generator
def _clip_block_shapes(prefix: str, width: int) -> List[Tuple[str, Tuple[int, ...]]]:
    return [
        (prefix + "attn.q_proj_weight", (width, width)),
        (prefix + "attn.k_proj_weight", (width, width)),
        (prefix + "attn.v_proj_weight", (width, width)),
        (prefix + "attn.in_proj_bias", (3 * width,)),
        (prefix + "attn.out_proj.weight", (width, width)),
        (prefix + "attn.out_proj.bias", (width,)),
        (prefix + "ln_1.weight", (width,)),
        (prefix + "ln_1.bias", (width,)),
        (prefix + "mlp.c_fc.weight", (4 * width, width)),
        (prefix + "mlp.c_fc.bias", (4 * width,)),
        (prefix + "mlp.c_proj.weight", (width, 4 * width)),
        (prefix + "mlp.c_proj.bias", (width,)),
        (prefix + "ln_2.weight", (width,)),
        (prefix + "ln_2.bias", (width,)),
    ]


def official_key_shapes(arch: str = "vit-b") -> "OrderedDict[str, Tuple[int, ...]]":
    """Official key -> shape for ``arch`` (``vit-b``, ``vit-l``, ``tiny-b``).

    Includes the ``block_2.attn_mask`` buffers (stored by the official Swin blocks).
    """
    a = _ARCHS[arch]
    shapes: "OrderedDict[str, Tuple[int, ...]]" = OrderedDict()
    c, tw, vw, d = a["embed"], a["text_width"], a["vis_width"], a["hidden"]
    # --- CLIP text side
    shapes[CLIP + "positional_embedding"] = (a["context"], tw)
    shapes[CLIP + "text_projection"] = (tw, c)
    shapes[CLIP + "logit_scale"] = ()
    # --- CLIP visual side
    shapes[CLIP + "visual.class_embedding"] = (vw,)
    shapes[CLIP + "visual.positional_embedding"] = (a["pos_rows"], vw)
    shapes[CLIP + "visual.proj"] = (vw, c)
    shapes[CLIP + "visual.conv1.weight"] = (vw, 3, a["patch"], a["patch"])
    shapes[CLIP + "visual.ln_pre.weight"] = (vw,)
    shapes[CLIP + "visual.ln_pre.bias"] = (vw,)
    for i in range(a["vis_layers"]):
        shapes.update(_clip_block_shapes(f"{CLIP}visual.transformer.resblocks.{i}.", vw))
    shapes[CLIP + "visual.ln_post.weight"] = (vw,)
    shapes[CLIP + "visual.ln_post.bias"] = (vw,)
    for i in range(a["text_layers"]):
        shapes.update(_clip_block_shapes(f"{CLIP}transformer.resblocks.{i}.", tw))
    shapes[CLIP + "token_embedding.weight"] = (a["vocab"], tw)
    shapes[CLIP + "ln_final.weight"] = (tw,)
    shapes[CLIP + "ln_final.bias"] = (tw,)
    # --- aggregator
    g_app, g_text, win = a["app_proj"], a["text_proj"], a["window"]
    n_windows = (a["grid"] // win) ** 2
    for layer in range(a["layers"]):
        p = f"{AGG}layers.{layer}."
        for block in ("block_1", "block_2"):
            b = f"{p}swin_block.{block}."
            shapes[b + "norm1.weight"] = (d,)
            shapes[b + "norm1.bias"] = (d,)
            if block == "block_2":
                shapes[b + "attn_mask"] = (n_windows, win * win, win * win)
            shapes[b + "attn.q.weight"] = (d, d + g_app)
            shapes[b + "attn.q.bias"] = (d,)
            shapes[b + "attn.k.weight"] = (d, d + g_app)
            shapes[b + "attn.k.bias"] = (d,)
            shapes[b + "attn.v.weight"] = (d, d)
            shapes[b + "attn.v.bias"] = (d,)
            shapes[b + "attn.proj.weight"] = (d, d)
            shapes[b + "attn.proj.bias"] = (d,)
            shapes[b + "norm2.weight"] = (d,)
            shapes[b + "norm2.bias"] = (d,)
            shapes[b + "mlp.fc1.weight"] = (4 * d, d)
            shapes[b + "mlp.fc1.bias"] = (4 * d,)
            shapes[b + "mlp.fc2.weight"] = (d, 4 * d)
            shapes[b + "mlp.fc2.bias"] = (d,)
        shapes[p + "swin_block.guidance_norm.weight"] = (g_app,)
        shapes[p + "swin_block.guidance_norm.bias"] = (g_app,)
        shapes[p + "attention.padding_tokens"] = (1, 1, d)
        shapes[p + "attention.padding_guidance"] = (1, 1, g_text)
        shapes[p + "attention.norm1.weight"] = (d,)
        shapes[p + "attention.norm1.bias"] = (d,)
        shapes[p + "attention.attention.q.weight"] = (d, d + g_text)
        shapes[p + "attention.attention.q.bias"] = (d,)
        shapes[p + "attention.attention.k.weight"] = (d, d + g_text)
        shapes[p + "attention.attention.k.bias"] = (d,)
        shapes[p + "attention.attention.v.weight"] = (d, d)
        shapes[p + "attention.attention.v.bias"] = (d,)
        shapes[p + "attention.MLP.0.weight"] = (4 * d, d)
        shapes[p + "attention.MLP.0.bias"] = (4 * d,)
        shapes[p + "attention.MLP.2.weight"] = (d, 4 * d)
        shapes[p + "attention.MLP.2.bias"] = (d,)
        shapes[p + "attention.norm2.weight"] = (d,)
        shapes[p + "attention.norm2.bias"] = (d,)
    shapes[AGG + "conv1.weight"] = (d, 1, 7, 7)
    shapes[AGG + "conv1.bias"] = (d,)
    shapes[AGG + "guidance_projection.0.weight"] = (g_app, c, 3, 3)
    shapes[AGG + "guidance_projection.0.bias"] = (g_app,)
    shapes[AGG + "text_guidance_projection.0.weight"] = (g_text, c)
    shapes[AGG + "text_guidance_projection.0.bias"] = (g_text,)
    for i, (gin, gout) in enumerate(zip(a["dec_guidance"], a["dec_guidance_proj"])):
        shapes[f"{AGG}decoder_guidance_projection.{i}.0.weight"] = (gout, gin, 3, 3)
        shapes[f"{AGG}decoder_guidance_projection.{i}.0.bias"] = (gout,)
    channels = d
    for i, (out, guidance) in enumerate(zip(a["decoder_dims"], a["dec_guidance_proj"]), start=1):
        p = f"{AGG}decoder{i}."
        shapes[p + "up.weight"] = (channels, channels - guidance, 2, 2)
        shapes[p + "up.bias"] = (channels - guidance,)
        shapes[p + "conv.double_conv.0.weight"] = (out, channels, 3, 3)
        shapes[p + "conv.double_conv.1.weight"] = (out,)
        shapes[p + "conv.double_conv.1.bias"] = (out,)
        shapes[p + "conv.double_conv.3.weight"] = (out, out, 3, 3)
        shapes[p + "conv.double_conv.4.weight"] = (out,)
        shapes[p + "conv.double_conv.4.bias"] = (out,)
        channels = out
    shapes[AGG + "head.weight"] = (1, channels, 3, 3)
    shapes[AGG + "head.bias"] = (1,)
    # --- top level
    shapes["upsample1.weight"] = (vw, a["dec_guidance"][0], 2, 2)
    shapes["upsample1.bias"] = (a["dec_guidance"][0],)
    shapes["upsample2.weight"] = (vw, a["dec_guidance"][1], 4, 4)
    shapes["upsample2.bias"] = (a["dec_guidance"][1],)
    return shapes


def official_shift_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """The Swin shifted-window mask ``[nW, window^2, window^2]`` (timm's construction):
    regions split at ``-window`` and ``-shift`` on each axis; -100 across regions, 0 within."""
    img_mask = torch.zeros(1, h, w, 1)
    count = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img_mask[:, hs, ws, :] = count
            count += 1
    mask_windows = window_partition(img_mask, window).view(-1, window * window)
    attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)


def make_official_state_dict(arch: str = "tiny-b", seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """Random float32 weights with exactly the official keys/shapes of ``arch``.

    Values: LayerNorm/GroupNorm weights ``1 + 0.1 N``, biases ``0.05 N``, matrices
    ``N / sqrt(fan_in)``, embeddings ``0.02 N`` (token) or ``N / sqrt(width)``, padding
    tokens ``0.5 N`` (non-zero so that misplacement shows), ``logit_scale = ln(100)``,
    ``attn_mask`` = the real shift mask.
    """
    generator = torch.Generator().manual_seed(seed)
    a = _ARCHS[arch]
    state: "OrderedDict[str, torch.Tensor]" = OrderedDict()

    def randn(shape):
        return torch.randn(shape, generator=generator)

    for key, shape in official_key_shapes(arch).items():
        name = key.rsplit(".", 1)[-1]
        is_norm = any(f".{n}." in key for n in ("ln_1", "ln_2", "ln_pre", "ln_post", "ln_final", "norm1",
                                                "norm2", "guidance_norm")) or ".double_conv.1." in key \
            or ".double_conv.4." in key
        if key.endswith("attn_mask"):
            win = a["window"]
            value = official_shift_mask(a["grid"], a["grid"], win, win // 2)
        elif key.endswith("logit_scale"):
            value = torch.tensor(math.log(100.0))
        elif is_norm and name == "weight":
            value = randn(shape).mul_(0.1).add_(1.0)
        elif name in ("bias", "in_proj_bias"):
            value = randn(shape).mul_(0.05)
        elif name in ("padding_tokens", "padding_guidance"):
            value = randn(shape).mul_(0.5)
        elif key.endswith("token_embedding.weight"):
            value = randn(shape).mul_(0.02)
        elif name in ("proj", "text_projection"):  # [W, C]
            value = randn(shape).mul_(shape[0] ** -0.5)
        elif name in ("class_embedding", "positional_embedding"):
            value = randn(shape).mul_(shape[-1] ** -0.5)
        else:  # linear / conv / transposed-conv weights
            value = randn(shape).mul_(math.prod(shape[1:]) ** -0.5)
        state[key] = value.float()  # no copy for float32
    return state


# ----------------------------------------------------------------------------- CLIP
def _layer_norm(x: torch.Tensor, state, prefix: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], state[prefix + ".weight"], state[prefix + ".bias"], eps=1e-5)


def _attention(x: torch.Tensor, state, prefix: str, heads: int, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``nn.MultiheadAttention`` self-attention with split q/k/v weights; ``x`` ``[L, N, W]``."""
    length, batch, width = x.shape
    bias = state[prefix + ".in_proj_bias"]
    q = F.linear(x, state[prefix + ".q_proj_weight"], bias[:width])
    k = F.linear(x, state[prefix + ".k_proj_weight"], bias[width:2 * width])
    v = F.linear(x, state[prefix + ".v_proj_weight"], bias[2 * width:])
    head_dim = width // heads
    # [L, N, W] -> [N * heads, L, head_dim] (PyTorch MHA layout)
    q = q.reshape(length, batch * heads, head_dim).transpose(0, 1) * head_dim ** -0.5
    k = k.reshape(length, batch * heads, head_dim).transpose(0, 1)
    v = v.reshape(length, batch * heads, head_dim).transpose(0, 1)
    logits = q @ k.transpose(1, 2)
    if mask is not None:
        logits = logits + mask
    out = logits.softmax(dim=-1) @ v
    out = out.transpose(0, 1).reshape(length, batch, width)
    return F.linear(out, state[prefix + ".out_proj.weight"], state[prefix + ".out_proj.bias"])


def _clip_mlp(x: torch.Tensor, state, prefix: str) -> torch.Tensor:
    h = F.linear(x, state[prefix + ".c_fc.weight"], state[prefix + ".c_fc.bias"])
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    return F.linear(h, state[prefix + ".c_proj.weight"], state[prefix + ".c_proj.bias"])


def _residual_block(x: torch.Tensor, state, prefix: str, heads: int, mask=None) -> torch.Tensor:
    x = x + _attention(_layer_norm(x, state, prefix + ".ln_1"), state, prefix + ".attn", heads, mask)
    return x + _clip_mlp(_layer_norm(x, state, prefix + ".ln_2"), state, prefix + ".mlp")


def _dense_last_block(x: torch.Tensor, state, prefix: str) -> torch.Tensor:
    """The dense last block in the official order: packed in-projection, out_proj on each of q/k/v,
    keep v, add the class-token row of the block input, MLP residual. ``x`` ``[L, N, W]``."""
    width = x.shape[-1]
    y = _layer_norm(x, state, prefix + ".ln_1")
    in_proj_weight = torch.cat([state[prefix + f".attn.{n}_proj_weight"] for n in "qkv"], dim=0)
    y = F.linear(y, in_proj_weight, state[prefix + ".attn.in_proj_bias"])  # [L, N, 3W]
    length, batch, _ = y.shape
    y = y.reshape(length, batch, 3, width).permute(2, 1, 0, 3).reshape(3 * batch, length, width)
    y = F.linear(y, state[prefix + ".attn.out_proj.weight"], state[prefix + ".attn.out_proj.bias"])
    q, k, v = y.tensor_split(3, dim=0)  # q and k are discarded
    v = v.transpose(1, 0) + x[:1]  # [L, N, W] + class-token row broadcast to every token
    return v + _clip_mlp(_layer_norm(v, state, prefix + ".ln_2"), state, prefix + ".mlp")


def _resized_positional_embedding(pos: torch.Tensor, tokens: int) -> torch.Tensor:
    """Keep the class row, bicubic-resize the square patch table."""
    rows, width = pos.shape
    in_side = int(math.isqrt(rows - 1))
    tgt_side = int((tokens - 1) ** 0.5)
    patch = pos[1:].reshape(1, in_side, in_side, width).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(tgt_side, tgt_side), mode="bicubic", align_corners=False)
    patch = patch.squeeze(0).reshape(width, -1).T
    return torch.cat([pos[:1], patch], dim=0)


def _count_blocks(state, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def clip_dense_encode(state, images: torch.Tensor, cfg: ReferenceConfig) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Official dense image encode.

    Args:
        images: ``[B, 3, S, S]`` CLIP-normalised images at the CLIP resolution.
    Returns:
        ``clip_features [B, 1 + h*w, C]`` (after ln_post and proj, class token first) and the
        hooked block outputs, sequence-first ``[1 + h*w, B, W]`` (raw residual stream).
    """
    p = CLIP + "visual."
    x = F.conv2d(images, state[p + "conv1.weight"], stride=cfg.patch_size)  # [B, W, h, w]
    batch, width = x.shape[:2]
    x = x.reshape(batch, width, -1).permute(0, 2, 1)  # [B, h*w, W]
    cls = state[p + "class_embedding"] + torch.zeros(batch, 1, width, dtype=x.dtype)
    x = torch.cat([cls, x], dim=1)
    pos = state[p + "positional_embedding"]
    if x.shape[1] != pos.shape[0]:
        pos = _resized_positional_embedding(pos, x.shape[1])
    x = x + pos
    x = _layer_norm(x, state, p + "ln_pre")
    x = x.permute(1, 0, 2)  # [L, B, W]
    num_blocks = _count_blocks(state, p + "transformer.resblocks.")
    hooked = []
    for i in range(num_blocks):
        prefix = f"{p}transformer.resblocks.{i}"
        if i == num_blocks - 1:
            x = _dense_last_block(x, state, prefix)
        else:
            x = _residual_block(x, state, prefix, cfg.visual_heads)
        if i in cfg.hooked_blocks:
            hooked.append(x)
    x = x.permute(1, 0, 2)
    x = _layer_norm(x, state, p + "ln_post")
    return x @ state[p + "proj"], hooked


def clip_encode_text(state, tokens: torch.Tensor, cfg: ReferenceConfig) -> torch.Tensor:
    """Official text encode: ``[N, 77]`` token ids -> ``[N, C]`` (not normalised).

    Token embedding + positional embedding, causal residual blocks, ln_final, the EOT
    position (argmax token id) @ text_projection.
    """
    x = state[CLIP + "token_embedding.weight"][tokens]
    x = x + state[CLIP + "positional_embedding"]
    x = x.permute(1, 0, 2)  # [77, N, W]
    length = x.shape[0]
    causal = torch.full((length, length), float("-inf")).triu(1)
    for i in range(_count_blocks(state, CLIP + "transformer.resblocks.")):
        x = _residual_block(x, state, f"{CLIP}transformer.resblocks.{i}", cfg.text_heads, causal)
    x = x.permute(1, 0, 2)
    x = _layer_norm(x, state, CLIP + "ln_final")
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ state[CLIP + "text_projection"]


def reference_text_embeddings(state, class_names: Sequence[str], cfg: ReferenceConfig) -> torch.Tensor:
    """``[T, 1, C]`` L2-normalised class embeddings with the ``single`` template;
    only the first synonym of ``"a, b"`` names is used."""
    import open_clip  # the OpenAI BPE tokenizer (not part of the computation under test)

    prompts = [SINGLE_TEMPLATE.format(name.split(", ")[0].strip()) for name in class_names]
    tokens = open_clip.tokenize(prompts)
    embeddings = clip_encode_text(state, tokens, cfg)
    embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
    return embeddings.unsqueeze(1)


# ----------------------------------------------------------------------------- aggregator
def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, H, W, C]`` -> ``[B * nW, window, window, C]`` (timm)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window, window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition` (timm)."""
    b = int(windows.shape[0] / (h * w / window / window))
    x = windows.view(b, h // window, w // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def _window_attention(x: torch.Tensor, state, prefix: str, dim: int, heads: int, mask) -> torch.Tensor:
    """Official ``WindowAttention``: ``x`` ``[B_, N, dim + guidance]``; q, k from all channels,
    v from the first ``dim``; additive shift mask; output projection."""
    b_, n, _ = x.shape
    q = F.linear(x, state[prefix + ".q.weight"], state[prefix + ".q.bias"]).reshape(b_, n, heads, -1).permute(0, 2, 1, 3)
    k = F.linear(x, state[prefix + ".k.weight"], state[prefix + ".k.bias"]).reshape(b_, n, heads, -1).permute(0, 2, 1, 3)
    v = F.linear(x[:, :, :dim], state[prefix + ".v.weight"], state[prefix + ".v.bias"])
    v = v.reshape(b_, n, heads, -1).permute(0, 2, 1, 3)
    q = q * (dim // heads) ** -0.5
    attn = q @ k.transpose(-2, -1)
    if mask is not None:
        num_windows = mask.shape[0]
        attn = attn.view(-1, num_windows, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, n, n)
    attn = attn.softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b_, n, -1)
    return F.linear(out, state[prefix + ".proj.weight"], state[prefix + ".proj.bias"])


def _swin_block(x, guidance, state, prefix, hw, window, shift, heads, mask):
    """Official ``SwinTransformerBlock``: ``x`` ``[BT, H*W, D]``, guidance ``[BT, H*W, G]``."""
    h, w = hw
    if min(h, w) <= window:  # timm: a map no larger than the window gets one unshifted window
        shift, window, mask = 0, min(h, w), None
    bt, length, dim = x.shape
    shortcut = x
    x = _layer_norm(x, state, prefix + ".norm1").view(bt, h, w, dim)
    if guidance is not None:
        x = torch.cat([x, guidance.view(bt, h, w, -1)], dim=-1)
    if shift > 0:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    windows = window_partition(x, window).view(-1, window * window, x.shape[-1])
    out = _window_attention(windows, state, prefix + ".attn", dim, heads, mask)
    out = window_reverse(out.view(-1, window, window, dim), window, h, w)
    if shift > 0:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    x = shortcut + out.reshape(bt, h * w, dim)
    hidden = F.gelu(F.linear(_layer_norm(x, state, prefix + ".norm2"), state[prefix + ".mlp.fc1.weight"],
                             state[prefix + ".mlp.fc1.bias"]))
    return x + F.linear(hidden, state[prefix + ".mlp.fc2.weight"], state[prefix + ".mlp.fc2.bias"])


def _swin_wrapper(x, appearance, state, prefix, cfg: ReferenceConfig):
    """Official ``SwinTransformerBlockWrapper``: ``x`` ``[B, D, T, H, W]``, guidance ``[B, G, H, W]``."""
    b, d, t, h, w = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, d)  # B C T H W -> (B T) (H W) C
    guidance = None
    if appearance is not None:
        g = appearance.flatten(2).transpose(1, 2)  # [B, H*W, G]
        g = g.repeat_interleave(t, dim=0)  # B C H W -> (B T) (H W) C, batch-major
        guidance = _layer_norm(g, state, prefix + ".guidance_norm")
    mask = state.get(prefix + ".block_2.attn_mask")
    if mask is None:
        mask = official_shift_mask(h, w, cfg.window, cfg.window // 2)
    x = _swin_block(x, guidance, state, prefix + ".block_1", (h, w), cfg.window, 0, cfg.num_heads, None)
    x = _swin_block(x, guidance, state, prefix + ".block_2", (h, w), cfg.window, cfg.window // 2, cfg.num_heads, mask)
    return x.reshape(b, t, h, w, d).permute(0, 4, 1, 2, 3)


def _class_attention(x, guidance, state, prefix, heads, attention_type):
    """Official ``AttentionLayer`` (no output projection); ``x`` ``[N, S, D]``, guidance ``[N, S, G]``."""
    qk_input = torch.cat([x, guidance], dim=-1) if guidance is not None else x
    q = F.linear(qk_input, state[prefix + ".q.weight"], state[prefix + ".q.bias"])
    k = F.linear(qk_input, state[prefix + ".k.weight"], state[prefix + ".k.bias"])
    v = F.linear(x, state[prefix + ".v.weight"], state[prefix + ".v.bias"])
    n, s, _ = q.shape
    q, k, v = (t.reshape(n, s, heads, -1) for t in (q, k, v))
    if attention_type == "linear":
        q = F.elu(q) + 1
        k = F.elu(k) + 1
        v_length = v.shape[1]
        values = v / v_length
        kv = torch.einsum("nshd,nshv->nhdv", k, values)
        z = 1 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + 1e-6)
        out = torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, z) * v_length
    else:
        qk = torch.einsum("nlhd,nshd->nlsh", q, k)
        a = torch.softmax(qk / q.shape[3] ** 0.5, dim=2)
        out = torch.einsum("nlsh,nshd->nlhd", a, v)
    return out.reshape(n, s, -1)


def _class_layer(x, text_guidance, state, prefix, cfg: ReferenceConfig, pooling):
    """Official ``ClassTransformerLayer``: ``x`` ``[B, D, T, H, W]``, guidance ``[B, T, G]``."""
    b, d, t, h, w = x.shape
    pooled = F.avg_pool2d(x.permute(0, 2, 1, 3, 4).reshape(b * t, d, h, w), kernel_size=pooling, stride=pooling)
    hp, wp = pooled.shape[-2:]
    pooled = pooled.reshape(b, t, d, hp, wp).permute(0, 2, 1, 3, 4)  # [B, D, T, hp, wp]
    padded = t
    if cfg.pad_len > 0 and t < cfg.pad_len:
        padded = cfg.pad_len
        tokens = state[prefix + ".padding_tokens"].reshape(1, d, 1, 1, 1).expand(b, d, padded - t, hp, wp)
        pooled = torch.cat([pooled, tokens], dim=2)
    z = pooled.permute(0, 3, 4, 2, 1).reshape(b * hp * wp, padded, d)  # B C T H W -> (B H W) T C
    guidance = text_guidance
    if guidance is not None:
        if cfg.pad_len > 0 and t < cfg.pad_len:
            pad = state[prefix + ".padding_guidance"].expand(b, padded - t, -1)
            guidance = torch.cat([guidance, pad], dim=1)
        guidance = guidance.repeat_interleave(hp * wp, dim=0)  # B T C -> (B H W) T C
    z = z + _class_attention(_layer_norm(z, state, prefix + ".norm1"), guidance, state, prefix + ".attention",
                             cfg.num_heads, cfg.attention_type)
    hidden = F.relu(F.linear(_layer_norm(z, state, prefix + ".norm2"), state[prefix + ".MLP.0.weight"],
                             state[prefix + ".MLP.0.bias"]))
    z = z + F.linear(hidden, state[prefix + ".MLP.2.weight"], state[prefix + ".MLP.2.bias"])
    z = z.reshape(b, hp, wp, padded, d).permute(0, 3, 4, 1, 2).reshape(b * padded, d, hp, wp)
    z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=True)
    z = z.reshape(b, padded, d, h, w).permute(0, 2, 1, 3, 4)[:, :, :t]
    return x + z  # official residual: z already contains the pooled input


def _group_norm(x, state, prefix):
    channels = state[prefix + ".weight"].shape[0]
    return F.group_norm(x, max(channels // 16, 1), state[prefix + ".weight"], state[prefix + ".bias"], eps=1e-5)


def _up_block(x, guidance, state, prefix):
    """Official ``Up``: transposed conv, concat guidance repeated over classes, DoubleConv."""
    x = F.conv_transpose2d(x, state[prefix + ".up.weight"], state[prefix + ".up.bias"], stride=2)
    if guidance is not None:
        t = x.shape[0] // guidance.shape[0]
        x = torch.cat([x, guidance.repeat_interleave(t, dim=0)], dim=1)  # B C H W -> (B T) C H W
    c = prefix + ".conv.double_conv"
    x = F.relu(_group_norm(F.conv2d(x, state[c + ".0.weight"], padding=1), state, c + ".1"))
    return F.relu(_group_norm(F.conv2d(x, state[c + ".3.weight"], padding=1), state, c + ".4"))


def aggregator_forward(state, img_feats, text_feats, guidance, cfg: ReferenceConfig, pooling=(1, 1)) -> torch.Tensor:
    """Official ``Aggregator.forward``.

    Args:
        img_feats: ``[B, C, h, w]`` (res3).
        text_feats: ``[B, T, P, C]``.
        guidance: ``[res3 [B, C, h, w], res4 [B, G1, 2h, 2w], res5 [B, G2, 4h, 4w]]``.
    Returns:
        logits ``[B, T, 4h, 4w]`` (-100 for classes cut by the top-``pad_len`` selection).
    """
    img = F.normalize(img_feats, dim=1)
    text = F.normalize(text_feats, dim=-1)
    corr = torch.einsum("bchw,btpc->bpthw", img, text)
    classes, num_classes = None, text_feats.shape[1]
    if cfg.pad_len > 0 and num_classes > cfg.pad_len:
        avg = corr.permute(0, 2, 1, 3, 4).flatten(-3).max(dim=-1)[0]  # [B, T]
        classes = avg.topk(cfg.pad_len, dim=-1, sorted=False)[1]
        th_text = F.normalize(text_feats, dim=-1)
        th_text = torch.gather(th_text, 1, classes[..., None, None].expand(-1, -1, th_text.shape[-2], th_text.shape[-1]))
        text_feats = th_text
        corr = torch.einsum("bchw,btpc->bpthw", F.normalize(img_feats, dim=1), th_text)
    b, p, t, h, w = corr.shape
    x = corr.permute(0, 2, 1, 3, 4).reshape(b * t, p, h, w)  # B P T H W -> (B T) P H W
    x = F.conv2d(x, state[AGG + "conv1.weight"], state[AGG + "conv1.bias"], padding=3)
    x = x.reshape(b, t, -1, h, w).permute(0, 2, 1, 3, 4)  # (B T) C H W -> B C T H W
    appearance = F.relu(F.conv2d(guidance[0], state[AGG + "guidance_projection.0.weight"],
                                 state[AGG + "guidance_projection.0.bias"], padding=1))
    decoder_guidance = [
        F.relu(F.conv2d(g, state[f"{AGG}decoder_guidance_projection.{i}.0.weight"],
                        state[f"{AGG}decoder_guidance_projection.{i}.0.bias"], padding=1))
        for i, g in enumerate(guidance[1:])
    ]
    text_mean = text_feats.mean(dim=-2)
    text_mean = text_mean / text_mean.norm(dim=-1, keepdim=True)
    text_guidance = F.relu(F.linear(text_mean, state[AGG + "text_guidance_projection.0.weight"],
                                    state[AGG + "text_guidance_projection.0.bias"]))
    for layer in range(_count_blocks(state, AGG + "layers.")):
        x = _swin_wrapper(x, appearance, state, f"{AGG}layers.{layer}.swin_block", cfg)
        x = _class_layer(x, text_guidance, state, f"{AGG}layers.{layer}.attention", cfg, tuple(pooling))
    x = x.permute(0, 2, 1, 3, 4).reshape(b * t, -1, h, w)  # B C T H W -> (B T) C H W
    for i, g in enumerate(decoder_guidance, start=1):
        x = _up_block(x, g, state, f"{AGG}decoder{i}")
    x = F.conv2d(x, state[AGG + "head.weight"], state[AGG + "head.bias"], padding=1)
    logits = x.reshape(b, t, *x.shape[-2:])
    if classes is not None:
        out = torch.full((b, num_classes, *logits.shape[-2:]), -100.0, dtype=logits.dtype)
        out.scatter_(1, classes[..., None, None].expand(-1, -1, *logits.shape[-2:]), logits)
        logits = out
    return logits


# ----------------------------------------------------------------------------- full model
def _as_batched_text(text_embeddings: torch.Tensor, batch: int) -> torch.Tensor:
    if text_embeddings.dim() == 3:  # [T, P, C] -> repeated over the batch as the official predictor
        return text_embeddings.unsqueeze(0).repeat(batch, 1, 1, 1)
    return text_embeddings


def reference_logits(state, images_clip_normalized, text_embeddings, cfg: ReferenceConfig, pooling=(1, 1)):
    """Official logits ``[B, T, 4h, 4w]``.

    Args:
        images_clip_normalized: ``[B, 3, H, W]`` CLIP-normalised images (any size: squashed to
            the CLIP resolution with bilinear, align_corners=False).
        text_embeddings: ``[T, P, C]`` (or ``[B, T, P, C]``) L2-normalised class embeddings.
        pooling: class-aggregation pooling (``(2, 2)`` training, ``(1, 1)`` evaluation).
    """
    images = F.interpolate(images_clip_normalized, size=(cfg.clip_resolution, cfg.clip_resolution),
                           mode="bilinear", align_corners=False)
    clip_features, hooked = clip_dense_encode(state, images, cfg)
    b = images.shape[0]
    h, w = cfg.feature_resolution
    res3 = clip_features[:, 1:, :].permute(0, 2, 1).reshape(b, -1, h, w)  # B (H W) C -> B C H W

    def grid(t):  # (H W) B C -> B C H W
        return t[1:].permute(1, 2, 0).reshape(b, -1, h, w)

    res4 = F.conv_transpose2d(grid(hooked[0]), state["upsample1.weight"], state["upsample1.bias"], stride=2)
    res5 = F.conv_transpose2d(grid(hooked[1]), state["upsample2.weight"], state["upsample2.bias"], stride=4)
    text = _as_batched_text(text_embeddings, b)
    return aggregator_forward(state, res3, text, [res3, res4, res5], cfg, pooling)


def _clip_normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_PIXEL_MEAN).view(-1, 1, 1)
    std = torch.tensor(CLIP_PIXEL_STD).view(-1, 1, 1)
    return (images - mean) / std


def reference_inference_probs(state, image, text_embeddings, cfg: ReferenceConfig, pooling=(1, 1),
                              height: Optional[int] = None, width: Optional[int] = None) -> torch.Tensor:
    """Official non-sliding inference of one image ``[3, H, W]`` (0..255 float):
    normalise, zero-pad to ``size_divisibility``, squash to the CLIP resolution, sigmoid at
    the logit resolution, resize to ``(height, width)`` -> ``[T, height, width]``.

    (The official crop ``[:, :img_h, :img_w]`` is applied to the small logit map and is a
    no-op.)
    """
    height = image.shape[-2] if height is None else height
    width = image.shape[-1] if width is None else width
    x = _clip_normalize(image.float())
    div = cfg.size_divisibility
    ph, pw = -(-x.shape[-2] // div) * div, -(-x.shape[-1] // div) * div
    x = F.pad(x, (0, pw - x.shape[-1], 0, ph - x.shape[-2]), value=0.0)
    probs = reference_logits(state, x[None], text_embeddings, cfg, pooling).sigmoid()[0]
    probs = probs[:, : image.shape[-2], : image.shape[-1]]
    return F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def reference_sliding_window_probs(state, image, text_embeddings, cfg: ReferenceConfig, pooling=(1, 1),
                                   height: Optional[int] = None, width: Optional[int] = None) -> torch.Tensor:
    """Official sliding-window inference of one image ``[3, H, W]`` (0..255 float).

    Resize to the ``out_res`` canvas, unfold ``kernel`` crops (stride
    ``int(kernel * (1 - overlap))``) plus the whole image resized to ``kernel`` as a global
    view, logits -> upsample to ``kernel`` -> sigmoid, fold / coverage, average 50/50 with the
    upsampled global view, resize to ``(height, width)``. Returns ``[T, height, width]``.
    """
    kernel, out_res = cfg.sliding_kernel, (cfg.sliding_out_res, cfg.sliding_out_res)
    stride = int(kernel * (1 - cfg.sliding_overlap))
    image = image.float()
    height = out_res[0] if height is None else height
    width = out_res[1] if width is None else width
    canvas = F.interpolate(image[None], size=out_res, mode="bilinear", align_corners=False)
    crops = F.unfold(canvas, kernel_size=kernel, stride=stride)[0]  # [(C k k), L]
    crops = crops.T.reshape(-1, 3, kernel, kernel)  # (C H W) L -> L C H W
    global_view = F.interpolate(image[None], size=(kernel, kernel), mode="bilinear", align_corners=False)
    views = torch.cat([crops, global_view], dim=0)
    logits = reference_logits(state, _clip_normalize(views), text_embeddings, cfg, pooling)
    probs = F.interpolate(logits, size=(kernel, kernel), mode="bilinear", align_corners=False).sigmoid()
    global_probs = F.interpolate(probs[-1:], size=out_res, mode="bilinear", align_corners=False)
    windows = probs[:-1]
    summed = F.fold(windows.flatten(1).T[None], out_res, kernel_size=kernel, stride=stride)  # [1, T, H, W]
    coverage = F.fold(F.unfold(torch.ones(1, 1, *out_res), kernel_size=kernel, stride=stride), out_res,
                      kernel_size=kernel, stride=stride)
    merged = (summed / coverage + global_probs) / 2
    return F.interpolate(merged, size=(height, width), mode="bilinear", align_corners=False)[0]
