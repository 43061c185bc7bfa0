"""Spatial aggregation: shifted-window (Swin-style) attention over each class's cost map.

Per aggregator layer, a pair of blocks (no shift, then cyclic shift of half a window) runs
independently on every class map ``[D, H, W]`` of the cost embedding. Appearance guidance
(projected CLIP image features, shared by all classes of an image) is concatenated to the
queries' and keys' input only (spec 2.6). No relative position bias.

Implementation note: ``q = Linear([x_hat, g])`` is computed as ``W_x x_hat + (W_g g + b)``
with the guidance term evaluated once per image and broadcast over the classes, instead of
repeating the guidance ``T`` times: the same function with far less memory and compute.
"""
from functools import lru_cache
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``[N, H, W, C]`` -> ``[N, nW, window*window, C]`` (row-major window order)."""
    n, h, w, c = x.shape
    x = x.view(n, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(n, (h // window) * (w // window), window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[N, nW, window*window, C]`` -> ``[N, H, W, C]``."""
    n, c = windows.shape[0], windows.shape[-1]
    x = windows.view(n, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)


@lru_cache(maxsize=16)
def _shift_mask_cpu(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    regions = torch.zeros(1, h, w, 1)
    count = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            regions[:, hs, ws, :] = count
            count += 1
    ids = window_partition(regions, window).squeeze(0).squeeze(-1)  # [nW, window*window]
    mask = ids[:, None, :] - ids[:, :, None]
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def shifted_window_mask(h: int, w: int, window: int, shift: int, device, dtype) -> torch.Tensor:
    """Standard Swin mask ``[nW, window^2, window^2]``: 0 within a region, -100 across regions."""
    return _shift_mask_cpu(h, w, window, shift).to(device=device, dtype=dtype)


class GuidedLinear(nn.Module):
    """``Linear(in_dim + guidance_dim -> out_dim)`` applied to ``concat(x, guidance)``.

    Parameters are stored as one ``weight [out, in + guidance]`` and ``bias`` (official
    layout); the forward splits the weight so that a guidance shared by many ``x`` rows is
    projected only once (see :meth:`forward`).
    """

    def __init__(self, in_dim: int, guidance_dim: int, out_dim: int):
        super().__init__()
        self.in_dim, self.guidance_dim = in_dim, guidance_dim
        linear = nn.Linear(in_dim + guidance_dim, out_dim)
        self.weight, self.bias = linear.weight, linear.bias

    def project_guidance(self, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """Guidance term ``W_g g + b`` (just ``b`` when there is no guidance)."""
        if guidance is None or self.guidance_dim == 0:
            return self.bias
        return F.linear(guidance, self.weight[:, self.in_dim:], self.bias)

    def forward(self, x: torch.Tensor, guidance_term: torch.Tensor) -> torch.Tensor:
        """``W_x x + guidance_term`` where ``guidance_term`` broadcasts against the result."""
        return F.linear(x, self.weight[:, : self.in_dim]) + guidance_term


class WindowAttention(nn.Module):
    """Multi-head attention inside windows with guidance in queries and keys.

    Keys of the state dict: ``q``, ``k`` (``[dim, dim + guidance_dim]``), ``v``, ``proj``.
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = GuidedLinear(dim, guidance_dim, dim)
        self.k = GuidedLinear(dim, guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor], mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Attention within windows.

        Args:
            x: ``[B, T, nW, N, D]`` normalised cost features in windows (N = window^2).
            guidance: ``[B, 1, nW, N, G]`` guidance in the same windows, or None.
            mask: additive ``[nW, N, N]`` mask or None.
        Returns:
            ``[B, T, nW, N, D]``.
        """
        heads = self.num_heads

        def split(t):  # [..., N, D] -> [..., heads, N, D/heads]
            return t.unflatten(-1, (heads, -1)).transpose(-2, -3)

        q = split(self.q(x, self.q.project_guidance(guidance)))
        k = split(self.k(x, self.k.project_guidance(guidance)))
        v = split(self.v(x))
        if mask is not None:
            mask = mask[:, None]  # [nW, 1, N, N] broadcasts over batch, classes and heads
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.proj(out.transpose(-2, -3).flatten(-2))


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """One (optionally shifted) window-attention block with appearance guidance.

    Args:
        dim: hidden dim D of the cost features.
        guidance_dim: channels of the appearance guidance (0 = none).
        num_heads: attention heads.
        window: window side.
        shift: cyclic shift (0 or window // 2).
        mlp_ratio: MLP hidden = ``mlp_ratio * dim``.
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, guidance_dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def geometry(self, h: int, w: int) -> Tuple[int, int]:
        """Effective ``(window, shift)`` for an ``h x w`` map (Swin's rule for small maps)."""
        if min(h, w) <= self.window:
            return min(h, w), 0
        return self.window, self.shift

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """``x [B, T, H, W, D]``, normalised guidance ``[B, H, W, G]`` or None -> ``[B, T, H, W, D]``."""
        b, t, h, w, d = x.shape
        window, shift = self.geometry(h, w)
        if h % window or w % window:
            raise ValueError(f"cost map {h}x{w} is not divisible by the window size {window} (WINDOW_SIZES)")
        shortcut = x
        x = self.norm1(x)
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(2, 3))
            guidance = torch.roll(guidance, shifts=(-shift, -shift), dims=(1, 2)) if guidance is not None else None
        x_windows = window_partition(x.reshape(b * t, h, w, d), window)
        x_windows = x_windows.view(b, t, *x_windows.shape[1:])
        g_windows = None
        if guidance is not None:
            g_windows = window_partition(guidance, window)[:, None]  # [B, 1, nW, N, G]
        mask = shifted_window_mask(h, w, window, shift, x.device, x.dtype) if shift else None
        out = self.attn(x_windows, g_windows, mask)
        out = window_reverse(out.flatten(0, 1), window, h, w).view(b, t, h, w, d)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(2, 3))
        x = shortcut + out
        return x + self.mlp(self.norm2(x))


class SpatialAggregation(nn.Module):
    """A pair of Swin blocks (no shift, shift window//2) over every class's cost map.

    State-dict keys: ``block_1``, ``block_2``, ``guidance_norm`` (one LayerNorm on the
    guidance, shared by both blocks).
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, window: int):
        super().__init__()
        self.block_1 = SwinBlock(dim, guidance_dim, num_heads, window, shift=0)
        self.block_2 = SwinBlock(dim, guidance_dim, num_heads, window, shift=window // 2)
        self.guidance_norm = nn.LayerNorm(guidance_dim) if guidance_dim > 0 else None

    def forward(self, x: torch.Tensor, appearance_guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """``x [B, D, T, H, W]``, guidance ``[B, G, H, W]`` or None -> ``[B, D, T, H, W]``."""
        x = x.permute(0, 2, 3, 4, 1)  # [B, T, H, W, D]
        guidance = None
        if appearance_guidance is not None and self.guidance_norm is not None:
            guidance = self.guidance_norm(appearance_guidance.permute(0, 2, 3, 1))
        x = self.block_1(x, guidance)
        x = self.block_2(x, guidance)
        return x.permute(0, 4, 1, 2, 3)
