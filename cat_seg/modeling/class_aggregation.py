"""Class aggregation: a transformer over the class axis at every spatial location.

The cost features of all classes at one (pooled) location form a sequence; the text
guidance (projected class embeddings) enters the queries' and keys' input. As in the
official model the sequence is padded with learned tokens to a fixed length ``pad_len``
(256 in the released models) and the padding tokens are attended to. The padding tokens are
all the same vector, so they have one key and one value: their contribution to the
attention of the real classes is added in closed form (``count`` identical keys) and their
own (discarded) outputs are never computed. Without padding the layer is
permutation-equivariant in the class order. See ``docs/architecture.md`` ("Class
aggregation").

Layout: input and output are ``[B, T, H, W, D]`` tokens; the class sequences are
``[B, T, L, D]`` (L locations) views of them, never permuted.
"""
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .norms import LayerNorm
from .spatial_aggregation import GuidedLinear, fused_qkv


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad_k: Optional[torch.Tensor] = None,
                     pad_v: Optional[torch.Tensor] = None, count: int = 0, eps: float = 1e-6) -> torch.Tensor:
    """Linear attention over classes with the ``phi = elu(x) + 1`` feature map (no ``1/sqrt(d)`` scale).

    Args:
        q, k, v: ``[B, S, L, H, d]`` (S classes, L locations, H heads; any strides).
        pad_k, pad_v: ``[H, d]`` key and value of the padding token, ``count`` copies of which
            are appended to the keys/values (closed form).
    Returns:
        ``[B, S, L, H, d]`` = ``phi(q) KV / (phi(q) . K_sum + eps)`` with
        ``KV = sum_s phi(k_s) v_s^T`` and ``K_sum = sum_s phi(k_s)`` per location and head.

    Only the feature map and two GEMMs per image touch the big ``[S, L, D]`` tensors, in their
    own dtype (bf16 under autocast; no fp32 copies of q/k/v): the heads are one block-diagonal
    ``[D, D]`` matrix ``KV`` per location, and the normaliser comes out of the same GEMM as
    extra columns (``K_sum`` per head). The per-location sums and the division are fp32.
    (The official code divides ``v`` by ``S`` and multiplies the output by ``S``; the factors
    cancel and are left out.)
    """
    b, s, locations, heads, d = q.shape
    dim = heads * d
    dtype = q.dtype
    acc = torch.promote_types(dtype, torch.float32)
    head_of = torch.arange(dim, device=q.device) // d
    same_head = (head_of[:, None] == head_of[None, :]).to(acc)  # [D, D] block-diagonal mask
    head_columns = (head_of[:, None] == torch.arange(heads, device=q.device)[None, :]).to(acc)  # [D, H]
    # phi in place on elu's fresh output (elu's backward reads its input, not its output)
    phi_q, phi_k = F.elu(q).add_(1).flatten(-2), F.elu(k).add_(1).flatten(-2)  # [B, S, L, D]
    v = v.flatten(-2)
    if count:
        pad_phi = F.elu(pad_k.to(acc)).add_(1).reshape(dim)
        pad_kv = count * pad_phi[:, None] * pad_v.to(acc).reshape(1, dim)
    out = []
    for pq, pk, vi in zip(phi_q.unbind(0), phi_k.unbind(0), v.unbind(0)):  # one image: [S, L, D]
        pq, pk, vi = pq.transpose(0, 1), pk.transpose(0, 1), vi.transpose(0, 1)  # [L, S, D] strided views
        kv = torch.bmm(pk.transpose(1, 2), vi).to(acc)  # [L, D, D]
        k_sum = pk.sum(dim=1, dtype=acc)  # [L, D]
        if count:
            kv = kv + pad_kv
            k_sum = k_sum + count * pad_phi
        ext = torch.cat([kv * same_head, k_sum[:, :, None] * head_columns], dim=2)  # [L, D, D + H]
        num = torch.bmm(pq, ext.to(dtype))  # [L, S, D + H]
        z = (num[..., dim:].to(acc) + eps).reciprocal_()  # [L, S, H]
        att = torch.mul(num[..., :dim].unflatten(-1, (heads, d)), z[..., None])  # in acc (type promotion)
        out.append(att.to(dtype))  # [L, S, H, d]
    # one image (inference runs the class blocks per image): a view, not a copy of its output
    stacked = out[0].unsqueeze(0) if len(out) == 1 else torch.stack(out)  # [B, L, S, H, d]
    return stacked.transpose(1, 2)  # [B, S, L, H, d]


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad_k: Optional[torch.Tensor] = None,
                   pad_v: Optional[torch.Tensor] = None, count: int = 0) -> torch.Tensor:
    """Softmax attention over classes, ``softmax(q k^T / sqrt(d)) v``, same layout as :func:`linear_attention`.

    The ``count`` identical padding keys are one extra key whose logit gets ``+ log(count)``.
    """
    b, s, locations, heads, d = q.shape
    q, k, v = (t.permute(0, 2, 3, 1, 4) for t in (q, k, v))  # [B, L, H, S, d]
    mask = None
    if count:
        k = torch.cat([k, pad_k.to(k.dtype)[:, None].expand(b, locations, heads, 1, d)], dim=3)
        v = torch.cat([v, pad_v.to(v.dtype)[:, None].expand(b, locations, heads, 1, v.shape[-1])], dim=3)
        mask = torch.zeros(k.shape[3], device=q.device, dtype=q.dtype)
        mask[-1] = math.log(count)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.permute(0, 3, 1, 2, 4)


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
            raise ValueError(f"hidden dim {dim} is not divisible by {num_heads} heads "
                             "(MODEL.SEM_SEG_HEAD.HIDDEN_DIMS, NUM_HEADS)")
        self.num_heads = num_heads
        self.attention = ATTENTION_FUNCTIONS[attention_type]
        self.q = GuidedLinear(dim, guidance_dim, dim)
        self.k = GuidedLinear(dim, guidance_dim, dim)
        self.v = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor], padding_token: Optional[torch.Tensor] = None,
                padding_guidance: Optional[torch.Tensor] = None, count: int = 0) -> torch.Tensor:
        """``x [B, S, L, D]`` (normalised), guidance ``[B, S, 1, G]`` or None -> ``[B, S, L, D]``.

        ``count`` copies of the normalised ``padding_token [D]`` (with ``padding_guidance
        [G]``) take part as keys/values, as if appended to the sequence.
        """
        b, s, locations, dim = x.shape
        qkv = fused_qkv(self.q, self.k, self.v, x, guidance).unflatten(-1, (3, self.num_heads, -1))
        q, k, v = qkv.unbind(-3)  # [B, S, L, H, d] strided views of one buffer
        pad_k = pad_v = None
        if count:
            pad_k = self.k(padding_token, padding_guidance).view(self.num_heads, -1)
            pad_v = self.v(padding_token).view(self.num_heads, -1)
        return self.attention(q, k, v, pad_k, pad_v, count).reshape(b, s, locations, dim)


class ClassAggregation(nn.Module):
    """One class-aggregation layer.

    Args:
        dim: hidden dim D.
        guidance_dim: text-guidance channels (0 = none).
        num_heads: attention heads.
        attention_type: ``linear`` (released models) or ``full``.
        pad_len: sequence length after padding with learned tokens (0/None = no padding).
        residual_quirk: keep the official residual, where the layer's output adds its
            (pooled) input a second time, ``x + up(pool(x) + delta)``; False gives the plain
            residual ``x + up(delta)`` (``docs/architecture.md``, "Behaviours kept on purpose").

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
        self.norm1 = LayerNorm(dim)
        self.attn = ClassAttention(dim, guidance_dim, num_heads, attention_type)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.ReLU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x: torch.Tensor, text_guidance: Optional[torch.Tensor], pooling: Sequence[int] = (1, 1),
                location_chunk: int = 0) -> torch.Tensor:
        """Aggregate over classes.

        Args:
            x: cost features ``[B, T, H, W, D]``.
            text_guidance: ``[B, T, G]`` or None.
            pooling: average-pooling kernel ``(ph, pw)`` applied to each class map first; the
                update is upsampled back (bilinear, align_corners=True).
            location_chunk: at inference without pooling, run the (per-location independent)
                layer per image on chunks of at most this many locations (0 = all at once;
                bounds the memory of the q/k/v and MLP temporaries). Not differentiable.
        Returns:
            ``[B, T, H, W, D]``.
        """
        b, t, h, w, d = x.shape
        pooled = x
        if tuple(pooling) != (1, 1):
            maps = x.reshape(b * t, h, w, d).permute(0, 3, 1, 2)  # channels-last [BT, D, H, W]
            pooled = F.avg_pool2d(maps, kernel_size=tuple(pooling), stride=tuple(pooling)).permute(0, 2, 3, 1)
        ph, pw = pooled.shape[-3:-1]
        z = pooled.reshape(b, t, ph * pw, d)  # [B, T, L, D]
        guidance = text_guidance[:, :, None] if text_guidance is not None else None  # [B, T, 1, G]
        if (ph, pw) == (h, w):
            if location_chunk and (location_chunk < h * w or b > 1):
                # inference: one image and at most location_chunk locations at a time, so the
                # q/k/v and MLP temporaries stay small (in cache on a CPU)
                out = torch.empty_like(z)
                for i in range(b):
                    image_guidance = guidance[i:i + 1] if guidance is not None else None
                    for start in range(0, h * w, location_chunk):
                        part = z[i:i + 1, :, start:start + location_chunk]
                        torch.add(part, self.update(part, image_guidance),
                                  out=out[i:i + 1, :, start:start + location_chunk])
                return out.view(b, t, h, w, d)
            return (z + self.update(z, guidance)).view(b, t, h, w, d)
        update = self.update(z, guidance).reshape(b * t, ph, pw, d).permute(0, 3, 1, 2)  # channels-last
        update = F.interpolate(update, size=(h, w), mode="bilinear", align_corners=True)
        return x + update.permute(0, 2, 3, 1).reshape(b, t, h, w, d)

    def update(self, z: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """What the layer adds to the class sequences ``z [B, T, L, D]`` (guidance ``[B, T, 1, G]``):
        ``[B, T, L, D]``, the attention and MLP branches; with ``residual_quirk`` (the official
        layer) it also holds ``z`` once more, so the layer's output ``z + update`` counts the
        input twice."""
        t = z.shape[1]
        count = self.pad_len - t if t < self.pad_len else 0
        token = token_guidance = None
        if count:
            token = self.norm1(self.padding_tokens.to(z.dtype)).reshape(-1)
            if guidance is not None and self.padding_guidance is not None:
                # [1, 1, G] (broadcasts like [G]); not a reshaped view: under no_grad a view of a
                # parameter claims requires_grad without a gradient function, which module hooks
                # (torch.utils.module_tracker, used by FlopCounterMode) cannot handle
                token_guidance = self.padding_guidance.to(guidance.dtype)
        delta = self.attn(self.norm1(z), guidance, token, token_guidance, count)
        hidden = z + delta
        mlp = self.mlp(self.norm2(hidden))
        return hidden + mlp if self.residual_quirk else delta + mlp
