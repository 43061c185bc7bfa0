"""The CLIP ViT backbone of CAT-Seg: dense image embeddings plus guidance features.

The backbone is the CLIP image tower (``docs/architecture.md``, "Backbone"). It holds the
CLIP model's parameters (``backbone.clip.*``, the layout of official and our checkpoints;
the text tower among them is used by :class:`~cat_seg.modeling.clip.TextEncoder`, which
references it), and its forward runs the image tower only, returning explicitly and
without hooks:

* ``dense_embeddings`` ``[B, C, h, w]``: every patch token after the dense last block,
  ``ln_post`` and ``proj``: CLIP-aligned per-patch embeddings;
* ``block<i>`` ``[B, W, h, w]`` for each ``i`` of ``guidance_blocks``: the raw residual-stream
  output of that intermediate block (no ln_post, no proj).
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from torch import nn

from ..clip import apply_clip_finetune, build_clip_model


def default_guidance_blocks(depth: int) -> List[int]:
    """Intermediate blocks used for decoder guidance, derived from the visual depth.

    ``[depth // 3 - 1, 2 * depth // 3 - 1]``: the official choice 3/7 for 12 blocks (ViT-B)
    and 7/15 for 24 blocks (ViT-L); clamped to valid non-final blocks for tiny models.
    """
    last = max(depth - 2, 0)
    return [min(max(depth // 3 - 1, 0), last), min(max(2 * depth // 3 - 1, 0), last)]


def interpolate_positional_embedding(pos_embed: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Resize a ViT positional table ``[1 + g*g, W]`` to ``[1 + grid[0]*grid[1], W]``.

    Row 0 (class position) is kept; the patch rows are reshaped to their square grid and
    resized with bicubic interpolation (align_corners=False), as the official code does. Returns the
    table unchanged when it already has the right size.

    Bicubic resizing is separable, and ``F.interpolate`` along an axis whose size does not
    change copies that axis exactly (weights 0, 1, 0, 0). So the table is resized in two
    ``F.interpolate`` calls, one per axis, with the channels folded into the other axis:
    the same arithmetic as the 2-D call, bit for bit (checked in the tests), but the CUDA
    kernel, which runs one thread per output position and loops over the channels, gets
    ``W * grid`` positions instead of ``grid[0] * grid[1]`` (the 2-D call on the
    768-channel ViT-B table took 2.3 ms on an H200, 4% of an inference).
    """
    num_patches = pos_embed.shape[0] - 1
    if num_patches == grid[0] * grid[1]:
        return pos_embed
    side = int(math.isqrt(num_patches))
    if side * side != num_patches:
        raise ValueError(f"positional embedding with {num_patches} patch rows is not a square grid")
    width = pos_embed.shape[1]
    rows, cols = int(grid[0]), int(grid[1])
    table = pos_embed[1:].float().reshape(side, side, width)
    # along the columns: [1, 1, (row, channel), column]
    table = table.permute(0, 2, 1).reshape(1, 1, side * width, side)
    table = F.interpolate(table, size=(side * width, cols), mode="bicubic", align_corners=False)
    # along the rows: [1, 1, row, (channel, column)]
    table = F.interpolate(table.view(1, 1, side, width * cols), size=(rows, width * cols), mode="bicubic",
                          align_corners=False)
    patch_pos = table.view(rows, width, cols).permute(0, 2, 1).reshape(rows * cols, width)
    return torch.cat([pos_embed[:1], patch_pos.to(pos_embed.dtype)], dim=0)


@BACKBONE_REGISTRY.register()
class CLIPVisionBackbone(Backbone):
    """CLIP ViT image tower with CAT-Seg's dense forward.

    Args:
        clip_model: an ``open_clip.CLIP`` with split q/k/v attention (see
            :func:`~cat_seg.modeling.clip.build_clip_model`); both towers are held (and
            fine-tuned by ``finetune``), the forward uses ``clip_model.visual``.
        resolution: ``(H, W)`` of the input fed to CLIP (images are resized to it). The
            official recipe feeds a 24x24 patch grid: 384 px for ViT-B/16, 336 for ViT-L/14.
        guidance_blocks: indexes of the blocks whose outputs are returned as guidance.
        finetune: CLIP fine-tuning policy (``attention``, ``prompt``, ``full``, ``none``).
        prompt_depth, prompt_length: deep visual prompts (``prompt`` mode): ``length``
            learned tokens inserted after the class token before each of the first
            ``depth`` blocks and removed after it.
    """

    @configurable
    def __init__(
        self,
        *,
        clip_model: nn.Module,
        resolution: Sequence[int],
        guidance_blocks: Sequence[int],
        finetune: str = "attention",
        prompt_depth: int = 0,
        prompt_length: int = 0,
    ):
        super().__init__()
        self.clip = clip_model
        visual = clip_model.visual
        self.depth = len(visual.transformer.resblocks)
        self.width = visual.conv1.out_channels
        self.patch_size = visual.conv1.kernel_size[0]
        self.embed_dim = visual.proj.shape[1]
        self.resolution = (int(resolution[0]), int(resolution[1]))
        if self.resolution[0] % self.patch_size or self.resolution[1] % self.patch_size:
            raise ValueError(f"CLIP resolution {self.resolution} is not a multiple of the patch size {self.patch_size} "
                             "(MODEL.SEM_SEG_HEAD.CLIP_RESOLUTION)")
        self.guidance_blocks = [int(i) for i in guidance_blocks]
        for index in self.guidance_blocks:
            if not 0 <= index < self.depth - 1:
                raise ValueError(
                    f"guidance block {index} is out of range: the image tower has {self.depth} blocks "
                    f"and the last one ({self.depth - 1}) is the dense block"
                )
        if not 0 <= prompt_depth <= self.depth:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.PROMPT_DEPTH={prompt_depth}: expected 0 to {self.depth} (the image "
                             "tower's blocks that get prompts)")
        if prompt_length < 0:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.PROMPT_LENGTH={prompt_length}: expected 0 or more prompt tokens per "
                             "block")
        if prompt_depth and prompt_length:
            self.visual_prompt_tokens = nn.Parameter(torch.zeros(prompt_depth, prompt_length, self.width))
            nn.init.trunc_normal_(self.visual_prompt_tokens, std=0.02)
        else:
            self.visual_prompt_tokens = None
        prompts = [self.visual_prompt_tokens] if self.visual_prompt_tokens is not None else []
        apply_clip_finetune(self.clip, finetune, prompts)
        self.finetune = finetune
        self._out_features = ["dense_embeddings"] + [f"block{i}" for i in self.guidance_blocks]

    def clip_parameters(self) -> List[nn.Parameter]:
        """CLIP's parameters and the prompt tokens that extend it: the optimizer gives them
        ``SOLVER.CLIP_MULTIPLIER`` (:func:`cat_seg.solver.get_param_groups`)."""
        prompts = [self.visual_prompt_tokens] if self.visual_prompt_tokens is not None else []
        return list(self.clip.parameters()) + prompts

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        head = cfg.MODEL.SEM_SEG_HEAD
        clip_model = build_clip_model(head.CLIP_PRETRAINED, head.CLIP_WEIGHTS)
        depth = len(clip_model.visual.transformer.resblocks)
        if head.CLIP_RESOLUTION:
            resolution = (head.CLIP_RESOLUTION, head.CLIP_RESOLUTION)
        else:  # the patch grid of the aggregator times the patch size
            patch = clip_model.visual.conv1.kernel_size[0]
            resolution = tuple(side * patch for side in head.FEATURE_RESOLUTION)
        return {
            "clip_model": clip_model,
            "resolution": resolution,
            "guidance_blocks": list(head.GUIDANCE_BLOCK_INDEXES) or default_guidance_blocks(depth),
            "finetune": head.CLIP_FINETUNE,
            "prompt_depth": head.PROMPT_DEPTH,
            "prompt_length": head.PROMPT_LENGTH,
        }

    # ------------------------------------------------------------------ shapes
    @property
    def grid_size(self):
        """Patch grid ``(h, w)`` of a ``resolution``-sized input."""
        return self.resolution[0] // self.patch_size, self.resolution[1] // self.patch_size

    def output_shape(self) -> Dict[str, ShapeSpec]:
        shapes = {"dense_embeddings": ShapeSpec(channels=self.embed_dim, stride=self.patch_size)}
        for i in self.guidance_blocks:
            shapes[f"block{i}"] = ShapeSpec(channels=self.width, stride=self.patch_size)
        return shapes

    # ------------------------------------------------------------------ image tower
    def positional_embedding(self, grid: Sequence[int]) -> torch.Tensor:
        """Positional table for a patch grid (interpolated from the stored table)."""
        return interpolate_positional_embedding(self.clip.visual.positional_embedding, grid)

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised images -> token sequence ``[B, 1 + h*w, W]`` after ln_pre."""
        visual = self.clip.visual
        x = visual.conv1(images)
        grid = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding(grid).to(x.dtype)
        return visual.ln_pre(x)

    @staticmethod
    def dense_last_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The dense computation of the last block, ``[B, L, W] -> [B, L, W]`` (``docs/architecture.md``).

        ``v = out_proj(W_v ln_1(x) + b_v)`` (no softmax attention), residual = the class-token
        row of the block input broadcast to every position, then the block's MLP residual. The
        block's layer scales (``ls_1``/``ls_2``; identities in the OpenAI and LAION models) scale
        the two branches as in the block's own forward.
        """
        v = block.ls_1(block.attn.out_proj(block.attn.project(block.ln_1(x), "v")))
        v = v + x[:, :1]
        return v + block.ls_2(block.mlp(block.ln_2(v)))

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Dense CLIP encode.

        Args:
            images: ``[B, 3, H, W]`` CLIP-normalised images (H, W multiples of the patch size;
                normally ``resolution``).
        Returns:
            dict (detectron2's backbone outputs, as :meth:`output_shape` names them) with
            ``dense_embeddings`` ``[B, C, h, w]`` and, for each ``i`` of ``guidance_blocks``,
            ``block{i}``: that block's output ``[B, W, h, w]``.
        """
        batch = images.shape[0]
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        x = self.embed_patches(images)
        blocks = self.clip.visual.transformer.resblocks
        intermediates = {}
        for index, block in enumerate(blocks[:-1]):
            prompts = self._prompts_for(index, batch, x.dtype)
            if prompts is not None:
                x = torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1)
            x = block(x)
            if prompts is not None:
                x = torch.cat([x[:, :1], x[:, 1 + prompts.shape[1]:]], dim=1)
            if index in self.guidance_blocks:
                intermediates[index] = x
        x = self.dense_last_block(blocks[-1], x)
        x = self.clip.visual.ln_post(x) @ self.clip.visual.proj
        out = {"dense_embeddings": self._tokens_to_map(x, h, w)}
        for i in self.guidance_blocks:
            out[f"block{i}"] = self._tokens_to_map(intermediates[i], h, w)
        return out

    def _prompts_for(self, index: int, batch: int, dtype) -> Optional[torch.Tensor]:
        if self.visual_prompt_tokens is None or index >= self.visual_prompt_tokens.shape[0]:
            return None
        return self.visual_prompt_tokens[index].to(dtype).expand(batch, -1, -1)

    @staticmethod
    def _tokens_to_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Drop the class token and lay the patch tokens out row-major: ``[B, 1+hw, D] -> [B, D, h, w]``."""
        return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
