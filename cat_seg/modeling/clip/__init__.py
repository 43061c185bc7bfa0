"""CLIP side of CAT-Seg: model configs, loading, attention layout, prompts, fine-tuning."""
from .attention import SplitQKVAttention, split_attention_weights
from .builder import CLIPLoadError, build_clip_model, read_clip_state_dict
from .finetune import FINETUNE_MODES, apply_clip_finetune
from .model_configs import CLIPArch, resolve_clip_arch
from .prompts import PROMPT_TEMPLATES, get_templates
from .text_encoder import TextEncoder

__all__ = [
    "SplitQKVAttention", "split_attention_weights", "CLIPLoadError", "build_clip_model",
    "read_clip_state_dict", "FINETUNE_MODES", "apply_clip_finetune", "CLIPArch",
    "resolve_clip_arch", "PROMPT_TEMPLATES", "get_templates", "TextEncoder",
]
