"""Upsampling decoder of the aggregated cost volume, with decoder guidance (spec 2.7).

Each up-block doubles the resolution of every class map with a transposed conv, concatenates
the (per-image) decoder guidance, and applies a DoubleConv (conv3x3-GN-ReLU x2). The head
maps the last features to one logit per class and pixel.

The guidance is shared by all classes of an image; the first conv is linear in its input,
so ``conv([up, g]) = conv_up(up) + conv_g(g)`` is evaluated with the guidance term computed
once per image and broadcast over classes (no T-fold copy of the guidance).

Speed option ``fused_upconv`` (:mod:`.fast`): ``conv3x3(ConvTranspose2d_k2s2(x))`` is linear
in ``x``, so for each of the four output pixel phases it equals a 2x2 conv of the
low-resolution input (one conv with ``4 * Cout`` outputs, then a pixel shuffle); the
transposed-conv bias enters as a fixed map (zero at the padded border) that is added with
the guidance term, once per image. About half the multiply-adds of the two convs, and the
upsampled ``[B*T, Cin - G, 2H, 2W]`` tensor is never built. Channels-last inputs (the
aggregator's token layout) stay channels-last.
"""
from functools import lru_cache
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .fast import FastOptions


@lru_cache(maxsize=8)
def _upconv_taps(device: str) -> torch.Tensor:
    """0/1 tensor ``[phase(4), ky, kx, dy, dx, ry, rx]``: which (conv tap, transposed-conv tap) pair
    lands on low-resolution kernel position ``(ky, kx)`` of each output phase."""
    taps = torch.zeros(4, 2, 2, 3, 3, 2, 2)
    for py in range(2):
        for px in range(2):
            for dy in range(3):
                for dx in range(3):
                    hy, hx = py + dy - 1, px + dx - 1  # offsets in the upsampled map relative to (2i, 2j)
                    taps[2 * py + px, hy // 2 + 1 - py, hx // 2 + 1 - px, dy, dx, hy % 2, hx % 2] = 1
    return taps.to(device)


def fused_upconv_weight(up_weight: torch.Tensor, conv_weight: torch.Tensor) -> torch.Tensor:
    """Weights of ``conv3x3(pad 1) o ConvTranspose2d(k2, s2)`` as a 2x2 conv (pad 1) per output phase.

    Args:
        up_weight: ``[Cin, M, 2, 2]`` transposed-conv weight.
        conv_weight: ``[Cout, M, 3, 3]`` conv weight (on the ``M`` upsampled channels).
    Returns:
        ``[4 * Cout, Cin, 2, 2]``; output channel ``(2 * py + px) * Cout + o`` holds phase
        ``(py, px)``: with ``y = conv2d(x, w, padding=1)`` (size ``H+1``),
        ``out[o, 2i + py, 2j + px] = y[phase * Cout + o, i + py, j + px]``.
    """
    taps = _upconv_taps(str(conv_weight.device)).to(conv_weight.dtype)
    pair = torch.einsum("omab,cmrs->ocabrs", conv_weight, up_weight)  # [Cout, Cin, 3, 3, 2, 2]
    weight = torch.einsum("pyxabrs,ocabrs->pocyx", taps, pair)  # [4, Cout, Cin, 2, 2]
    return weight.flatten(0, 1)


def _add_into(dst: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
    """``dst[...] = a + b`` in one pass when no gradient is needed (``out=`` is not differentiable)."""
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        dst.copy_(a + b)
    else:
        torch.add(a, b, out=dst)


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
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
        )
        self.fast = FastOptions()

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor], num_classes: int) -> torch.Tensor:
        """``x [B*T, Cin, H, W]``, guidance ``[B, G, 2H, 2W]`` -> ``[B*T, Cout, 2H, 2W]``."""
        if self.fast.fused_upconv:
            return self.conv[1:](self._fused_first_conv(x, guidance, num_classes))
        x = self.up(x)
        first = self.conv[0]
        channels = x.shape[1]
        out = F.conv2d(x, first.weight[:, :channels], padding=1)
        if guidance is not None and self.guidance_channels:
            g = F.conv2d(guidance, first.weight[:, channels:], padding=1)  # [B, Cout, 2H, 2W]
            out = (out.unflatten(0, (-1, num_classes)) + g[:, None]).flatten(0, 1)
        return self.conv[1:](out)

    def _fused_first_conv(self, x, guidance, num_classes):
        """``conv[0](concat(up(x), guidance))`` via :func:`fused_upconv_weight`."""
        n, _, h, w = x.shape
        first = self.conv[0]
        channels = self.up.out_channels
        cout = first.out_channels
        with torch.autocast(x.device.type, enabled=False):  # compose the weights in full precision
            weight = fused_upconv_weight(self.up.weight, first.weight[:, :channels])
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        if channels_last:
            weight = weight.contiguous(memory_format=torch.channels_last)
        phases = F.conv2d(x, weight, padding=1)  # [N, 4 * Cout, H + 1, W + 1]
        # per-image term: conv of the transposed-conv bias (zero-padded border) + guidance conv
        bias_map = self.up.bias.view(1, -1, 1, 1).expand(1, channels, 2 * h, 2 * w)
        term = F.conv2d(bias_map, first.weight[:, :channels], padding=1)  # [1, Cout, 2H, 2W]
        if guidance is not None and self.guidance_channels:
            term = term + F.conv2d(guidance, first.weight[:, channels:], padding=1)  # [B, Cout, 2H, 2W]
        term = term.to(phases.dtype)
        images = n // num_classes if term.shape[0] > 1 else 1
        if torch.is_grad_enabled() and (phases.requires_grad or term.requires_grad):
            return self._interleave_phases(phases, term, images, h, w, cout, channels_last)
        if channels_last:
            out = phases.new_empty(n, 2 * h, 2 * w, cout)  # NHWC storage
            out_view = out.view(images, -1, h, 2, w, 2, cout)
            phase_view = phases.permute(0, 2, 3, 1).unflatten(-1, (2, 2, cout))  # [N, H+1, W+1, 2, 2, Cout]
            term_view = term.permute(0, 2, 3, 1).reshape(term.shape[0], 1, h, 2, w, 2, cout)
            for py in range(2):
                for px in range(2):
                    src = phase_view[:, py:py + h, px:px + w, py, px].unflatten(0, (images, -1))
                    _add_into(out_view[:, :, :, py, :, px], src, term_view[:, :, :, py, :, px])
            return out.permute(0, 3, 1, 2)
        out = phases.new_empty(n, cout, 2 * h, 2 * w)
        out_view = out.view(images, -1, cout, h, 2, w, 2)
        phase_view = phases.unflatten(1, (2, 2, cout))  # [N, 2, 2, Cout, H+1, W+1]
        term_view = term.reshape(term.shape[0], 1, cout, h, 2, w, 2)
        for py in range(2):
            for px in range(2):
                src = phase_view[:, py, px, :, py:py + h, px:px + w].unflatten(0, (images, -1))
                _add_into(out_view[:, :, :, :, py, :, px], src, term_view[:, :, :, :, py, :, px])
        return out

    @staticmethod
    def _interleave_phases(phases, term, images, h, w, cout, channels_last):
        """Differentiable pixel shuffle of the four phases plus the per-image term (training)."""
        n = phases.shape[0]
        rows = phases.unflatten(1, (2, 2, cout)).unbind(1)  # unbind: backward is a stack, not zero-fills
        parts = [part[..., py:py + h, px:px + w] for py, row in enumerate(rows) for px, part in enumerate(row.unbind(1))]
        out = torch.stack(parts, dim=-1).view(n, cout, h, w, 2, 2)  # [..., py, px]
        out = out.permute(0, 1, 2, 4, 3, 5).reshape(n, cout, 2 * h, 2 * w)
        out = (out.unflatten(0, (images, -1)) + term[:, None]).flatten(0, 1)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out


class CostDecoder(nn.Module):
    """Up-blocks and the logit head.

    Args:
        in_channels: hidden dim D of the aggregated cost.
        decoder_dims: output channels of each up-block (official ``[64, 32]``).
        guidance_dims: channels of the projected decoder guidance per block (``[32, 16]``).
        fp32_last_block: at inference under autocast, run the last up-block (the
            full-resolution features the logits are read from) in fp32; the other blocks, and
            training (SOLVER.AMP), follow autocast.

    State-dict keys: ``blocks.{i}``, ``head``.
    """

    def __init__(self, in_channels: int, decoder_dims: Sequence[int], guidance_dims: Sequence[int],
                 fp32_last_block: bool = False):
        super().__init__()
        self.fp32_last_block = fp32_last_block
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

    def forward(self, cost: torch.Tensor, guidance: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
        """``cost [B, D, T, H, W]`` + per-block guidance ``[B, G_i, H*2^i, W*2^i]`` -> logits ``[B, T, H', W']``."""
        b, d, t, h, w = cost.shape
        x = cost.transpose(1, 2).reshape(b * t, d, h, w)
        last = len(self.blocks) - 1
        for i, (block, g) in enumerate(zip(self.blocks, guidance)):
            if i == last and self.fp32_last_block and not self.training and torch.is_autocast_enabled(x.device.type):
                with torch.autocast(x.device.type, enabled=False):
                    x = block(x.float(), g.float() if g is not None else None, t)
            else:
                x = block(x, g, t)
        # The logits leave in fp32 also under autocast: bf16 keeps 8 significant bits, which
        # flips the label of pixels where two classes are close (measured on the toy model).
        with torch.autocast(x.device.type, enabled=False):
            logits = self.head(x.float())
        return logits.view(b, t, *x.shape[-2:])
