"""Layer and group normalisation that keep their input's dtype under autocast.

Autocast runs ``layer_norm`` and ``group_norm`` in float32: a bf16 input is first copied to
fp32, normalised into an fp32 output, and the next linear or convolution casts that output
back to bf16. On the per-class maps of the aggregator and the decoder (the largest tensors
of the model) those two copies were most of the bytes moved by the norms, and in training
the fp32 copies were what autograd saved (a bf16 ViT-B step saved 12 GiB of activations,
``cat-seg-benchmark --mode train --count``).

These modules call the same kernels on the input's own dtype: the kernels accumulate the
statistics in fp32 for bf16/fp16 inputs and round once at the output, which the consumer
(a bf16 GEMM or convolution) did anyway. The weights are cast to the input's dtype (the
kernels want one dtype). In fp32 they are exactly ``nn.LayerNorm`` / ``nn.GroupNorm``;
state-dict keys are theirs.
"""
import torch
import torch.nn.functional as F
from torch import nn


def _like(parameter, x: torch.Tensor):
    return parameter.to(x.dtype) if parameter is not None else None


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` computed in the input's dtype (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., *normalized_shape]`` -> the same shape and dtype."""
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x, self.normalized_shape, _like(self.weight, x), _like(self.bias, x), self.eps)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` computed in the input's dtype (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, *]`` -> the same shape and dtype."""
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x, self.num_groups, _like(self.weight, x), _like(self.bias, x), self.eps)
