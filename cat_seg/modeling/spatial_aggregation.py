"""Spatial aggregation: shifted-window (Swin-style) attention over each class's cost map.

Per aggregator layer, a pair of blocks (no shift, then cyclic shift of half a window) runs
independently on every class map ``[D, H, W]`` of the cost embedding. Appearance guidance
(projected CLIP image features, shared by all classes of an image) is concatenated to the
queries' and keys' input only (spec 2.6). No relative position bias.

Implementation note: ``q = Linear([x_hat, g])`` is computed as ``W_x x_hat + (W_g g + b)``
with the guidance term evaluated once per image and broadcast over the classes, instead of
repeating the guidance ``T`` times: the same function with far less memory and compute.

Speed options (:mod:`.fast`): ``window_attention_4d`` (4-D SDPA calls, the fused CPU/GPU
kernels) and ``token_layout`` (contiguous ``[B, T, H, W, D]`` tokens, roll + window
partition as one gather, q/k/v as one GEMM).
"""
from functools import lru_cache
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .fast import FastOptions


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
    return _shift_mask_on(h, w, window, shift, str(device), dtype)


@lru_cache(maxsize=64)
def _shift_mask_on(h: int, w: int, window: int, shift: int, device: str, dtype) -> torch.Tensor:
    return _shift_mask_cpu(h, w, window, shift).to(device=device, dtype=dtype)


@lru_cache(maxsize=64)
def _partition_index_cpu(h: int, w: int, window: int, shift: int) -> Tuple[torch.Tensor, torch.Tensor]:
    raster = torch.arange(h * w).view(1, h, w, 1)
    if shift:
        raster = torch.roll(raster, shifts=(-shift, -shift), dims=(1, 2))
    index = window_partition(raster, window).reshape(-1)
    return index, torch.argsort(index)


def partition_index(h: int, w: int, window: int, shift: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(index, inverse)`` of a cyclic shift by ``-shift`` followed by the window partition.

    ``tokens[:, index]`` (raster-ordered ``[N, H*W, C]``) gives the tokens in window order
    (``[N, nW*window^2, C]``, as :func:`window_partition` of the rolled map);
    ``windows[:, inverse]`` undoes both.
    """
    return _partition_index_on(h, w, window, shift, str(device))


@lru_cache(maxsize=64)
def _partition_index_on(h: int, w: int, window: int, shift: int, device: str) -> Tuple[torch.Tensor, torch.Tensor]:
    return tuple(t.to(device) for t in _partition_index_cpu(h, w, window, shift))


@lru_cache(maxsize=16)
def _mask_free_windows(h: int, w: int, window: int, shift: int) -> Tuple[bool, ...]:
    return tuple(bool((m == 0).all()) for m in _shift_mask_cpu(h, w, window, shift))


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
        self.fast = FastOptions()

    def forward(
        self,
        x: torch.Tensor,
        guidance: Optional[torch.Tensor],
        mask: Optional[torch.Tensor],
        mask_free: Optional[Tuple[bool, ...]] = None,
    ) -> torch.Tensor:
        """Attention within windows.

        Args:
            x: ``[B, T, nW, N, D]`` normalised cost features in windows (N = window^2).
            guidance: ``[B, 1, nW, N, G]`` guidance in the same windows, or None.
            mask: additive ``[nW, N, N]`` mask or None.
            mask_free: optional per-window flags, True where ``mask[w]`` is all zeros
                (lets the 4-D path skip the mask there).
        Returns:
            ``[B, T, nW, N, D]``.
        """
        if self.fast.token_layout:
            q, k, v = self._qkv_fused(x, guidance)
        else:
            heads = self.num_heads

            def split(t):  # [..., N, D] -> [..., heads, N, D/heads]
                return t.unflatten(-1, (heads, -1)).transpose(-2, -3)

            q = split(self.q(x, self.q.project_guidance(guidance)))
            k = split(self.k(x, self.k.project_guidance(guidance)))
            v = split(self.v(x))
        if self.fast.window_attention_4d:
            out = self._attention_4d(q, k, v, mask, mask_free)
        else:
            if mask is not None:
                mask = mask.to(q.dtype)[:, None]  # [nW, 1, N, N] broadcasts over batch, classes and heads
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
            out = out.transpose(-2, -3).flatten(-2)
        return self.proj(out)

    def _qkv_fused(self, x, guidance):
        """q, k, v ``[B, T, nW, heads, N, d]`` (views of one ``[..., N, 3, heads, d]`` buffer) from one GEMM."""
        dim = x.shape[-1]
        weight = torch.cat([self.q.weight[:, :dim], self.k.weight[:, :dim], self.v.weight])
        qkv = F.linear(x, weight)
        if guidance is not None:
            term = torch.cat([self.q.project_guidance(guidance), self.k.project_guidance(guidance),
                              self.v.bias.expand(*guidance.shape[:-1], dim)], dim=-1)
        else:
            term = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        qkv = qkv.add_(term.to(qkv.dtype))
        qkv = qkv.unflatten(-1, (3, self.num_heads, -1))  # [B, T, nW, N, 3, heads, d]
        # unbind (backward: one stack) rather than indexing (backward: a zero-filled copy each)
        return (t.transpose(-2, -3) for t in qkv.unbind(-3))

    def _attention_4d(self, q, k, v, mask, mask_free):
        """SDPA on 4-D ``[batch, heads, N, d]`` tensors; returns ``[B, T, nW, N, D]``."""
        b, t, windows, heads, n, d = q.shape
        if mask is None:
            out = F.scaled_dot_product_attention(
                q.flatten(0, 2), k.flatten(0, 2), v.flatten(0, 2), scale=self.scale)
            return out.view(b, t, windows, heads, n, d).transpose(3, 4).reshape(b, t, windows, n, heads * d)
        mask = mask.to(q.dtype)
        outs = []
        for w, (qw, kw, vw) in enumerate(zip(q.unbind(2), k.unbind(2), v.unbind(2))):
            window_mask = None if (mask_free is not None and mask_free[w]) else mask[w]
            o = F.scaled_dot_product_attention(qw.flatten(0, 1), kw.flatten(0, 1), vw.flatten(0, 1),
                                               attn_mask=window_mask, scale=self.scale)
            outs.append(o.view(b, t, heads, n, d).transpose(2, 3))  # [B, T, N, heads, d]
        return torch.stack(outs, dim=2).flatten(-2)


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
        if self.attn.fast.token_layout:
            return self._forward_tokens(x, guidance, window, shift)
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
        out = self.attn(x_windows, g_windows, mask, _mask_free_windows(h, w, window, shift) if shift else None)
        out = window_reverse(out.flatten(0, 1), window, h, w).view(b, t, h, w, d)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(2, 3))
        x = shortcut + out
        return x + self.mlp(self.norm2(x))

    def _forward_tokens(self, x, guidance, window, shift):
        """Same block on ``[B, T, H, W, D]`` tokens: shift + partition and their inverse are one gather each."""
        b, t, h, w, d = x.shape
        windows, n = (h // window) * (w // window), window * window
        index, inverse = partition_index(h, w, window, shift, x.device)
        x_windows = self.norm1(x).reshape(b * t, h * w, d).index_select(1, index).view(b, t, windows, n, d)
        g_windows = None
        if guidance is not None:
            g_windows = guidance.reshape(b, h * w, -1).index_select(1, index).view(b, 1, windows, n, -1)
        mask = shifted_window_mask(h, w, window, shift, x.device, x.dtype) if shift else None
        out = self.attn(x_windows, g_windows, mask, _mask_free_windows(h, w, window, shift) if shift else None)
        out = out.view(b * t, h * w, d).index_select(1, inverse).view(b, t, h, w, d)
        x = out.add_(x) if out.dtype == torch.promote_types(out.dtype, x.dtype) else out + x
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
