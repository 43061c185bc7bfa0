"""Speed options of the model (``MODEL.FAST.*``, ``TEST.CLASS_CHUNK_SIZE``).

Every option is a reorganisation of the same computation: with all of them off (and fp32,
TF32 off) the model runs the plain reference code path ("exact mode"); each option on keeps
the output probabilities within 1e-4 of it (``tests/perf``). Options are plain attributes
of one :class:`FastOptions` object shared by all modules of a model, so they can be flipped
on a built model (``set_fast_options``) without rebuilding it.

Options (config key -> attribute; measured effect in ``docs/benchmarks.md``):

* ``MODEL.FAST.WINDOW_ATTENTION_4D`` -> ``window_attention_4d``: window attention as 4-D
  ``scaled_dot_product_attention`` calls (all windows at once without shift; one call per
  window position with a 2-D mask, none for mask-free windows, with shift). A 6-D call with
  a broadcast ``[nW, 1, N, N]`` mask falls back to the slow "math" kernel on CPU.
* ``MODEL.FAST.TOKEN_LAYOUT`` -> ``token_layout``: the per-class cost maps live as
  ``[B, T, H, W, D]`` tokens through the aggregator (``[B, D, T, H, W]`` views are handed
  between modules), so the Swin blocks need no permute copies, a (shifted) window partition
  is one gather, q/k/v are one GEMM, and the decoder runs in channels-last memory format.
* ``MODEL.FAST.PADDING_CLOSED_FORM`` -> ``padding_closed_form``: the ``pad_len - T``
  padding tokens of class aggregation are identical, so their contribution to the class
  attention is added in closed form instead of running them through the layer (their
  outputs are discarded anyway). Saves ~40% of class aggregation for 150 classes.
* ``MODEL.FAST.FUSED_UPCONV`` -> ``fused_upconv``: each decoder up-block's
  ``ConvTranspose2d(k2, s2)`` followed by the (linear) first 3x3 conv is evaluated as one
  2x2 conv at the low resolution plus a pixel shuffle; the transposed-conv bias and the
  decoder guidance enter as one per-image term.
* ``MODEL.FAST.SKIP_PRUNED_CLASSES`` -> ``skip_pruned_classes``: at sliding-window
  inference, classes pruned by the top-``pad_len`` selection in every view of an image
  (logit -100 everywhere) get the constant ``sigmoid(-100)`` instead of being upsampled and
  merged.
* ``TEST.CLASS_CHUNK_SIZE`` -> ``class_chunk_size``: at inference (no grad), the per-class
  spatial blocks, the decoder and the sliding-window post-processing run on chunks of at
  most this many classes (per image), and class aggregation on chunks of locations with as
  many tokens; this bounds memory for large vocabularies (0 = all at once; -1 = auto:
  :data:`CPU_CHUNK` on CPU, where small chunks stay in cache and in malloc's heap instead
  of being page-faulted in as fresh mmaps, and 0 on GPUs, where launch overhead dominates).
* ``MODEL.FAST.TRUNCATE_TEXT`` -> ``truncate_text``: the CLIP text tower runs on the
  prompts cut after the last end-of-text token of the batch instead of all 77 positions
  (causal mask: the pooled end-of-text features do not change). Training recomputes the
  text features every step, so this is ~4x less text-tower time and memory there.
* ``MODEL.FAST.CHECKPOINT_ACTIVATIONS`` -> ``checkpoint_activations``: in training, the
  spatial blocks, class aggregation and decoder blocks are recomputed in the backward pass
  instead of storing their activations.

Precision (not exact; constructor arguments of the modules they concern, set from the config):
``MODEL.FAST.INFERENCE_AUTOCAST`` / ``AUTOCAST_DTYPE`` and ``AUTOCAST_CLIP`` on the
meta-architecture, ``FP32_COST_EMBEDDING`` and ``FP32_LAST_DECODER_BLOCK`` on the
:class:`~cat_seg.modeling.aggregator.Aggregator` and its decoder.
"""
from dataclasses import dataclass, fields
from typing import Optional

import torch
from torch import nn

# Chunk size used by ``class_chunk_size = -1`` (auto) on CPU (fastest measured, see docs/benchmarks.md).
CPU_CHUNK = 32


@dataclass
class FastOptions:
    window_attention_4d: bool = True
    token_layout: bool = True
    padding_closed_form: bool = True
    fused_upconv: bool = True
    skip_pruned_classes: bool = True
    truncate_text: bool = True
    class_chunk_size: int = -1
    checkpoint_activations: bool = False

    def chunk_size(self, device: torch.device) -> int:
        """``class_chunk_size`` with auto (-1) resolved for ``device``: classes per chunk, 0 = no chunks."""
        if self.class_chunk_size < 0:
            return CPU_CHUNK if torch.device(device).type == "cpu" else 0
        return self.class_chunk_size

    @classmethod
    def exact(cls) -> "FastOptions":
        """Every option off: the reference computation."""
        return cls(
            window_attention_4d=False, token_layout=False, padding_closed_form=False, fused_upconv=False,
            skip_pruned_classes=False, truncate_text=False, class_chunk_size=0, checkpoint_activations=False,
        )

    @classmethod
    def from_config(cls, cfg) -> "FastOptions":
        fast = cfg.MODEL.FAST
        return cls(
            window_attention_4d=bool(fast.WINDOW_ATTENTION_4D),
            token_layout=bool(fast.TOKEN_LAYOUT),
            padding_closed_form=bool(fast.PADDING_CLOSED_FORM),
            fused_upconv=bool(fast.FUSED_UPCONV),
            skip_pruned_classes=bool(fast.SKIP_PRUNED_CLASSES),
            truncate_text=bool(fast.TRUNCATE_TEXT),
            class_chunk_size=int(cfg.TEST.CLASS_CHUNK_SIZE),
            checkpoint_activations=bool(fast.CHECKPOINT_ACTIVATIONS),
        )

    def as_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}


def set_fast_options(model: nn.Module, options: Optional[FastOptions] = None, **overrides) -> FastOptions:
    """Give every module of ``model`` that has a ``fast`` attribute the same options object.

    ``options`` defaults to the model's current options (or the defaults); keyword
    ``overrides`` change single fields, e.g. ``set_fast_options(model, fused_upconv=False)``.
    Returns the options object now in use.
    """
    if options is None:
        options = next((m.fast for m in model.modules() if isinstance(getattr(m, "fast", None), FastOptions)),
                       FastOptions())
        options = FastOptions(**options.as_dict())
    for key, value in overrides.items():
        if not hasattr(options, key):
            raise ValueError(f"unknown fast option {key!r}; known: {sorted(options.as_dict())}")
        setattr(options, key, value)
    for module in model.modules():
        if isinstance(getattr(module, "fast", None), FastOptions):
            module.fast = options
        text_encoder = getattr(module, "text_encoder", None)
        if hasattr(text_encoder, "clear_cache"):  # cached text features may depend on the options
            text_encoder.clear_cache()
    return options
