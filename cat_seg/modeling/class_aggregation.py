"""Class aggregation: a transformer over the class axis at every spatial location (spec 2.6).

The cost features of all classes at one (pooled) location form a sequence; text guidance
(projected class embeddings) is concatenated to queries' and keys' input. The sequence is
padded with learned tokens to a fixed length ``pad_len`` (256 in the released models); the
padding tokens are attended to, exactly as in the official code. Without a mask and with
position-independent tokens the layer is permutation-equivariant in the class order.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .spatial_aggregation import GuidedLinear


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Linear attention with the ``elu(x) + 1`` feature map (official ``LinearAttention``).

    Args:
        q: ``[N, L, H, d]``; k: ``[N, S, H, d]``; v: ``[N, S, H, dv]``.
    Returns:
        ``[N, L, H, dv]`` = ``(phi(q) KV) * Z * S`` with ``KV = sum_s phi(k_s)^T v_s / S`` and
        ``Z = 1 / (phi(q) . sum_s phi(k_s) + eps)``. No ``1/sqrt(d)`` scaling.
    """
    q = F.elu(q) + 1
    k = F.elu(k) + 1
    length = v.shape[1]
    kv = torch.einsum("nshd,nshv->nhdv", k, v / length)
    z = 1.0 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + eps)
    return torch.einsum("nlhd,nhdv->nlhv", q, kv) * (z * length).unsqueeze(-1)


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention ``softmax(q k^T / sqrt(d)) v`` with the same layout as :func:`linear_attention`."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


ATTENTION_FUNCTIONS = {"linear": linear_attention, "full": full_attention}


class ClassAttention(nn.Module):
    """Multi-head attention over classes with guidance in queries and keys; no output projection.

    State-dict keys: ``q``, ``k`` (``[dim, dim + guidance_dim]``), ``v`` (``[dim, dim]``).
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, attention_type: str = "linear"):
        super().__init__()
        if attention_type not in ATTENTION_FUNCTIONS:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.ATTENTION_TYPE={attention_type!r} is unknown; expected one of "
                f"{sorted(ATTENTION_FUNCTIONS)}"
            )
        if dim % num_heads:
            raise ValueError(f"hidden dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attention = ATTENTION_FUNCTIONS[attention_type]
        self.q = GuidedLinear(dim, guidance_dim, dim)
        self.k = GuidedLinear(dim, guidance_dim, dim)
        self.v = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """``x [B, L, S, D]`` (L locations, S classes), guidance ``[B, 1, S, G]`` -> ``[B, L, S, D]``."""
        b, locations, length, dim = x.shape
        q = self.q(x, self.q.project_guidance(guidance))
        k = self.k(x, self.k.project_guidance(guidance))
        v = self.v(x)

        def heads(t):
            return t.reshape(b * locations, length, self.num_heads, -1)

        out = self.attention(heads(q), heads(k), heads(v))
        return out.reshape(b, locations, length, dim)


class ClassAggregation(nn.Module):
    """One class-aggregation layer.

    Args:
        dim: hidden dim D.
        guidance_dim: text-guidance channels (0 = none).
        num_heads: attention heads.
        attention_type: ``linear`` (released models) or ``full``.
        pad_len: sequence length after padding with learned tokens (0/None = no padding).
        residual_quirk: reproduce quirk Q4 (the output adds the pooled input a second time:
            ``x + up(pool(x) + delta)``); False gives the plain residual ``x + up(delta)``.

    State-dict keys: ``padding_tokens``, ``padding_guidance`` (``[1, 1, D]``/``[1, 1, G]``),
    ``norm1``, ``attn``, ``norm2``, ``mlp``.
    """

    def __init__(
        self,
        dim: int,
        guidance_dim: int,
        num_heads: int,
        attention_type: str = "linear",
        pad_len: Optional[int] = 256,
        residual_quirk: bool = True,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.pad_len = pad_len or 0
        self.residual_quirk = residual_quirk
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, dim)) if self.pad_len else None
        self.padding_guidance = (
            nn.Parameter(torch.zeros(1, 1, guidance_dim)) if self.pad_len and guidance_dim > 0 else None
        )
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClassAttention(dim, guidance_dim, num_heads, attention_type)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.ReLU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(
        self, x: torch.Tensor, text_guidance: Optional[torch.Tensor], pooling: Sequence[int] = (1, 1)
    ) -> torch.Tensor:
        """Aggregate over classes.

        Args:
            x: cost features ``[B, D, T, H, W]``.
            text_guidance: ``[B, T, G]`` or None.
            pooling: average-pooling kernel ``(ph, pw)`` applied to each class map first.
        Returns:
            ``[B, D, T, H, W]``.
        """
        b, d, t, h, w = x.shape
        pooled = x
        if tuple(pooling) != (1, 1):
            pooled = F.avg_pool2d(x.flatten(1, 2), kernel_size=tuple(pooling), stride=tuple(pooling))
            pooled = pooled.view(b, d, t, *pooled.shape[-2:])
        ph, pw = pooled.shape[-2:]
        z = pooled.permute(0, 3, 4, 2, 1).reshape(b, ph * pw, t, d)  # [B, L, T, D]
        guidance = text_guidance[:, None] if text_guidance is not None else None  # [B, 1, T, G]
        if self.pad_len and t < self.pad_len:
            z = torch.cat([z, self.padding_tokens.to(z.dtype).expand(b, ph * pw, self.pad_len - t, d)], dim=2)
            if guidance is not None and self.padding_guidance is not None:
                pad = self.padding_guidance.to(guidance.dtype).expand(b, 1, self.pad_len - t, -1)
                guidance = torch.cat([guidance, pad], dim=2)
        delta = self.attn(self.norm1(z), guidance)
        delta = delta + self.mlp(self.norm2(z + delta))
        update = (z + delta) if self.residual_quirk else delta
        update = update[:, :, :t].reshape(b, ph, pw, t, d).permute(0, 4, 3, 1, 2)  # [B, D, T, ph, pw]
        if (ph, pw) != (h, w):
            update = F.interpolate(update.flatten(1, 2), size=(h, w), mode="bilinear", align_corners=True)
            update = update.view(b, d, t, h, w)
        return x + update
