"""Upsampling decoder of the aggregated cost volume, with decoder guidance (spec 2.7).

Each up-block doubles the resolution of every class map with a transposed conv, concatenates
the (per-image) decoder guidance, and applies a DoubleConv (conv3x3-GN-ReLU x2). The head
maps the last features to one logit per class and pixel.

The guidance is shared by all classes of an image; the first conv is linear in its input,
so ``conv([up, g]) = conv_up(up) + conv_g(g)`` is evaluated with the guidance term computed
once per image and broadcast over classes (no T-fold copy of the guidance).
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


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

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor], num_classes: int) -> torch.Tensor:
        """``x [B*T, Cin, H, W]``, guidance ``[B, G, 2H, 2W]`` -> ``[B*T, Cout, 2H, 2W]``."""
        x = self.up(x)
        first = self.conv[0]
        channels = x.shape[1]
        out = F.conv2d(x, first.weight[:, :channels], padding=1)
        if guidance is not None and self.guidance_channels:
            g = F.conv2d(guidance, first.weight[:, channels:], padding=1)  # [B, Cout, 2H, 2W]
            out = (out.unflatten(0, (-1, num_classes)) + g[:, None]).flatten(0, 1)
        return self.conv[1:](out)


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

    def forward(self, cost: torch.Tensor, guidance: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
        """``cost [B, D, T, H, W]`` + per-block guidance ``[B, G_i, H*2^i, W*2^i]`` -> logits ``[B, T, H', W']``."""
        b, d, t, h, w = cost.shape
        x = cost.transpose(1, 2).reshape(b * t, d, h, w)
        for block, g in zip(self.blocks, guidance):
            x = block(x, g, t)
        return self.head(x).view(b, t, *x.shape[-2:])
