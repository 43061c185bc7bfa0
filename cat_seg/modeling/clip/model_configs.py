"""Which CLIP architecture a config names, and its open_clip model config.

``MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED`` may be
* an official CAT-Seg name (``ViT-B/16``, ``ViT-L/14@336px``, ``ViT-H``, ``ViT-G``),
* an open_clip model name (``ViT-B-16``, ``ViT-L-14-336``, ``ViT-H-14``, ...), or
* a path to an open_clip-style model-config JSON (``{"embed_dim", "vision_cfg",
  "text_cfg"}``, optional ``"quick_gelu"``), e.g. the tiny test models under
  ``configs/clip_models/``.

Everything else (grid size, widths, guidance blocks) is derived from the built model.
"""
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import open_clip

from ...utils import resolve_path

# Official CAT-Seg names -> (open_clip model name, default pretrained tag, QuickGELU).
OFFICIAL_CLIP_NAMES = {
    "ViT-B/16": ("ViT-B-16", "openai", True),
    "ViT-B/32": ("ViT-B-32", "openai", True),
    "ViT-L/14": ("ViT-L-14", "openai", True),
    "ViT-L/14@336px": ("ViT-L-14-336", "openai", True),
    "ViT-H": ("ViT-H-14", "laion2b_s32b_b79k", False),
    "ViT-G": ("ViT-bigG-14", "laion2b_s39b_b160k", False),
}


@dataclass
class CLIPArch:
    """A resolved CLIP architecture.

    Attributes:
        name: open_clip model name (or the JSON file stem).
        model_cfg: open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``).
        default_tag: pretrained tag used when ``CLIP_WEIGHTS`` is ``"default"``.
        quick_gelu: whether the MLPs use QuickGELU (OpenAI-trained models).
    """

    name: str
    model_cfg: Dict[str, Any] = field(default_factory=dict)
    default_tag: Optional[str] = None
    quick_gelu: bool = False


def resolve_clip_arch(spec: str) -> CLIPArch:
    """Resolve ``CLIP_PRETRAINED`` into a :class:`CLIPArch`; clear ``ValueError`` if unknown."""
    if spec in OFFICIAL_CLIP_NAMES:
        name, tag, quick_gelu = OFFICIAL_CLIP_NAMES[spec]
        return CLIPArch(name, open_clip.get_model_config(name), tag, quick_gelu)
    if spec.endswith(".json"):
        spec = resolve_path(spec)
        if not os.path.isfile(spec):
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED={spec!r}: model-config file not found"
            )
        with open(spec) as f:
            try:
                cfg = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{spec}: not valid JSON ({e})") from None
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
        if missing:
            raise ValueError(f"{spec}: open_clip model config lacks key(s) {missing}")
        quick_gelu = bool(cfg.pop("quick_gelu", False))
        name = os.path.splitext(os.path.basename(spec))[0]
        return CLIPArch(name, cfg, None, quick_gelu)
    base = spec[: -len("-quickgelu")] if spec.endswith("-quickgelu") else spec
    cfg = open_clip.get_model_config(spec) or open_clip.get_model_config(base)
    if cfg is None:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED={spec!r} is neither an official name "
            f"{sorted(OFFICIAL_CLIP_NAMES)}, an open_clip model name, nor a .json model config"
        )
    cfg = dict(cfg)
    quick_gelu = bool(cfg.pop("quick_gelu", False)) or spec.endswith("-quickgelu")
    return CLIPArch(spec, cfg, None, quick_gelu)
