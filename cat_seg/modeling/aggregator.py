"""The cost aggregator: cost volume -> embedding -> (spatial, class) layers -> decoder.

This is the official ``sem_seg_head.predictor.transformer`` module, split over
:mod:`.cost_volume`, :mod:`.spatial_aggregation`, :mod:`.class_aggregation` and
:mod:`.decoder`; ``docs/architecture.md`` describes the data flow. The per-class maps are
``[B, T, H, W, D]`` tokens from the cost embedding to the decoder.

Memory knobs live here and only here (:meth:`Aggregator._per_class`): at inference the
per-class blocks run on chunks of classes (``class_chunk``, bounded memory for large
vocabularies), and in training with ``checkpoint_activations`` each chunk is recomputed in
the backward pass instead of storing its activations. Results depend on neither beyond float
rounding (chunks sum in another order: about 1e-6 in the logits, 1e-7 in trained weights).
Two cheap memory savings are always on in training (no setting): the spatial blocks' MLP
branch is recomputed in the backward (:func:`.spatial_aggregation.recomputed_mlp`), and the
logit head's backward keeps no fp32 copy of its input (:class:`.decoder._SingleOutputConv3x3`).
"""
from typing import Any, Callable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .class_aggregation import ClassAggregation
from .cost_volume import cosine_cost_volume, expand_text, scatter_class_logits, select_top_classes
from .decoder import CostDecoder
from .precision import autocast_dtype, full_precision, full_precision_tensor
from .spatial_aggregation import SpatialAggregation

# Classes per chunk of ``TEST.CLASS_CHUNK_SIZE -1`` (auto) on CPU (fastest measured, docs/benchmarks.md).
CPU_CLASS_CHUNK = 32


def resolve_class_chunk_size(setting: int, device, compiled: bool = False) -> int:
    """``TEST.CLASS_CHUNK_SIZE`` for ``device``: classes per chunk at inference, 0 = no chunks.

    -1 (auto): :data:`CPU_CLASS_CHUNK` on CPU, where small chunks stay in cache and in
    malloc's heap instead of being page-faulted in as fresh maps; 0 on GPUs, where launch
    overhead dominates, and for a compiled aggregator (one graph for any vocabulary size).
    """
    setting = int(setting)
    if setting < 0:
        return CPU_CLASS_CHUNK if torch.device(device).type == "cpu" and not compiled else 0
    return setting


class AggregatorOutput(NamedTuple):
    """What :meth:`Aggregator.forward` computes, returned with ``return_intermediates=True``
    (for an auxiliary loss or a probe on the cost features without copying the forward).

    ``T'`` is the number of classes aggregated: ``T``, or ``pad_len`` when the top-class
    selection pruned a larger vocabulary (``kept`` then says which).
    """

    logits: torch.Tensor  #: ``[B, T, H*s, W*s]``, as returned without intermediates
    cost_volume: torch.Tensor  #: ``[B, P, T', H, W]`` fp32 cosine scores (after the selection)
    kept: Optional[torch.Tensor]  #: ``[B, T']`` indices of the aggregated classes; None without selection
    cost_embedding: torch.Tensor  #: ``[B, T', H, W, D]`` the embedded cost volume
    layer_outputs: List[torch.Tensor]  #: ``[B, T', H, W, D]`` after each (spatial, class) layer
    decoder_guidance: List[Optional[torch.Tensor]]  #: the projected guidance of each up-block


class AggregatorLayer(nn.Module):
    """Spatial aggregation then class aggregation (state-dict keys ``spatial``, ``classes``).

    A method that changes one of them subclasses this layer and sets :attr:`spatial_class` or
    :attr:`class_aggregation_class`, and an :class:`Aggregator` subclass whose
    :attr:`~Aggregator.layer_class` is that layer. What the aggregator asks of them:

    * spatial: built as ``spatial_class(dim, appearance_dim, num_heads, window,
      **spatial_options)``, called as ``spatial(x [B, T, H, W, D], guidance)`` -> ``[B, T, H, W,
      D]`` on chunks of classes; optional methods ``normalize_guidance(guidance)`` (the projected
      appearance guidance ``[B, H, W, G]`` or None, once per forward before the chunks; without
      it the blocks get it as it is) and ``check_grid((h, w))`` (raise ``ValueError``, when the
      model is built, for a cost map the block cannot take);
    * classes: built as ``class_aggregation_class(dim, text_dim, num_heads, attention_type,
      pad_len, residual_quirk, **class_options)``, called as ``classes(x, text_guidance, pooling,
      location_chunk=...)`` -> ``[B, T, H, W, D]``.

    ``spatial_options`` / ``class_options``: extra keyword arguments of a block of one's own
    (e.g. a value of its config key: :meth:`~cat_seg.modeling.heads.cat_seg_head.CATSegHead.aggregator_options`).
    """

    spatial_class = SpatialAggregation
    class_aggregation_class = ClassAggregation

    def __init__(self, dim, appearance_dim, text_dim, num_heads, window, attention_type, pad_len, residual_quirk,
                 spatial_options: Optional[Mapping[str, Any]] = None,
                 class_options: Optional[Mapping[str, Any]] = None):
        super().__init__()
        self.spatial = self.spatial_class(dim, appearance_dim, num_heads, window, **(spatial_options or {}))
        self.classes = self.class_aggregation_class(dim, text_dim, num_heads, attention_type, pad_len, residual_quirk,
                                                    **(class_options or {}))


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
        num_layers, num_heads, window: aggregator depth, heads, Swin window (2, 4, 12).
        attention_type: class attention, ``linear`` or ``full``.
        pad_len: class-sequence length (256); larger vocabularies are pruned to the top
            ``pad_len`` classes per image (0 = no padding, no pruning).
        residual_quirk: see :class:`ClassAggregation`.
        checkpoint_activations: in training, recompute the per-class blocks in the backward
            pass (``MODEL.CHECKPOINT_ACTIVATIONS``).
        layer_options, decoder_options: extra keyword arguments of each :attr:`layer_class`
            (e.g. ``{"class_options": {...}}``, see :class:`AggregatorLayer`) and of the
            :attr:`decoder_class`, for parts of one's own.

    The defaults are those of the released ViT-B model (``configs/vitb_384.yaml``: 2 layers),
    not the base config's (``NUM_LAYERS`` 4 in :func:`cat_seg.config.add_cat_seg_config`).

    Parts a method replaces (in a subclass, built with the same arguments): :attr:`layer_class`
    (:class:`AggregatorLayer`, which names the spatial and class aggregation classes) and
    :attr:`decoder_class` (:class:`~.decoder.CostDecoder`). The head builds
    :attr:`~cat_seg.modeling.heads.cat_seg_head.CATSegHead.aggregator_class`.
    """

    layer_class = AggregatorLayer
    decoder_class = CostDecoder

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
        checkpoint_activations: bool = False,
        layer_options: Optional[Mapping[str, Any]] = None,
        decoder_options: Optional[Mapping[str, Any]] = None,
    ):
        super().__init__()
        self.pad_len = pad_len
        self.checkpoint_activations = checkpoint_activations
        self.cost_embed = nn.Conv2d(num_templates, hidden_dim, kernel_size=7, stride=1, padding=3)
        self.layers = nn.ModuleList(
            self.layer_class(hidden_dim, appearance_guidance_proj_dim, text_guidance_proj_dim, num_heads, window,
                            attention_type, pad_len, residual_quirk, **(layer_options or {}))
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
        self.decoder = self.decoder_class(hidden_dim, decoder_dims, decoder_guidance_proj_dims,
                                          **(decoder_options or {}))

    @property
    def upsampling(self) -> int:
        return self.decoder.upsampling

    def embed_cost(self, cost_volume: torch.Tensor) -> torch.Tensor:
        """``[B, P, T, H, W]`` fp32 scores (a view of ``[B, T, P, H, W]`` storage) -> tokens
        ``[B, T, H, W, D]`` (7x7 conv on each class map, computed channels-last).

        Precision policy (:mod:`.precision`): the conv runs in fp32 on the fp32 scores and its
        output is rounded once to autocast's dtype, so the per-class maps after it are in the
        reduced precision as everywhere else in the aggregator.
        """
        b, p, t, h, w = cost_volume.shape
        dtype = autocast_dtype(cost_volume.device)
        x = cost_volume.transpose(1, 2).reshape(b * t, p, h, w).contiguous(memory_format=torch.channels_last)
        with full_precision(x):
            embedded = self.cost_embed(full_precision_tensor(x))
        if dtype is not None:
            embedded = embedded.to(dtype)
        return embedded.permute(0, 2, 3, 1).reshape(b, t, h, w, -1)

    def _chunk_size(self, num_classes: int, class_chunk: int) -> int:
        """Classes per chunk of the per-class blocks (0 = all at once).

        Training: chunks only with activation checkpointing (``class_chunk`` classes, or one
        image per chunk for 0). Inference: balanced chunks of at most ``class_chunk`` classes.
        """
        if torch.is_grad_enabled() and self.training:
            if not self.checkpoint_activations:
                return 0
            return min(class_chunk, num_classes) if class_chunk > 0 else num_classes
        if class_chunk <= 0 or class_chunk >= num_classes:
            return 0
        return -(-num_classes // -(-num_classes // class_chunk))  # equal chunks of <= class_chunk classes

    def _per_class(self, fn: Callable, x: torch.Tensor, guidance: Sequence, chunk: int) -> torch.Tensor:
        """``fn(x, *guidance)`` for per-class ``fn`` (``[B, T, ...]`` in and out), on chunks.

        With ``chunk`` (from :meth:`_chunk_size`) ``fn`` runs on (one image, <= ``chunk``
        classes) pieces with that image's guidance (``[B, ...]`` tensors or None); with
        checkpointing (training) each piece is recomputed in the backward pass.
        """
        use_checkpoint = torch.is_grad_enabled() and self.training and self.checkpoint_activations
        if not chunk:
            return checkpoint(fn, x, *guidance, use_reentrant=False) if use_checkpoint else fn(x, *guidance)
        batch = x.shape[0]
        # split (backward: one cat) rather than slicing (backward: a zero-filled copy per slice)
        per_image = [t.split(1) if t is not None else [None] * batch for t in guidance]
        rows = []
        for b, image in enumerate(x.split(1)):
            g = [t[b] for t in per_image]
            for piece in image.split(chunk, dim=1):
                rows.append(checkpoint(fn, piece, *g, use_reentrant=False) if use_checkpoint else fn(piece, *g))
        return torch.cat(rows, dim=1).view(batch, x.shape[1], *rows[0].shape[2:])

    def check_grid(self, grid: Tuple[int, int]) -> None:
        """Raise, when building, the ``ValueError`` the spatial blocks would raise on an
        ``(h, w)`` cost map (one that does not split into whole windows); a spatial block of
        one's own without a ``check_grid`` is not checked."""
        for layer in self.layers:
            check = getattr(layer.spatial, "check_grid", None)
            if check is not None:
                check(grid)

    def compute_cost_volume(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """The cost volume ``[B, P, T, H, W]`` of ``image_embeddings`` ``[B, C, H, W]`` and
        ``text_embeddings`` ``[T, P, C]`` or ``[B, T, P, C]``, both fp32 (autocast off): the
        cosine similarity (:func:`cosine_cost_volume`). A subclass overrides it to try another
        cost; the top-``pad_len`` class selection and the embedding read what it returns."""
        return cosine_cost_volume(image_embeddings, text_embeddings)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        text_embeddings: torch.Tensor,
        appearance_guidance: Optional[torch.Tensor],
        decoder_guidance: Sequence[Optional[torch.Tensor]],
        pooling: Sequence[int] = (1, 1),
        class_chunk: int = 0,
        return_intermediates: bool = False,
    ) -> Union[torch.Tensor, AggregatorOutput]:
        """Class logits for every pixel of the upsampled cost map.

        Args:
            image_embeddings: ``[B, C, H, W]`` dense CLIP embeddings.
            text_embeddings: ``[T, P, C]`` or ``[B, T, P, C]`` class embeddings.
            appearance_guidance: ``[B, C_a, H, W]`` (the dense embeddings in CAT-Seg) or None.
            decoder_guidance: per up-block ``[B, G_i, H*2^(i+1), W*2^(i+1)]`` (before projection).
            pooling: class-aggregation pooling (``POOLING_SIZES``: (2, 2) in training,
                (1, 1) at evaluation in the official protocol).
            class_chunk: classes per chunk of the per-class blocks (0 = all at once); see
                :meth:`_chunk_size`.
            return_intermediates: return an :class:`AggregatorOutput` (the logits with the cost
                volume, the embedding and each layer's output; these stay referenced, so in
                training they add to the memory held) instead of the logits alone.
        Returns:
            logits ``[B, T, H*s, W*s]`` (s = 4 with two up-blocks); classes pruned by the
            top-``pad_len`` selection get -100.
        """
        batch = image_embeddings.shape[0]
        num_classes = text_embeddings.shape[-3]
        if text_embeddings.shape[-2] != self.cost_embed.in_channels:
            raise ValueError(f"text embeddings {tuple(text_embeddings.shape)} hold {text_embeddings.shape[-2]} prompt "
                             f"templates (P in [T, P, C]); the aggregator was built for "
                             f"num_templates={self.cost_embed.in_channels}")
        if len(decoder_guidance) != len(self.decoder_guidance_proj):
            raise ValueError(f"{len(decoder_guidance)} decoder guidance entries for {len(self.decoder_guidance_proj)} "
                             "up-blocks: give one per block (None: no guidance)")
        with full_precision(image_embeddings):  # cosine scores and the top-k selection in fp32
            text_embeddings = full_precision_tensor(text_embeddings)
            cost_volume = self.compute_cost_volume(full_precision_tensor(image_embeddings), text_embeddings)
            text = F.normalize(expand_text(text_embeddings, batch), dim=-1)
            kept = None
            if self.pad_len and num_classes > self.pad_len:
                cost_volume, text, kept = select_top_classes(cost_volume, text, self.pad_len)
        x = cost_embedding = self.embed_cost(cost_volume)  # [B, T, H, W, D]
        appearance = None
        if self.appearance_guidance_proj is not None and appearance_guidance is not None:
            appearance = self.appearance_guidance_proj(appearance_guidance).permute(0, 2, 3, 1)  # [B, H, W, G]
        text_guidance = None
        if self.text_guidance_proj is not None:
            text_guidance = self.text_guidance_proj(F.normalize(text.mean(dim=2), dim=-1))  # [B, T, G]
        t, h, w = x.shape[1:4]
        chunk = self._chunk_size(t, class_chunk)
        use_checkpoint = torch.is_grad_enabled() and self.training and self.checkpoint_activations
        # the class blocks' location chunks write into one output in place, which autograd cannot
        # go through: only without gradients (inference; also eval mode under enable_grad, e.g.
        # attribution or test-time adaptation)
        location_chunk = 0 if (torch.is_grad_enabled() or not chunk) else max(1, chunk * h * w // t)
        layer_outputs: List[torch.Tensor] = []
        for layer in self.layers:
            normalize = getattr(layer.spatial, "normalize_guidance", None)  # optional (AggregatorLayer)
            x = self._per_class(layer.spatial, x, [normalize(appearance) if normalize else appearance], chunk)
            if use_checkpoint:
                x = checkpoint(layer.classes, x, text_guidance, pooling, use_reentrant=False)
            else:
                x = layer.classes(x, text_guidance, pooling, location_chunk=location_chunk)
            if return_intermediates:
                layer_outputs.append(x)
        guidance: List[Optional[torch.Tensor]] = [
            proj(g) if g is not None else None for proj, g in zip(self.decoder_guidance_proj, decoder_guidance)
        ]
        logits = self._per_class(self._decode, x, guidance, chunk)
        if kept is not None:
            logits = scatter_class_logits(logits, kept, num_classes)
        if return_intermediates:
            return AggregatorOutput(logits, cost_volume, kept, cost_embedding, layer_outputs, guidance)
        return logits

    def _decode(self, x: torch.Tensor, *guidance: Optional[torch.Tensor]) -> torch.Tensor:
        return self.decoder(x, list(guidance))
