"""``CATSegHead``: guidance upsampling + cost aggregation, registered in detectron2."""
import re
from typing import Any, Dict, List, Sequence, Union

import torch
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, ShapeSpec
from torch import nn

from ..aggregator import Aggregator, AggregatorOutput


@SEM_SEG_HEADS_REGISTRY.register()
class CATSegHead(nn.Module):
    """Turns backbone features and class embeddings into per-class logits.

    Args:
        aggregator: the :class:`~cat_seg.modeling.aggregator.Aggregator`.
        guidance_upsample: one transposed conv per decoder block, mapping the intermediate
            CLIP block outputs ``[B, W, h, w]`` to decoder guidance at the block's
            resolution (official ``upsample1``/``upsample2``: W->256 x2, W->128 x4).
        guidance_features: backbone output names feeding ``guidance_upsample`` (in order).

    :meth:`from_config` builds :attr:`aggregator_class` from the config: a head subclass that
    sets it to an :class:`~cat_seg.modeling.aggregator.Aggregator` subclass (other layers, class
    aggregation or decoder) keeps everything else, and gives the parts of its own their config
    values through :meth:`aggregator_options`.
    """

    aggregator_class = Aggregator

    @configurable
    def __init__(self, *, aggregator: Aggregator, guidance_upsample: nn.ModuleList, guidance_features: Sequence[str]):
        super().__init__()
        if len(guidance_upsample) != len(guidance_features):
            raise ValueError(
                f"{len(guidance_features)} guidance features for {len(guidance_upsample)} decoder blocks: "
                "the number of CLIP guidance blocks must equal len(DECODER_GUIDANCE_DIMS)"
            )
        self.aggregator = aggregator
        self.guidance_upsample = guidance_upsample
        self.guidance_features = list(guidance_features)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], num_templates: int = 1):
        head = cfg.MODEL.SEM_SEG_HEAD
        embed_dim = input_shape["dense_embeddings"].channels
        # the CLIP blocks' outputs, "block<index>" (a backbone subclass may return other features too)
        guidance_features = sorted((k for k in input_shape if re.fullmatch(r"block[0-9]+", k)),
                                   key=lambda k: int(k[5:]))
        if len(guidance_features) != len(head.DECODER_GUIDANCE_DIMS):
            raise ValueError(
                f"the backbone returns {len(guidance_features)} guidance blocks but DECODER_GUIDANCE_DIMS has "
                f"{len(head.DECODER_GUIDANCE_DIMS)} entries: set MODEL.SEM_SEG_HEAD.GUIDANCE_BLOCK_INDEXES"
            )
        upsample = nn.ModuleList(
            nn.ConvTranspose2d(input_shape[name].channels, dim, kernel_size=2 ** (i + 1), stride=2 ** (i + 1))
            for i, (name, dim) in enumerate(zip(guidance_features, head.DECODER_GUIDANCE_DIMS))
        )
        aggregator = cls.aggregator_class(
            text_dim=embed_dim,
            appearance_dim=embed_dim,
            num_templates=num_templates,
            hidden_dim=head.HIDDEN_DIMS,
            text_guidance_proj_dim=head.TEXT_GUIDANCE_PROJ_DIM,
            appearance_guidance_proj_dim=head.APPEARANCE_GUIDANCE_PROJ_DIM,
            decoder_dims=head.DECODER_DIMS,
            decoder_guidance_dims=head.DECODER_GUIDANCE_DIMS,
            decoder_guidance_proj_dims=head.DECODER_GUIDANCE_PROJ_DIMS,
            num_layers=head.NUM_LAYERS,
            num_heads=head.NUM_HEADS,
            window=head.WINDOW_SIZES,
            attention_type=head.ATTENTION_TYPE,
            pad_len=head.PAD_LEN,
            residual_quirk=head.CLASS_RESIDUAL_QUIRK,
            checkpoint_activations=cfg.MODEL.CHECKPOINT_ACTIVATIONS,
            **cls.aggregator_options(cfg),
        )
        return {"aggregator": aggregator, "guidance_upsample": upsample, "guidance_features": guidance_features}

    @classmethod
    def aggregator_options(cls, cfg) -> Dict[str, Any]:
        """Keyword arguments :meth:`from_config` adds to the :attr:`aggregator_class` call: none
        here. A method reads its config keys here for the parts it replaces, e.g.
        ``{"layer_options": {"class_options": {"scale": cfg.MODEL.MY_METHOD.SCALE}}}`` for a
        class aggregation built with a ``scale`` argument
        (:class:`~cat_seg.modeling.aggregator.AggregatorLayer`), or ``{"decoder_options": ...}``."""
        return {}

    def forward(self, features: Dict[str, torch.Tensor], text_embeddings: torch.Tensor, pooling=(1, 1),
                class_chunk: int = 0, return_intermediates: bool = False
                ) -> Union[torch.Tensor, AggregatorOutput]:
        """Logits ``[B, T, s*h, s*w]`` from backbone ``features`` and ``text_embeddings``
        ``[T, P, C]`` (one vocabulary) or ``[B, T, P, C]`` (one per image); ``s`` is the
        aggregator's ``upsampling`` (4 with two decoder blocks).

        ``features["dense_embeddings"]`` ``[B, C, h, w]`` is both the image side of the cost
        volume and the appearance guidance. ``class_chunk`` and ``return_intermediates`` (an
        :class:`~cat_seg.modeling.aggregator.AggregatorOutput` instead of the logits): see
        :meth:`~cat_seg.modeling.aggregator.Aggregator.forward`.
        """
        image = features["dense_embeddings"]
        decoder_guidance: List[torch.Tensor] = [
            up(features[name]) for up, name in zip(self.guidance_upsample, self.guidance_features)
        ]
        # the vocabulary size is a dynamic dimension of a compiled aggregator: a new size does
        # not recompile it (no effect in eager mode)
        torch._dynamo.maybe_mark_dynamic(text_embeddings, text_embeddings.dim() - 3)
        if return_intermediates:  # only when asked: an aggregator subclass with its own forward need not take it
            return self.aggregator(image, text_embeddings, image, decoder_guidance, pooling, class_chunk,
                                   return_intermediates=True)
        return self.aggregator(image, text_embeddings, image, decoder_guidance, pooling, class_chunk)
