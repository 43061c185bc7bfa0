"""The cost aggregator: cost volume -> embedding -> (spatial, class) layers -> decoder.

This is the official ``sem_seg_head.predictor.transformer`` module (spec 2), split over
:mod:`.cost_volume`, :mod:`.spatial_aggregation`, :mod:`.class_aggregation` and
:mod:`.decoder`.
"""
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .class_aggregation import ClassAggregation
from .cost_volume import cosine_cost_volume, expand_text, scatter_class_logits, select_top_classes
from .decoder import CostDecoder
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
    ):
        super().__init__()
        self.pad_len = pad_len
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
        self.decoder = CostDecoder(hidden_dim, decoder_dims, decoder_guidance_proj_dims)

    @property
    def upsampling(self) -> int:
        return self.decoder.upsampling

    def embed_cost(self, cost_volume: torch.Tensor) -> torch.Tensor:
        """``[B, P, T, H, W]`` -> ``[B, D, T, H, W]`` (7x7 conv on each class map)."""
        b, p, t, h, w = cost_volume.shape
        x = cost_volume.transpose(1, 2).reshape(b * t, p, h, w)
        x = self.cost_embed(x)
        return x.view(b, t, -1, h, w).transpose(1, 2)

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
        cost_volume = cosine_cost_volume(image_embeddings, text_embeddings)
        text = F.normalize(expand_text(text_embeddings, batch), dim=-1)
        kept = None
        if self.pad_len and num_classes > self.pad_len:
            cost_volume, text, kept = select_top_classes(cost_volume, text, self.pad_len)
        x = self.embed_cost(cost_volume)
        appearance = self.appearance_guidance_proj(appearance_guidance) if (
            self.appearance_guidance_proj is not None and appearance_guidance is not None) else None
        text_guidance = None
        if self.text_guidance_proj is not None:
            text_guidance = self.text_guidance_proj(F.normalize(text.mean(dim=2), dim=-1))
        for layer in self.layers:
            x = layer(x, appearance, text_guidance, pooling)
        guidance: List[Optional[torch.Tensor]] = [
            proj(g) if g is not None else None for proj, g in zip(self.decoder_guidance_proj, decoder_guidance)
        ]
        logits = self.decoder(x, guidance)
        if kept is not None:
            logits = scatter_class_logits(logits, kept, num_classes)
        return logits
