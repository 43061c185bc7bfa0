"""Spatial aggregation: shifted-window (Swin-style) attention over each class's cost map.

Per aggregator layer, a pair of blocks (no shift, then a cyclic shift of half a window) runs
independently on every class map of the cost embedding. The appearance guidance (projected
CLIP image features, shared by all classes of an image) enters the queries' and keys' input
only; there is no relative position bias. See ``docs/architecture.md`` ("Spatial
aggregation").

Layout: the class maps are ``[B, T, H, W, D]`` tokens (channels last). A (shifted) window
partition and its inverse are one gather each (``index_select`` with a permutation of the
``H * W`` positions built from tensor ops on the input's device, so ``torch.compile`` sees
plain graph ops); q/k/v are one GEMM; the window attention is a 4-D
``scaled_dot_product_attention`` call (the fused kernels), one per window position for the
shifted block, where only the windows on the wrap-around border need the region mask.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from .norms import LayerNorm

# Additive attention logit between tokens of different regions of a shifted window (Swin's value).
CROSS_REGION_LOGIT = -100.0


def partition_index(h: int, w: int, window: int, shift: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(index, inverse)`` of a cyclic shift by ``-shift`` followed by the window partition.

    ``tokens[:, index]`` (raster-ordered ``[N, H*W, C]``) gives the tokens in window order
    (``[N, nW * window^2, C]``, windows row-major, tokens row-major inside a window);
    ``windows[:, inverse]`` undoes both. Built with tensor ops on ``device``.
    """
    rows = torch.arange(h, device=device).view(h // window, 1, window, 1)
    cols = torch.arange(w, device=device).view(1, w // window, 1, window)
    if shift:
        rows, cols = (rows + shift) % h, (cols + shift) % w
    index = (rows * w + cols).reshape(-1)  # [nWh, nWw, window, window] -> flat window order
    inverse = torch.empty_like(index)
    inverse[index] = torch.arange(index.numel(), device=device)
    return index, inverse


def shifted_window_mask(h: int, w: int, window: int, shift: int, row: int, col: int, device,
                        dtype) -> Optional[torch.Tensor]:
    """Additive mask ``[window^2, window^2]`` of window ``(row, col)`` of the shifted map, or None.

    After the cyclic shift, the last window row and column hold positions that were not
    neighbours in the image (regions ``[0, H - window)``, ``[H - window, H - shift)``,
    ``[H - shift, H)`` per axis); attention across regions gets :data:`CROSS_REGION_LOGIT`.
    Every other window lies inside one region and needs no mask (None).
    """
    last_row, last_col = row == h // window - 1, col == w // window - 1
    if not shift or not (last_row or last_col):
        return None
    offset = torch.arange(window, device=device)
    # region id along each axis inside a last window: 0 before the shift boundary, 1 after
    row_region = (offset >= window - shift).long() if last_row else torch.zeros_like(offset)
    col_region = (offset >= window - shift).long() if last_col else torch.zeros_like(offset)
    region = (row_region[:, None] * 2 + col_region[None, :]).reshape(-1)
    mask = torch.zeros(window * window, window * window, device=device, dtype=dtype)
    return mask.masked_fill_(region[:, None] != region[None, :], CROSS_REGION_LOGIT)


class GuidedLinear(nn.Module):
    """``Linear(in_dim + guidance_dim -> out_dim)`` applied to ``concat(x, guidance)``.

    Parameters are stored as one ``weight [out, in + guidance]`` and ``bias`` (official
    layout). The product is split, ``W_x x + (W_g g + b)``, so that a guidance shared by many
    rows of ``x`` (all classes of an image) is projected once and broadcast.
    """

    def __init__(self, in_dim: int, guidance_dim: int, out_dim: int):
        super().__init__()
        self.in_dim, self.guidance_dim = in_dim, guidance_dim
        linear = nn.Linear(in_dim + guidance_dim, out_dim)
        self.weight, self.bias = linear.weight, linear.bias

    @property
    def input_weight(self) -> torch.Tensor:
        """``W_x`` ``[out, in_dim]``."""
        return self.weight[:, : self.in_dim]

    def project_guidance(self, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """Guidance term ``W_g g + b``: ``[..., guidance_dim] -> [..., out_dim]`` (just ``b``
        ``[out_dim]`` when there is no guidance)."""
        if guidance is None or self.guidance_dim == 0:
            return self.bias
        return F.linear(guidance, self.weight[:, self.in_dim:], self.bias)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``W_x x + W_g g + b``: ``x`` ``[..., in_dim]`` and ``guidance`` ``[..., guidance_dim]``
        (broadcasting against ``x``'s rows, e.g. ``[B, 1, N, G]`` for ``x`` ``[B, T, N, D]``; or
        None) -> ``[..., out_dim]``."""
        return F.linear(x, self.input_weight) + self.project_guidance(guidance)


def fused_qkv(q: GuidedLinear, k: GuidedLinear, v: nn.Linear, x: torch.Tensor,
              guidance: Optional[torch.Tensor]) -> torch.Tensor:
    """``[q | k | v]`` projections ``[..., 3D]`` of ``x [..., D]`` as one GEMM plus the guidance term.

    ``guidance`` broadcasts against ``x[..., :1]`` (e.g. ``[B, 1, ..., G]``); the term
    ``[W_g g + b_q | W_g g + b_k | b_v]`` is computed once per guidance row and added in place.
    """
    dim = x.shape[-1]
    qkv = F.linear(x, torch.cat([q.input_weight, k.input_weight, v.weight]))
    if guidance is not None:
        term = torch.cat([q.project_guidance(guidance), k.project_guidance(guidance),
                          v.bias.expand(*guidance.shape[:-1], dim)], dim=-1)
    else:
        term = torch.cat([q.bias, k.bias, v.bias])
    return qkv.add_(term.to(qkv.dtype))


def recomputed_mlp(norm: nn.Module, mlp: Mlp, x: torch.Tensor) -> torch.Tensor:
    """``mlp(norm(x))`` (timm ``Mlp``: fc1, GELU, fc2); while gradients are recorded, the whole
    branch is recomputed in the backward pass from ``x`` (which the block keeps anyway as its
    residual) instead of storing the norm's output, fc1's output and the GELU's: 9x the
    per-class maps per block, 3.4 GiB of a bf16 ViT-B training step at batch 4 (counted), for
    one more norm, fc1, GELU and fc2 per block in the backward (about 0.4 TFLOP at batch 4,
    8% of the step's FLOPs; docs/benchmarks.md, "Training memory")."""
    if not (torch.is_grad_enabled() and (x.requires_grad or mlp.fc1.weight.requires_grad)):
        return _norm_and_mlp(norm, mlp, x)
    return checkpoint(_norm_and_mlp, norm, mlp, x, use_reentrant=False)


def _norm_and_mlp(norm: nn.Module, mlp: Mlp, x: torch.Tensor) -> torch.Tensor:
    return mlp(norm(x))


class WindowAttention(nn.Module):
    """Multi-head attention inside windows with guidance in queries and keys.

    State-dict keys: ``q``, ``k`` (``[dim, dim + guidance_dim]``), ``v``, ``proj``.
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden dim {dim} is not divisible by {num_heads} heads "
                             "(MODEL.SEM_SEG_HEAD.HIDDEN_DIMS, NUM_HEADS)")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = GuidedLinear(dim, guidance_dim, dim)
        self.k = GuidedLinear(dim, guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor], grid: Tuple[int, int],
                window: int, shift: int) -> torch.Tensor:
        """Attention within windows.

        Args:
            x: ``[B, T, nW, N, D]`` normalised tokens in windows (N = window^2, windows row-major
                over a ``grid = (H, W)`` map).
            guidance: ``[B, 1, nW, N, G]`` guidance in the same windows, or None.
            window, shift: window side and cyclic shift (masks of the border windows).
        Returns:
            ``[B, T, nW, N, D]``.
        """
        b, t, windows, n, d = x.shape
        heads = self.num_heads
        qkv = fused_qkv(self.q, self.k, self.v, x, guidance).unflatten(-1, (3, heads, -1))  # [B, T, nW, N, 3, h, d]
        # unbind (backward: one stack) rather than indexing (backward: a zero-filled copy each)
        q, k, v = (part.transpose(-2, -3) for part in qkv.unbind(-3))  # [B, T, nW, heads, N, d]
        if not shift:
            out = F.scaled_dot_product_attention(q.flatten(0, 2), k.flatten(0, 2), v.flatten(0, 2), scale=self.scale)
            out = out.view(b, t, windows, heads, n, -1).transpose(3, 4)  # [B, T, nW, N, heads, d]
        else:
            h, w = grid
            per_row = w // window
            outs = []
            for index, (qw, kw, vw) in enumerate(zip(q.unbind(2), k.unbind(2), v.unbind(2))):
                mask = shifted_window_mask(h, w, window, shift, index // per_row, index % per_row, x.device, q.dtype)
                o = F.scaled_dot_product_attention(qw.flatten(0, 1), kw.flatten(0, 1), vw.flatten(0, 1),
                                                   attn_mask=mask, scale=self.scale)
                outs.append(o.view(b, t, heads, n, -1).transpose(2, 3))  # [B, T, N, heads, d]
            # stacked token-major, so that merging the heads below is a view, not one more copy
            out = torch.stack(outs, dim=2)  # [B, T, nW, N, heads, d]
        # a view where the attention kernel wrote [..., N, heads, d] memory for these strided inputs
        # (PyTorch's fused CPU and CUDA kernels do), else one copy
        return self.proj(out.reshape(b, t, windows, n, d))


class SwinBlock(nn.Module):
    """One (optionally shifted) window-attention block with appearance guidance.

    Args:
        dim: hidden dim D of the cost features.
        guidance_dim: channels of the appearance guidance (0 = none).
        num_heads: attention heads.
        window: window side.
        shift: cyclic shift (0 or window // 2).
        mlp_ratio: MLP hidden = ``mlp_ratio * dim``.

    State-dict keys: ``norm1``, ``attn``, ``norm2``, ``mlp.fc1``, ``mlp.fc2`` (timm's ``Mlp``
    has the official names).
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = LayerNorm(dim)
        self.attn = WindowAttention(dim, guidance_dim, num_heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def geometry(self, h: int, w: int) -> Tuple[int, int]:
        """Effective ``(window, shift)`` for an ``h x w`` map (Swin's rule for small maps); a
        ``ValueError`` when the map does not split into whole windows."""
        window, shift = (min(h, w), 0) if min(h, w) <= self.window else (self.window, self.shift)
        if h % window or w % window:
            raise ValueError(f"the {h}x{w} cost map (the CLIP patch grid) does not split into {window}x{window} "
                             f"windows: MODEL.SEM_SEG_HEAD.WINDOW_SIZES={self.window}")
        return window, shift

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """``x [B, T, H, W, D]``, normalised guidance ``[B, H, W, G]`` or None -> ``[B, T, H, W, D]``."""
        b, t, h, w, d = x.shape
        window, shift = self.geometry(h, w)
        windows, n = (h // window) * (w // window), window * window
        index, inverse = partition_index(h, w, window, shift, x.device)
        x_windows = self.norm1(x).reshape(b * t, h * w, d).index_select(1, index).view(b, t, windows, n, d)
        g_windows = None
        if guidance is not None:
            g_windows = guidance.reshape(b, h * w, -1).index_select(1, index).view(b, 1, windows, n, -1)
        out = self.attn(x_windows, g_windows, (h, w), window, shift)
        out = out.view(b * t, h * w, d).index_select(1, inverse).view(b, t, h, w, d)
        x = out.add_(x) if out.dtype == torch.promote_types(out.dtype, x.dtype) else out + x
        return x + recomputed_mlp(self.norm2, self.mlp, x)


class SpatialAggregation(nn.Module):
    """A pair of Swin blocks (no shift, shift window//2) over every class's cost map.

    State-dict keys: ``block_1``, ``block_2``, ``guidance_norm`` (one LayerNorm on the
    guidance, shared by both blocks).
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, window: int):
        super().__init__()
        self.block_1 = SwinBlock(dim, guidance_dim, num_heads, window, shift=0)
        self.block_2 = SwinBlock(dim, guidance_dim, num_heads, window, shift=window // 2)
        self.guidance_norm = LayerNorm(guidance_dim) if guidance_dim > 0 else None

    def normalize_guidance(self, appearance_guidance: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Projected appearance guidance ``[B, H, W, G]`` -> normalised ``[B, H, W, G]`` (or None)."""
        if appearance_guidance is None or self.guidance_norm is None:
            return None
        return self.guidance_norm(appearance_guidance)

    def check_grid(self, grid: Tuple[int, int]) -> None:
        """Raise the ``ValueError`` the blocks would raise on an ``(h, w)`` cost map that does
        not split into whole windows."""
        for block in (self.block_1, self.block_2):
            block.geometry(*grid)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """``x [B, T, H, W, D]``, normalised guidance ``[B, H, W, G]`` (see
        :meth:`normalize_guidance`) or None -> ``[B, T, H, W, D]``."""
        return self.block_2(self.block_1(x, guidance), guidance)
