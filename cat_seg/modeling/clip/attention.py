"""Multi-head attention with separate q/k/v projection weights.

CAT-Seg fine-tunes only the query and value projection *weights* of every CLIP block
(``attention`` mode, ``docs/architecture.md``). With PyTorch's packed ``in_proj_weight`` that cannot be
expressed as a set of trainable parameters, so every ``nn.MultiheadAttention`` of the CLIP
towers is replaced by :class:`SplitQKVAttention`, which stores ``q_proj_weight``,
``k_proj_weight``, ``v_proj_weight`` (each ``[W, W]``), the packed ``in_proj_bias`` ``[3W]``
and ``out_proj``: exactly the parameter names of the official checkpoints. The forward is
ordinary multi-head attention computed with ``scaled_dot_product_attention``.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class SplitQKVAttention(nn.Module):
    """Drop-in replacement of ``nn.MultiheadAttention`` (self-attention use) with split weights.

    Args:
        embed_dim: model width ``W``.
        num_heads: number of heads (``W`` must be divisible by it).
        batch_first: input layout, ``[N, L, W]`` if True else ``[L, N, W]``.
    """

    def __init__(self, embed_dim: int, num_heads: int, batch_first: bool = True):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.batch_first = batch_first
        self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim))
        self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim))
        self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        for weight in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            nn.init.xavier_uniform_(weight)

    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention) -> "SplitQKVAttention":
        """Build from a packed ``nn.MultiheadAttention``, copying its weights."""
        module = cls(mha.embed_dim, mha.num_heads, batch_first=mha.batch_first)
        with torch.no_grad():
            q, k, v = unpack_qkv(mha.in_proj_weight)
            module.q_proj_weight.copy_(q)
            module.k_proj_weight.copy_(k)
            module.v_proj_weight.copy_(v)
            module.in_proj_bias.copy_(mha.in_proj_bias)
            module.out_proj.load_state_dict(mha.out_proj.state_dict())
        return module.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)

    def project(self, x: torch.Tensor, which: str) -> torch.Tensor:
        """Input projection ``x @ W_which^T + b_which`` for ``which`` in ``q``, ``k``, ``v``."""
        index = "qkv".index(which)
        weight = getattr(self, f"{which}_proj_weight")
        bias = self.in_proj_bias[index * self.embed_dim:(index + 1) * self.embed_dim]
        return F.linear(x, weight, bias)

    def forward(
        self,
        query: torch.Tensor,
        key: Optional[torch.Tensor] = None,
        value: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        need_weights: bool = False,
        attn_mask: Optional[torch.Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tuple[torch.Tensor, None]:
        """Attention of ``query`` over ``key``/``value`` (default: self-attention), with the
        arguments and mask conventions of ``nn.MultiheadAttention.forward``.

        Shapes (batch_first): ``[N, L, W]`` query, ``[N, S, W]`` key/value, ``[N, L, W]`` out.
        ``attn_mask`` ``[L, S]`` or ``[N * heads, L, S]`` and ``key_padding_mask`` ``[N, S]``
        are additive float masks or boolean masks where True marks a position that may NOT be
        attended (``nn.MultiheadAttention``'s meaning, the opposite of
        ``scaled_dot_product_attention``'s). ``is_causal`` without ``attn_mask`` applies the
        causal mask; with one, ``attn_mask`` is taken as that mask (as torch does). Returns
        ``(output, None)``: attention weights are never computed (``need_weights=True`` is an
        error), so ``average_attn_weights`` has nothing to act on.
        """
        if need_weights:
            raise ValueError("SplitQKVAttention does not return attention weights (need_weights=False)")
        key = query if key is None else key
        value = key if value is None else value
        self_attention = key is query and value is query
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, length, _ = query.shape
        heads, head_dim = self.num_heads, self.embed_dim // self.num_heads

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, -1, heads, head_dim).transpose(1, 2)

        if self_attention:  # one GEMM for q, k and v
            weight = torch.cat([self.q_proj_weight, self.k_proj_weight, self.v_proj_weight])
            qkv = F.linear(query, weight, self.in_proj_bias).reshape(n, length, 3, heads, head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [N, heads, L, head_dim]
        else:
            q = split_heads(self.project(query, "q"))
            k = split_heads(self.project(key, "k"))
            v = split_heads(self.project(value, "v"))
        mask = _additive_mask(attn_mask, key_padding_mask, n, heads, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def _additive_mask(attn_mask: Optional[torch.Tensor], key_padding_mask: Optional[torch.Tensor], batch: int,
                   heads: int, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """``nn.MultiheadAttention``'s ``attn_mask`` (``[L, S]`` / ``[N * heads, L, S]``) and
    ``key_padding_mask`` (``[N, S]``), each boolean (True = not attended) or additive float,
    as one additive mask of ``dtype`` that broadcasts to ``[N, heads, L, S]`` (None without
    either)."""
    def additive(mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
        return mask.to(dtype)

    combined = None
    if attn_mask is not None:
        combined = additive(attn_mask)
        if combined.dim() == 3:  # [N * heads, L, S]
            combined = combined.view(batch, heads, *combined.shape[-2:])
    if key_padding_mask is not None:
        padding = additive(key_padding_mask).view(batch, 1, 1, -1)
        combined = padding if combined is None else combined + padding
    return combined


def replace_multihead_attention(module: nn.Module) -> int:
    """Replace every ``nn.MultiheadAttention`` below ``module`` by :class:`SplitQKVAttention`.

    Returns the number of modules replaced.
    """
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.MultiheadAttention):
            setattr(module, name, SplitQKVAttention.from_multihead_attention(child))
            count += 1
        else:
            count += replace_multihead_attention(child)
    return count


def unpack_qkv(packed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The q, k and v parts ``[E, ...]`` of a packed input projection ``[3E, ...]`` (weight or
    bias), in ``nn.MultiheadAttention``'s layout: q rows first, then k, then v. The one
    description of that layout (the CLIP towers, their checkpoints and the official ones)."""
    return packed.chunk(3, dim=0)


def split_attention_weights(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Convert packed ``*.in_proj_weight`` entries into ``*.{q,k,v}_proj_weight`` entries.

    Other keys are passed through unchanged (a new dict is returned).
    """
    out = {}
    for key, value in state_dict.items():
        if key.endswith("in_proj_weight"):
            prefix = key[: -len("in_proj_weight")]
            for name, chunk in zip("qkv", unpack_qkv(value)):
                out[f"{prefix}{name}_proj_weight"] = chunk
        else:
            out[key] = value
    return out
