"""The cost aggregator: cost volume -> embedding -> (spatial, class) layers -> decoder.

This is the official ``sem_seg_head.predictor.transformer`` module (spec 2), split over
:mod:`.cost_volume`, :mod:`.spatial_aggregation`, :mod:`.class_aggregation` and
:mod:`.decoder`.

Speed options (:mod:`.fast`): ``token_layout`` (the class maps are kept as a contiguous
``[B, T, H, W, D]`` tensor; modules exchange ``[B, D, T, H, W]`` views of it),
``class_chunk_size`` (per-class spatial blocks and decoder on chunks of classes at
inference) and ``checkpoint_activations`` (training: per-class blocks recomputed in the
backward pass, chunk by chunk). The cost volume and the class selection are always computed
in fp32, also under autocast.
"""
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .class_aggregation import ClassAggregation
from .cost_volume import cosine_cost_volume, expand_text, scatter_class_logits, select_top_classes
from .decoder import CostDecoder
from .fast import FastOptions
from .spatial_aggregation import SpatialAggregation


class AggregatorLayer(nn.Module):
    """Spatial aggregation then class aggregation (keys ``spatial``, ``classes``)."""

    def __init__(self, dim, appearance_dim, text_dim, num_heads, window, attention_type, pad_len, residual_quirk):
        super().__init__()
        self.spatial = SpatialAggregation(dim, appearance_dim, num_heads, window)
        self.classes = ClassAggregation(dim, text_dim, num_heads, attention_type, pad_len, residual_quirk)

    def forward(self, x, appearance_guidance, text_guidance, pooling):
        x = self.spatial(x, appearance_guidance)
        return self.classes(x, text_guidance, pooling)


class Aggregator(nn.Module):
    """CAT-Seg cost aggregation and decoding.

    Args:
        text_dim: CLIP joint embedding dim C (text features / dense image embeddings).
        appearance_dim: channels of the appearance-guidance input (C for CLIP dense features).
        num_templates: P, prompt templates per class (cost-embedding input channels).
        hidden_dim: D (128).
        text_guidance_proj_dim, appearance_guidance_proj_dim: guidance projections (128).
        decoder_dims, decoder_guidance_dims, decoder_guidance_proj_dims: decoder
            channels ([64, 32]), decoder-guidance input ([256, 128]) and projected ([32, 16]).
        num_layers, num_heads, window: aggregator depth, heads, Swin window.
        attention_type: class attention, ``linear`` or ``full``.
        pad_len: class-sequence length (256); larger vocabularies are pruned to the top
            ``pad_len`` classes per image (0 = no padding, no pruning).
        residual_quirk: see :class:`ClassAggregation`.
        fp32_cost_embedding: at inference under autocast, compute the cost embedding in fp32
            and keep its fp32 output, so the per-class maps stay fp32 through the residual
            additions of the aggregator layers (their linear/conv layers still compute in the
            autocast dtype). Classes with similar names can differ in cosine score by less
            than bf16's spacing (2^-9 ~ 0.002 between 0.25 and 0.5); rounding erases that.
        fp32_last_decoder_block: see :class:`CostDecoder` (``fp32_last_block``).
    """

    def __init__(
        self,
        *,
        text_dim: int,
        appearance_dim: int,
        num_templates: int = 1,
        hidden_dim: int = 128,
        text_guidance_proj_dim: int = 128,
        appearance_guidance_proj_dim: int = 128,
        decoder_dims: Sequence[int] = (64, 32),
        decoder_guidance_dims: Sequence[int] = (256, 128),
        decoder_guidance_proj_dims: Sequence[int] = (32, 16),
        num_layers: int = 2,
        num_heads: int = 4,
        window: int = 12,
        attention_type: str = "linear",
        pad_len: int = 256,
        residual_quirk: bool = True,
        fp32_cost_embedding: bool = False,
        fp32_last_decoder_block: bool = False,
    ):
        super().__init__()
        self.pad_len = pad_len
        self.fp32_cost_embedding = fp32_cost_embedding
        self.cost_embed = nn.Conv2d(num_templates, hidden_dim, kernel_size=7, stride=1, padding=3)
        self.layers = nn.ModuleList(
            AggregatorLayer(hidden_dim, appearance_guidance_proj_dim, text_guidance_proj_dim, num_heads, window,
                            attention_type, pad_len, residual_quirk)
            for _ in range(num_layers)
        )
        self.appearance_guidance_proj = (
            nn.Sequential(nn.Conv2d(appearance_dim, appearance_guidance_proj_dim, 3, padding=1), nn.ReLU())
            if appearance_guidance_proj_dim > 0 else None
        )
        self.text_guidance_proj = (
            nn.Sequential(nn.Linear(text_dim, text_guidance_proj_dim), nn.ReLU()) if text_guidance_proj_dim > 0 else None
        )
        self.decoder_guidance_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, p, 3, padding=1), nn.ReLU())
            for d, p in zip(decoder_guidance_dims, decoder_guidance_proj_dims)
        )
        self.decoder = CostDecoder(hidden_dim, decoder_dims, decoder_guidance_proj_dims,
                                   fp32_last_block=fp32_last_decoder_block)
        self.fast = FastOptions()

    @property
    def upsampling(self) -> int:
        return self.decoder.upsampling

    def embed_cost(self, cost_volume: torch.Tensor) -> torch.Tensor:
        """``[B, P, T, H, W]`` -> ``[B, D, T, H, W]`` (7x7 conv on each class map)."""
        b, p, t, h, w = cost_volume.shape
        x = cost_volume.transpose(1, 2).reshape(b * t, p, h, w)
        if self.fp32_cost_embedding and not self.training and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                x = self.cost_embed(_full_precision(x))
        else:
            x = self.cost_embed(x)
        if self.fast.token_layout:  # [B, T, H, W, D] storage, returned as a [B, D, T, H, W] view
            return x.permute(0, 2, 3, 1).contiguous().view(b, t, h, w, -1).permute(0, 4, 1, 2, 3)
        return x.view(b, t, -1, h, w).transpose(1, 2)

    def _chunk_size(self, num_classes: int, device: torch.device) -> int:
        """Classes per chunk for the per-class blocks (0 = no chunking)."""
        if torch.is_grad_enabled() and self.training:
            if self.fast.checkpoint_activations:
                return max(self.fast.class_chunk_size, 0) or num_classes  # at least one image per chunk
            return 0
        chunk = self.fast.chunk_size(device)
        if not chunk or chunk >= num_classes:
            return 0
        return -(-num_classes // -(-num_classes // chunk))  # balanced: equal chunks of <= chunk classes

    def _per_class(self, fn: Callable, x: torch.Tensor, guidance: Sequence, chunk: int, decoder: bool = False):
        """Apply ``fn(x_chunk, *guidance_chunk)`` to chunks of (one image, <= ``chunk`` classes).

        ``x`` is ``[B, D, T, H, W]``; ``guidance`` holds per-image tensors ``[B, ...]`` (or
        None). ``fn`` returns ``[1, D, c, H, W]`` maps (spatial blocks; reassembled in the
        ``[B, T, H, W, D]`` token layout) or, with ``decoder``, ``[1, c, H', W']`` logits. With
        checkpointing (training) each chunk is recomputed in the backward pass.
        """
        batch, num_classes = x.shape[0], x.shape[2]
        use_checkpoint = torch.is_grad_enabled() and self.training and self.fast.checkpoint_activations
        rows = []
        # split (backward: one cat) rather than slicing (backward: a zero-filled copy per slice)
        per_image_guidance = [t.split(1) if t is not None else [None] * batch for t in guidance]
        for b, image in enumerate(x.split(1)):
            g = [t[b] for t in per_image_guidance]
            for xs in image.split(chunk, dim=2):
                y = checkpoint(fn, xs, *g, use_reentrant=False) if use_checkpoint else fn(xs, *g)
                rows.append(y[0] if decoder else y[0].permute(1, 2, 3, 0))  # [c, H', W'] or [c, H, W, D]
        out = torch.cat(rows) if len(rows) > 1 else rows[0]
        out = out.view(batch, num_classes, *out.shape[1:])
        return out if decoder else out.permute(0, 4, 1, 2, 3)

    def _decode(self, x: torch.Tensor, *guidance: Optional[torch.Tensor]) -> torch.Tensor:
        return self.decoder(x, list(guidance))

    def forward(
        self,
        image_embeddings: torch.Tensor,
        text_embeddings: torch.Tensor,
        appearance_guidance: Optional[torch.Tensor],
        decoder_guidance: Sequence[Optional[torch.Tensor]],
        pooling: Sequence[int] = (1, 1),
    ) -> torch.Tensor:
        """Class logits for every pixel of the upsampled cost map.

        Args:
            image_embeddings: ``[B, C, H, W]`` dense CLIP embeddings.
            text_embeddings: ``[T, P, C]`` or ``[B, T, P, C]`` class embeddings.
            appearance_guidance: ``[B, C_a, H, W]`` (the dense embeddings in CAT-Seg) or None.
            decoder_guidance: per up-block ``[B, G_i, H*2^(i+1), W*2^(i+1)]`` (before projection).
            pooling: class-aggregation pooling (``POOLING_SIZES``: (2, 2) in training,
                (1, 1) at evaluation in the official protocol).
        Returns:
            logits ``[B, T, H*s, W*s]`` (s = 4 with two up-blocks); classes pruned by the
            top-``pad_len`` selection get -100.
        """
        batch = image_embeddings.shape[0]
        num_classes = text_embeddings.shape[-3]
        with torch.autocast(image_embeddings.device.type, enabled=False):  # cosine scores and top-k in fp32
            cost_volume = cosine_cost_volume(_full_precision(image_embeddings), _full_precision(text_embeddings))
            text = F.normalize(expand_text(_full_precision(text_embeddings), batch), dim=-1)
            kept = None
            if self.pad_len and num_classes > self.pad_len:
                cost_volume, text, kept = select_top_classes(cost_volume, text, self.pad_len)
        x = self.embed_cost(cost_volume)
        appearance = self.appearance_guidance_proj(appearance_guidance) if (
            self.appearance_guidance_proj is not None and appearance_guidance is not None) else None
        text_guidance = None
        if self.text_guidance_proj is not None:
            text_guidance = self.text_guidance_proj(F.normalize(text.mean(dim=2), dim=-1))
        chunk = self._chunk_size(x.shape[2], x.device)
        use_checkpoint = torch.is_grad_enabled() and self.training and self.fast.checkpoint_activations
        for layer in self.layers:
            x = self._per_class(layer.spatial, x, [appearance], chunk) if chunk else layer.spatial(x, appearance)
            if use_checkpoint:
                x = checkpoint(layer.classes, x, text_guidance, pooling, use_reentrant=False)
            else:
                x = layer.classes(x, text_guidance, pooling)
        guidance: List[Optional[torch.Tensor]] = [
            proj(g) if g is not None else None for proj, g in zip(self.decoder_guidance_proj, decoder_guidance)
        ]
        logits = self._per_class(self._decode, x, guidance, chunk, decoder=True) if chunk else self.decoder(x, guidance)
        if kept is not None:
            logits = scatter_class_logits(logits, kept, num_classes)
        return logits


def _full_precision(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
