"""Upsampling decoder of the aggregated cost volume, with decoder guidance.

Each up-block doubles the resolution of every class map with a transposed conv, concatenates
the (per-image) decoder guidance and applies a DoubleConv (conv3x3-GN-ReLU x2); the head
maps the last features to one logit per class and pixel. See ``docs/architecture.md``
("Decoder").

How it is computed: ``conv3x3(concat(ConvTranspose2d_k2s2(x), g))`` is linear in ``x`` and
``g``. For each of the four output pixel phases the ``x`` part equals a 2x2 conv of the
low-resolution input, so it runs as one conv with ``4 * Cout`` outputs at the low resolution
whose phases are interleaved into the output (no upsampled ``[B*T, Cin - G, 2H, 2W]`` tensor
is built; about half the multiply-adds). The guidance part and the transposed-conv bias
(a fixed map, zero on the padded border) are the same for all classes of an image: one
per-image term added during the interleave. Feature maps stay channels-last (the token
layout of the aggregator).
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .norms import GroupNorm
from .precision import full_precision


def upconv_taps() -> torch.Tensor:
    """0/1 tensor ``[phase(4), ky, kx, dy, dx, ry, rx]``: which (conv tap, transposed-conv tap) pair
    lands on low-resolution kernel position ``(ky, kx)`` of each output phase."""
    taps = torch.zeros(4, 2, 2, 3, 3, 2, 2)
    for py in range(2):
        for px in range(2):
            for dy in range(3):
                for dx in range(3):
                    hy, hx = py + dy - 1, px + dx - 1  # offsets in the upsampled map relative to (2i, 2j)
                    taps[2 * py + px, hy // 2 + 1 - py, hx // 2 + 1 - px, dy, dx, hy % 2, hx % 2] = 1
    return taps


def fused_upconv_weight(up_weight: torch.Tensor, conv_weight: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Weights of ``conv3x3(pad 1) o ConvTranspose2d(k2, s2)`` as a 2x2 conv (pad 1) per output phase.

    Args:
        up_weight: ``[Cin, M, 2, 2]`` transposed-conv weight.
        conv_weight: ``[Cout, M, 3, 3]`` conv weight (on the ``M`` upsampled channels).
        taps: :func:`upconv_taps`.
    Returns:
        ``[4 * Cout, Cin, 2, 2]``; output channel ``(2 * py + px) * Cout + o`` holds phase
        ``(py, px)``: with ``y = conv2d(x, w, padding=1)`` (size ``H+1``),
        ``out[o, 2i + py, 2j + px] = y[phase * Cout + o, i + py, j + px]``.
    """
    pair = torch.einsum("omab,cmrs->ocabrs", conv_weight, up_weight)  # [Cout, Cin, 3, 3, 2, 2]
    weight = torch.einsum("pyxabrs,ocabrs->pocyx", taps.to(pair.dtype), pair)  # [4, Cout, Cin, 2, 2]
    return weight.flatten(0, 1)


class UpBlock(nn.Module):
    """``ConvTranspose2d(in -> in - guidance, 2, 2)``, concat guidance, DoubleConv(in -> out).

    State-dict keys: ``up``, ``conv.{0,1,3,4}`` (conv, GroupNorm, conv, GroupNorm).
    GroupNorm groups = channels / 16 (official rule).
    """

    def __init__(self, in_channels: int, out_channels: int, guidance_channels: int):
        super().__init__()
        self.guidance_channels = guidance_channels
        self.up = nn.ConvTranspose2d(in_channels, in_channels - guidance_channels, kernel_size=2, stride=2)
        groups = max(out_channels // 16, 1)
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
        )
        self.register_buffer("taps", upconv_taps(), persistent=False)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor], num_classes: int) -> torch.Tensor:
        """``x [B*T, Cin, H, W]``, guidance ``[B, G, 2H, 2W]`` or None -> ``[B*T, Cout, 2H, 2W]`` (channels-last)."""
        return self.conv[1:](self.first_conv(x, guidance, num_classes))

    def first_conv(self, x: torch.Tensor, guidance: Optional[torch.Tensor], num_classes: int) -> torch.Tensor:
        """``conv[0](concat(up(x), guidance))`` via :func:`fused_upconv_weight` (channels-last output)."""
        n, _, h, w = x.shape
        first = self.conv[0]
        channels, cout = self.up.out_channels, first.out_channels
        with full_precision(x):  # compose the weights in full precision
            weight = fused_upconv_weight(self.up.weight, first.weight[:, :channels], self.taps)
        x = x.contiguous(memory_format=torch.channels_last)
        phases = F.conv2d(x, weight.contiguous(memory_format=torch.channels_last), padding=1)  # [N, 4Cout, H+1, W+1]
        # per-image term: conv of the transposed-conv bias (zero-padded border) + guidance conv
        bias_map = self.up.bias.view(1, -1, 1, 1).expand(1, channels, 2 * h, 2 * w)
        term = F.conv2d(bias_map, first.weight[:, :channels], padding=1)  # [1, Cout, 2H, 2W]
        if guidance is not None and self.guidance_channels:
            term = term + F.conv2d(guidance, first.weight[:, channels:], padding=1)  # [B, Cout, 2H, 2W]
        images = n // num_classes if term.shape[0] > 1 else 1
        term = term.to(phases.dtype)
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and (phases.requires_grad or term.requires_grad)):
            return _interleave_differentiable(phases, term, images, h, w, cout)
        return _interleave_in_place(phases, term, images, h, w, cout)


# The phase interleave (a pixel shuffle of shifted windows plus the per-image term) is
# written twice only because the one-pass form writes through ``out=``, which autograd and
# torch.compile do not support; both compute the same values.
def _interleave_in_place(phases, term, images, h, w, cout):
    """``out[n, 2i + py, 2j + px] = phases[n, phase(py, px), i + py, j + px] + term``: one pass
    (inference). ``phases [N, 4C, H+1, W+1]``, ``term [1 or B, C, 2H, 2W]`` -> ``[N, C, 2H, 2W]``
    (channels-last)."""
    n = phases.shape[0]
    out = phases.new_empty(n, 2 * h, 2 * w, cout)  # NHWC storage
    out_view = out.view(images, -1, h, 2, w, 2, cout)
    phase_view = phases.permute(0, 2, 3, 1).unflatten(-1, (2, 2, cout))  # [N, H+1, W+1, 2, 2, Cout]
    term_view = term.permute(0, 2, 3, 1).reshape(term.shape[0], 1, h, 2, w, 2, cout)
    for py in range(2):
        for px in range(2):
            src = phase_view[:, py:py + h, px:px + w, py, px].unflatten(0, (images, -1))
            torch.add(src, term_view[:, :, :, py, :, px], out=out_view[:, :, :, py, :, px])
    return out.permute(0, 3, 1, 2)


def _interleave_differentiable(phases, term, images, h, w, cout):
    """:func:`_interleave_in_place` for training: a stack of the phase windows (backward:
    views), then the term."""
    n = phases.shape[0]
    rows = phases.unflatten(1, (2, 2, cout)).unbind(1)  # unbind: backward is a stack, not zero-fills
    parts = [part[..., py:py + h, px:px + w] for py, row in enumerate(rows) for px, part in enumerate(row.unbind(1))]
    out = torch.stack(parts, dim=-1).view(n, cout, h, w, 2, 2)  # [..., py, px]
    out = out.permute(0, 1, 2, 4, 3, 5).reshape(n, cout, 2 * h, 2 * w)
    out = (out.unflatten(0, (images, -1)) + term[:, None]).flatten(0, 1)
    return out.contiguous(memory_format=torch.channels_last)


class CostDecoder(nn.Module):
    """Up-blocks and the logit head.

    Args:
        in_channels: hidden dim D of the aggregated cost.
        decoder_dims: output channels of each up-block (official ``[64, 32]``).
        guidance_dims: channels of the projected decoder guidance per block (``[32, 16]``).

    State-dict keys: ``blocks.{i}``, ``head``.
    """

    def __init__(self, in_channels: int, decoder_dims: Sequence[int], guidance_dims: Sequence[int]):
        super().__init__()
        if len(decoder_dims) != len(guidance_dims):
            raise ValueError(
                f"DECODER_DIMS {list(decoder_dims)} and DECODER_GUIDANCE_PROJ_DIMS {list(guidance_dims)} "
                "must have the same length"
            )
        blocks, channels = [], in_channels
        for out_channels, guidance_channels in zip(decoder_dims, guidance_dims):
            blocks.append(UpBlock(channels, out_channels, guidance_channels))
            channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(channels, 1, kernel_size=3, padding=1)

    @property
    def upsampling(self) -> int:
        """Output stride relative to the cost map (2 per block)."""
        return 2 ** len(self.blocks)

    def forward(self, x: torch.Tensor, guidance: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
        """``x [B, T, H, W, D]`` + per-block guidance ``[B, G_i, H*2^(i+1), W*2^(i+1)]`` -> logits ``[B, T, H', W']``.

        The head runs in fp32 (precision policy, :mod:`.precision`).
        """
        if len(guidance) != len(self.blocks):
            raise ValueError(f"{len(guidance)} guidance entries for {len(self.blocks)} up-blocks: give one per block "
                             "(None: no guidance)")
        b, t, h, w, d = x.shape
        x = x.reshape(b * t, h, w, d).permute(0, 3, 1, 2)  # channels-last [B*T, D, H, W]
        for block, g in zip(self.blocks, guidance):
            x = block(x, g, t)
        if torch.is_grad_enabled() and (x.requires_grad or self.head.weight.requires_grad):
            logits = _SingleOutputConv3x3.apply(x, self.head.weight, self.head.bias)
        else:
            logits = single_output_conv3x3(x, self.head.weight, self.head.bias)
        return logits.view(b, t, *x.shape[-2:])


def single_output_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The logit head, ``conv2d(x, weight, bias, padding=1)`` with one output channel, in fp32.

    Args:
        x: ``[N, C, H, W]`` features (any dtype and memory layout).
        weight: ``[1, C, 3, 3]``; bias: ``[1]``.
    Returns:
        float32 ``[N, 1, H, W]``.

    Computed as one fp32 matrix product of the nine taps with the channels-last features
    (``[9, C] @ [C, N*H*W]``) and the sum of the nine shifted tap maps. The same values as
    the convolution (fp32 accumulation; checked against ``F.conv2d`` in the tests), but a
    1-output-channel fp32 convolution gets a slow cuDNN kernel (4.4 ms of a 61 ms ViT-B
    inference on an H200); the product is memory-bound, and a compiler can fuse its input
    cast into the preceding norm.
    """
    n, c, h, w = x.shape
    with full_precision(x):  # precision policy: the logit head in fp32 (see .precision)
        taps = _head_taps(weight)
        features = x.permute(0, 2, 3, 1).to(torch.float32, memory_format=torch.contiguous_format)
        per_tap = torch.mm(taps, features.reshape(-1, c).t()).view(9, n, h, w)
        out = per_tap[4] + bias.float()  # the centre tap, then the shifted neighbours (zero padding)
        for tap, out_region, tap_region in _neighbour_taps(h, w):
            out[(slice(None), *out_region)] += per_tap[(tap, slice(None), *tap_region)]
    return out[:, None]


def _neighbour_taps(h: int, w: int):
    """For each non-centre tap of a 3x3 kernel (zero padding) on an ``h x w`` map:
    ``(tap, out_region, tap_region)``, the (rows, columns) slices with
    ``out[out_region] += per_tap[tap][tap_region]``; tap ``3 * ky + kx`` reads offset
    ``(ky - 1, kx - 1)``."""
    for tap in (0, 1, 2, 3, 5, 6, 7, 8):
        dy, dx = tap // 3 - 1, tap % 3 - 1
        yield (tap, (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx))),
               (slice(max(0, dy), h - max(0, -dy)), slice(max(0, dx), w - max(0, -dx))))


# fp32 elements of the features converted at once in the head's backward (64 MiB)
_HEAD_BACKWARD_CHUNK = 2 ** 24


def _head_taps(weight: torch.Tensor) -> torch.Tensor:
    """``[1, C, 3, 3]`` head weight -> fp32 ``[9, C]``, row ``3 * ky + kx``."""
    return weight[0].permute(1, 2, 0).reshape(9, weight.shape[1]).float()


class _SingleOutputConv3x3(torch.autograd.Function):
    """:func:`single_output_conv3x3` with a backward that needs no fp32 copy of all features.

    Autograd of the forward would keep (or, recomputed, rebuild) the fp32 features and make
    an fp32 gradient of them before casting it to the features' dtype: two fp32 copies of
    the largest decoder maps at the start of the backward (1.5 GiB of a bf16 ViT-B training
    step at batch 4, its peak; docs/benchmarks.md). This backward keeps only ``x`` (which the
    preceding ReLU keeps anyway) and goes through the maps in chunks of
    :data:`_HEAD_BACKWARD_CHUNK` fp32 elements, writing the gradient in ``x``'s dtype.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return single_output_conv3x3(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        """``grad_out [N, 1, H, W]`` (fp32) -> gradients of ``x``, ``weight``, ``bias``.

        With ``g_tap[n, y, x] = grad_out[n, y - dy, x - dx]`` (zero outside the map: the
        forward's regions of :func:`_neighbour_taps` read the other way round), the
        gradient of the features is ``sum_tap g_tap taps[tap]`` and that of the taps is
        ``sum g_tap features``: two small fp32 matrix products per chunk.
        """
        x, weight = ctx.saved_tensors
        n, c, h, w = x.shape
        grad_out = grad_out.float().reshape(n, h, w)
        with full_precision(x):
            taps = _head_taps(weight)
            grad_x = torch.empty(n, h, w, c, dtype=x.dtype, device=x.device)  # channels-last storage
            grad_taps = torch.zeros(9, c, dtype=torch.float32, device=x.device)
            features = x.permute(0, 2, 3, 1)  # [N, H, W, C]
            step = max(1, _HEAD_BACKWARD_CHUNK // (h * w * c))
            for start in range(0, n, step):
                g = grad_out[start:start + step]
                shifted = g.new_zeros(9, *g.shape)  # [9, n', H, W]
                shifted[4] = g
                for tap, out_region, tap_region in _neighbour_taps(h, w):
                    shifted[(tap, slice(None), *tap_region)] = g[(slice(None), *out_region)]
                shifted = shifted.view(9, -1)
                chunk = features[start:start + step].reshape(-1, c).float()  # [n' H W, C]
                grad_taps.addmm_(shifted, chunk)
                grad_x[start:start + step].view(-1, c).copy_(torch.mm(shifted.t(), taps))
            grad_weight = grad_taps.view(3, 3, c).permute(2, 0, 1)[None].to(weight.dtype)
            grad_bias = grad_out.sum().reshape(1).to(weight.dtype)
        return grad_x.permute(0, 3, 1, 2), grad_weight, grad_bias
