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
    """Resolve ``CLIP_PRETRAINED`` into a :class:`CLIPArch`; clear ``ValueError`` if unknown or
    of a kind CAT-Seg cannot use (:func:`unsupported_tower`)."""
    arch = _resolve(spec)
    reason = unsupported_tower(arch.model_cfg)
    if reason:
        raise ValueError(f"MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED={spec!r}: {reason}; CAT-Seg needs an open_clip CLIP "
                         f"with a ViT image tower and open_clip's own text transformer (e.g. ViT-B/16, "
                         f"ViT-L/14@336px, ViT-B-32)")
    return arch


def unsupported_tower(model_cfg: Dict[str, Any]) -> Optional[str]:
    """Why ``open_clip.CLIP(**model_cfg)`` would not be a CLIP CAT-Seg can use, or ``None``: the
    cost volume reads the patch tokens of open_clip's ``VisionTransformer`` and the text encoder
    runs open_clip's ``TextTransformer`` on the tokens of open_clip's CLIP tokenizer; ResNet,
    timm and Hugging Face towers, CoCa and the custom-text models (SigLIP, EVA, MobileCLIP)
    have other modules, and models with a Hugging Face tokenizer (CLIPA, the worldwide models)
    other tokens."""
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if "multimodal_cfg" in model_cfg:
        return "a CoCa model (multimodal_cfg)"
    if model_cfg.get("custom_text"):
        return "a model with a custom text tower (custom_text: SigLIP, EVA, MobileCLIP and the like)"
    if vision.get("timm_model_name"):
        return f"its image tower is the timm model {vision['timm_model_name']!r}"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "its image tower is a ResNet"
    if vision.get("attentional_pool"):  # the dense path reads the tokens before any pooling
        return "its image tower pools with attention (attentional_pool)"
    if text.get("hf_model_name"):
        return f"its text tower is the Hugging Face model {text['hf_model_name']!r}"
    if text.get("hf_tokenizer_name"):  # the text encoder tokenizes with open_clip's CLIP tokenizer
        return f"its text tower reads the tokens of the Hugging Face tokenizer {text['hf_tokenizer_name']!r}"
    return None


def _resolve(spec: str) -> CLIPArch:
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
