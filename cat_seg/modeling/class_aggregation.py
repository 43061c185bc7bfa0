"""Class aggregation: a transformer over the class axis at every spatial location (spec 2.6).

The cost features of all classes at one (pooled) location form a sequence; text guidance
(projected class embeddings) is concatenated to queries' and keys' input. The sequence is
padded with learned tokens to a fixed length ``pad_len`` (256 in the released models); the
padding tokens are attended to, exactly as in the official code. Without a mask and with
position-independent tokens the layer is permutation-equivariant in the class order.

Speed option ``padding_closed_form`` (:mod:`.fast`): the padding tokens are all the same
vector, so they have the same key and value everywhere; their (discarded) outputs are not
computed and their contribution to the attention of the real classes is added in closed
form (``count`` identical keys). ``token_layout``: input and output in the
``[B, T, H, W, D]`` token layout of the aggregator (channels-last pooling/upsampling).
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .fast import FastOptions
from .spatial_aggregation import GuidedLinear

# (key [H, d], value [H, dv], count): ``count`` identical padding tokens appended to the keys.
Padding = Tuple[torch.Tensor, torch.Tensor, int]


def linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6, padding: Optional[Padding] = None
) -> torch.Tensor:
    """Linear attention with the ``elu(x) + 1`` feature map (official ``LinearAttention``).

    Args:
        q: ``[N, L, H, d]``; k: ``[N, S, H, d]``; v: ``[N, S, H, dv]``.
        padding: optional ``(key [H, d], value [H, dv], count)``: ``count`` more identical
            key/value pairs (same result as appending them to ``k``/``v``).
    Returns:
        ``[N, L, H, dv]`` = ``(phi(q) KV) * Z * S`` with ``KV = sum_s phi(k_s)^T v_s / S`` and
        ``Z = 1 / (phi(q) . sum_s phi(k_s) + eps)``. No ``1/sqrt(d)`` scaling.

    The sums and the normaliser are computed in fp32 (also under autocast); the result has
    the dtype of ``q``. The ``1 / S`` of ``KV`` and the ``S`` factor cancel and are left out
    (``(phi(q) sum_s phi(k_s)^T v_s) * Z``): no ``v / S`` copy, no extra pass over the output.
    """
    out_dtype = q.dtype
    dtype = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        # in-place "+ 1" on elu's fresh output (elu's backward reads its input, not its output)
        q = F.elu(q.to(dtype)).add_(1)
        k = F.elu(k.to(dtype)).add_(1)
        kv = torch.einsum("nshd,nshv->nhdv", k, v.to(dtype))
        k_sum = k.sum(dim=1)
        if padding is not None and padding[2]:
            pad_k = F.elu(padding[0].to(dtype)) + 1
            count = padding[2]
            kv = kv + count * torch.einsum("hd,hv->hdv", pad_k, padding[1].to(dtype))
            k_sum = k_sum + count * pad_k
        z = 1.0 / (torch.einsum("nlhd,nhd->nlh", q, k_sum) + eps)
        return torch.einsum("nlhd,nhdv->nlhv", q, kv).mul_(z.unsqueeze(-1)).to(out_dtype)


def full_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding: Optional[Padding] = None
) -> torch.Tensor:
    """Softmax attention ``softmax(q k^T / sqrt(d)) v`` with the same layout as :func:`linear_attention`.

    ``padding`` as in :func:`linear_attention`: the ``count`` identical keys are one extra key
    whose logit gets ``+ log(count)``.
    """
    mask = None
    if padding is not None and padding[2]:
        n, _, heads, d = k.shape
        k = torch.cat([k, padding[0].to(k.dtype).expand(n, 1, heads, d)], dim=1)
        v = torch.cat([v, padding[1].to(v.dtype).expand(n, 1, heads, v.shape[-1])], dim=1)
        mask = q.new_zeros(1, 1, 1, k.shape[1])  # [N, H, L, S + 1] broadcast
        mask[..., -1] = math.log(padding[2])
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
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

    def forward(
        self,
        x: torch.Tensor,
        guidance: Optional[torch.Tensor],
        padding: Optional[Tuple[torch.Tensor, Optional[torch.Tensor], int]] = None,
    ) -> torch.Tensor:
        """``x [B, L, S, D]`` (L locations, S classes), guidance ``[B, 1, S, G]`` -> ``[B, L, S, D]``.

        ``padding``: optional ``(token [D], guidance [G] or None, count)``: ``count`` copies of
        one (normalised) token with its guidance take part in the attention as keys/values
        (as if appended to ``x``), without computing their own outputs.
        """
        b, locations, length, dim = x.shape
        q = self.q(x, self.q.project_guidance(guidance))
        k = self.k(x, self.k.project_guidance(guidance))
        v = self.v(x)

        def heads(t):
            return t.reshape(b * locations, length, self.num_heads, -1)

        if padding is not None and padding[2]:
            token, token_guidance, count = padding
            pad_k = self.k(token, self.k.project_guidance(token_guidance)).reshape(self.num_heads, -1)
            pad_v = self.v(token).reshape(self.num_heads, -1)
            out = self.attention(heads(q), heads(k), heads(v), padding=(pad_k, pad_v, count))
        else:
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
        self.fast = FastOptions()

    def forward(
        self, x: torch.Tensor, text_guidance: Optional[torch.Tensor], pooling: Sequence[int] = (1, 1)
    ) -> torch.Tensor:
        """Aggregate over classes.

        Args:
            x: cost features ``[B, D, T, H, W]``.
            text_guidance: ``[B, T, G]`` or None.
            pooling: average-pooling kernel ``(ph, pw)`` applied to each class map first.
        Returns:
            ``[B, D, T, H, W]`` (with ``token_layout``: a view of a contiguous ``[B, T, H, W, D]``).
        """
        if self.fast.token_layout:
            return self._forward_tokens(x, text_guidance, pooling)
        b, d, t, h, w = x.shape
        pooled = x
        if tuple(pooling) != (1, 1):
            pooled = F.avg_pool2d(x.flatten(1, 2), kernel_size=tuple(pooling), stride=tuple(pooling))
            pooled = pooled.view(b, d, t, *pooled.shape[-2:])
        ph, pw = pooled.shape[-2:]
        z = pooled.permute(0, 3, 4, 2, 1).reshape(b, ph * pw, t, d)  # [B, L, T, D]
        update = self._update(z, text_guidance)
        update = update.reshape(b, ph, pw, t, d).permute(0, 4, 3, 1, 2)  # [B, D, T, ph, pw]
        if (ph, pw) != (h, w):
            update = F.interpolate(update.flatten(1, 2), size=(h, w), mode="bilinear", align_corners=True)
            update = update.view(b, d, t, h, w)
        return x + update

    def _padding_token(self, dtype: torch.dtype, guidance: Optional[torch.Tensor]):
        """``(normalised padding token [D], its guidance [G] or None)`` for the closed-form padding;
        the guidance is used only when the block has text guidance (``guidance`` not None)."""
        token = self.norm1(self.padding_tokens.to(dtype)).reshape(-1)
        token_guidance = None
        if guidance is not None and self.padding_guidance is not None:
            token_guidance = self.padding_guidance.to(guidance.dtype).reshape(-1)
        return token, token_guidance

    def _update(self, z: torch.Tensor, text_guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """The block's update ``[B, L, T, D]`` of the class sequences ``z`` (padding handled here)."""
        b, locations, t, d = z.shape
        guidance = text_guidance[:, None] if text_guidance is not None else None  # [B, 1, T, G]
        count = self.pad_len - t if self.pad_len and t < self.pad_len else 0
        if count and self.fast.padding_closed_form:
            token, token_guidance = self._padding_token(z.dtype, guidance)
            delta = self.attn(self.norm1(z), guidance, padding=(token, token_guidance, count))
        else:
            if count:
                z = torch.cat([z, self.padding_tokens.to(z.dtype).expand(b, locations, count, d)], dim=2)
                if guidance is not None and self.padding_guidance is not None:
                    pad = self.padding_guidance.to(guidance.dtype).expand(b, 1, count, -1)
                    guidance = torch.cat([guidance, pad], dim=2)
            delta = self.attn(self.norm1(z), guidance)
        delta = delta + self.mlp(self.norm2(z + delta))
        update = (z + delta) if self.residual_quirk else delta
        return update[:, :, :t]

    def _forward_tokens(self, x, text_guidance, pooling):
        """:meth:`forward` computed in the ``[B, T, H, W, D]`` token layout."""
        b, d, t, h, w = x.shape
        tokens = x.permute(0, 2, 3, 4, 1)  # [B, T, H, W, D] (contiguous in token layout)
        pooled = tokens
        if tuple(pooling) != (1, 1):
            maps = tokens.reshape(b * t, h, w, d).permute(0, 3, 1, 2)  # channels-last [BT, D, H, W]
            pooled = F.avg_pool2d(maps, kernel_size=tuple(pooling), stride=tuple(pooling)).permute(0, 2, 3, 1)
        ph, pw = pooled.shape[-3:-1]
        z = pooled.reshape(b, t, ph * pw, d)  # [B, T, L, D]
        chunk = self.fast.chunk_size(x.device)
        if chunk and (ph, pw) == (h, w) and not torch.is_grad_enabled() and self.attn.attention is linear_attention:
            # inference: the class attention is independent per location -> chunks of locations
            # with about ``chunk * H * W`` tokens, like the per-class chunks of the other blocks
            locations = max(1, chunk * ph * pw // t)
            if locations < ph * pw or b > 1:
                out = tokens.new_empty(b, t, ph * pw, d)
                for i in range(b):
                    for start in range(0, ph * pw, locations):
                        part = z[i:i + 1, :, start:start + locations]
                        update = self._update_linear_tokens(part, text_guidance[i:i + 1] if text_guidance is not None else None)
                        torch.add(part, update, out=out[i:i + 1, :, start:start + locations])
                return out.view(b, t, h, w, d).permute(0, 4, 1, 2, 3)
        if self.attn.attention is linear_attention:
            update = self._update_linear_tokens(z, text_guidance)  # [B, T, L, D] (any strides)
        else:
            update = self._update(z.transpose(1, 2).contiguous(), text_guidance).transpose(1, 2)
        if (ph, pw) != (h, w):
            update = update.reshape(b * t, ph, pw, d).permute(0, 3, 1, 2)  # channels-last [BT, D, ph, pw]
            update = F.interpolate(update, size=(h, w), mode="bilinear", align_corners=True)
            update = update.permute(0, 2, 3, 1).reshape(b, t, h, w, d)
        else:
            update = update.reshape(b, t, h, w, d) if update.is_contiguous() else update.unflatten(2, (h, w))
        return (tokens + update).permute(0, 4, 1, 2, 3)

    def _update_linear_tokens(self, z: torch.Tensor, text_guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """:meth:`_update` for linear attention, on ``z [B, T, L, D]`` without permuting it.

        Per image and location the class attention is two small GEMMs over strided views of
        one q/k/v buffer. With ``phi = elu + 1``: ``sum_s phi(k_s) v_s^T = elu(K)^T V +
        1 colsum(V)``, ``sum_s phi(k_s) = colsum(elu(K)) + S`` and ``phi(q) M = elu(q) M +
        colsum(M)``: only ``elu`` is applied to the big tensors. Numerator and normaliser come
        out of one GEMM (the per-head sums are extra columns of the block-diagonal ``KV``);
        the column sums are accumulated in fp32.
        """
        attn = self.attn
        b, t, locations, d = z.shape
        heads = attn.num_heads
        count = self.pad_len - t if self.pad_len and t < self.pad_len else 0
        if count and not self.fast.padding_closed_form:  # reference padding: append the tokens
            z = torch.cat([z, self.padding_tokens.to(z.dtype).expand(b, count, locations, d)], dim=1)
            if text_guidance is not None and self.padding_guidance is not None:
                pad = self.padding_guidance.to(text_guidance.dtype).expand(b, count, -1)
                text_guidance = torch.cat([text_guidance, pad], dim=1)
            length, count = t + count, 0
        else:
            length = t + count
        weight = torch.cat([attn.q.weight[:, :d], attn.k.weight[:, :d], attn.v.weight])
        zn = self.norm1(z)
        qkv = F.linear(zn, weight)  # [B, S, L, 3D]
        term = torch.cat([attn.q.project_guidance(text_guidance), attn.k.project_guidance(text_guidance),
                          attn.v.bias.expand(*(text_guidance.shape[:-1] if text_guidance is not None else ()), d)],
                         dim=-1)
        qkv = qkv.add_(term.to(qkv.dtype).unsqueeze(-2) if term.dim() > 1 else term.to(qkv.dtype))
        qk, v = qkv.split([2 * d, d], dim=-1)  # split/unbind: cheap backward (no zero-filled copies)
        e_q, e_k = F.elu(qk).split(d, dim=-1)  # [B, S, L, D]
        acc = torch.promote_types(qkv.dtype, torch.float32)
        head_of = torch.arange(d, device=z.device) // (d // heads)
        block = (head_of[:, None] == head_of[None, :]).to(acc)  # [D, D] same-head mask
        heads_onehot = (head_of[:, None] == torch.arange(heads, device=z.device)[None, :]).to(acc)  # [D, H]
        pad_kv = pad_k = None
        if count:
            token, token_guidance = self._padding_token(z.dtype, text_guidance)
            pad_k = F.elu(attn.k(token, attn.k.project_guidance(token_guidance)).to(acc)) + 1
            pad_v = attn.v(token).to(acc)
            pad_kv = count * pad_k[:, None] * pad_v[None, :]
            pad_k = count * pad_k
        out = []
        for eqi, eki, vi in zip(e_q.unbind(0), e_k.unbind(0), v.unbind(0)):
            ek = eki.transpose(0, 1)  # [L, S, D] strided views of the qkv buffer
            vi = vi.transpose(0, 1)
            kv = torch.bmm(ek.transpose(1, 2), vi).to(acc)  # [L, D, D] = elu(K)^T V
            kv = kv + vi.sum(dim=1, dtype=acc)[:, None, :]  # + 1 colsum(V)
            k_sum = ek.sum(dim=1, dtype=acc) + length - count  # colsum(phi(K)) over the real classes
            if count:
                kv = kv + pad_kv
                k_sum = k_sum + pad_k
            ext = torch.cat([kv * block, k_sum[:, :, None] * heads_onehot], dim=2)  # [L, D, D + H]
            shift = ext.sum(dim=1, keepdim=True)  # phi(q) M = elu(q) M + colsum(M)
            num = torch.baddbmm(shift.to(qkv.dtype), eqi.transpose(0, 1), ext.to(qkv.dtype))  # [L, S, D + H]
            den = num[..., d:].to(acc) + 1e-6
            att = (num[..., :d].to(acc).unflatten(-1, (heads, -1)) / den[..., None]).flatten(-2)
            out.append(att.to(qkv.dtype)[:, :t] if att.shape[1] != t else att.to(qkv.dtype))
        delta = torch.stack(out).transpose(1, 2)  # [B, T, L, D] view of [B, L, T, D]
        if z.shape[1] != t:
            z = z[:, :t]
        if self.residual_quirk:
            hidden = z + delta
            return hidden + self.mlp(self.norm2(hidden))
        return delta + self.mlp(self.norm2(z + delta))
