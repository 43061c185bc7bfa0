"""Which CLIP architecture a config names, and its open_clip model config.

``MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED`` may be
* an official CAT-Seg name (``ViT-B/16``, ``ViT-L/14@336px``, ``ViT-H``, ``ViT-G``),
* an open_clip model name (``ViT-B-16``, ``ViT-L-14-336``, ``ViT-H-14``, ...), or
* a path to an open_clip-style model-config JSON (``{"embed_dim", "vision_cfg",
  "text_cfg"}``, optional ``"quick_gelu"``), e.g. the tiny test models under
  ``configs/clip_models/``.

Everything else (grid size, widths, guidance blocks) is derived from the built model.
"""
import dataclasses
import inspect
import json
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import open_clip
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

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


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0  # JSON true is no count


def _positive_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0


def _image_size(value) -> bool:
    return _positive_int(value) or (isinstance(value, list) and len(value) == 2 and all(map(_positive_int, value)))


_POSITIVE_INT = (_positive_int, "a positive integer")
_POSITIVE_NUMBER = (_positive_number, "a positive number")

#: the fields of a model-config JSON that the CLIP model is built from -> (accepts the value,
#: what is expected); a wrong value reached open_clip.CLIP(...) and failed there (e.g. "unsupported
#: operand type(s) for //: 'str' and 'int'"), reported as MODEL.META_ARCHITECTURE not building
MODEL_CONFIG_FIELDS: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "embed_dim": _POSITIVE_INT,
    "quick_gelu": (lambda value: isinstance(value, bool), "true or false"),
    "vision_cfg.image_size": (_image_size, "a positive integer or a list of two ([height, width])"),
    "vision_cfg.patch_size": _POSITIVE_INT,
    "vision_cfg.width": _POSITIVE_INT,
    "vision_cfg.head_width": _POSITIVE_INT,
    "vision_cfg.layers": _POSITIVE_INT,
    "vision_cfg.mlp_ratio": _POSITIVE_NUMBER,
    "text_cfg.context_length": _POSITIVE_INT,
    "text_cfg.vocab_size": _POSITIVE_INT,
    "text_cfg.width": _POSITIVE_INT,
    "text_cfg.heads": _POSITIVE_INT,
    "text_cfg.layers": _POSITIVE_INT,
    "text_cfg.mlp_ratio": _POSITIVE_NUMBER,
}

#: what open_clip.CLIP accepts in each part of a model config (the tower configs are dataclasses)
_KNOWN_FIELDS = {
    "": set(inspect.signature(open_clip.CLIP).parameters) - {"self"},
    "vision_cfg": {f.name for f in dataclasses.fields(CLIPVisionCfg)},
    "text_cfg": {f.name for f in dataclasses.fields(CLIPTextCfg)},
}


def check_model_config_file(cfg: Any, path: str) -> None:
    """Raise a ``ValueError`` naming ``path`` and the field (``vision_cfg.width``) when the
    model-config JSON ``cfg`` is not one open_clip can build: not a JSON object, a key missing or
    unknown, a field of :data:`MODEL_CONFIG_FIELDS` of the wrong type or not positive, or a width
    that the attention heads do not divide. The fields of a kind of model CAT-Seg cannot use
    are not checked: :func:`resolve_clip_arch` names that kind (:func:`unsupported_tower`; a
    ResNet's ``layers`` is a list)."""
    from ...cli.errors import closest_name

    def fail(problem: str):
        raise ValueError(f"{path} (the open_clip model config of MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED): {problem}")

    if not isinstance(cfg, dict):
        fail(f"holds a JSON {type(cfg).__name__}; expected an object with embed_dim, vision_cfg and text_cfg")
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        fail(f"lacks key(s) {', '.join(missing)}")
    for part in ("vision_cfg", "text_cfg"):
        if not isinstance(cfg[part], dict):
            fail(f"{part} is {json.dumps(cfg[part])}; expected a JSON object")
    if unsupported_tower(cfg):
        return  # resolve_clip_arch names the kind of model (CoCa's multimodal_cfg is no CLIP field)
    for part, known in _KNOWN_FIELDS.items():
        prefix = f"{part}." if part else ""
        for name in (cfg[part] if part else cfg):
            if name not in known:
                guess = closest_name(name, known)
                fail(f"unknown field {prefix}{name}" + (f"; did you mean {prefix}{guess}?" if guess else ""))
    for full, (accepts, expected) in MODEL_CONFIG_FIELDS.items():
        part, _, name = full.rpartition(".")
        values = cfg[part] if part else cfg
        if name in values and not accepts(values[name]):
            fail(f"{full} is {json.dumps(values[name])}; expected {expected}")  # as written in the file
    vision, text = CLIPVisionCfg(**cfg["vision_cfg"]), CLIPTextCfg(**cfg["text_cfg"])  # open_clip's defaults
    if vision.width % vision.head_width:  # open_clip gives the image tower width // head_width heads
        fail(f"vision_cfg.width {vision.width} is not a multiple of vision_cfg.head_width {vision.head_width}")
    if text.width % text.heads:
        fail(f"text_cfg.width {text.width} is not a multiple of text_cfg.heads {text.heads}")


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
        check_model_config_file(cfg, spec)
        quick_gelu = cfg.pop("quick_gelu", False)
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
