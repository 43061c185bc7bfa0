"""CLIP fine-tuning policies (``MODEL.SEM_SEG_HEAD.CLIP_FINETUNE``; ``docs/architecture.md``).

The rule is applied to every parameter name of the CLIP model (official names):

* names without ``transformer`` (patch conv, embeddings, ln_pre/ln_post, projections,
  logit_scale) are frozen in every mode;
* ``attention``: only ``attn.q_proj_weight`` and ``attn.v_proj_weight`` of every block of
  both towers (biases, k, out_proj, positional embeddings stay frozen, as in the official code);
* ``prompt``: only the deep visual prompt tokens;
* ``full``: every ``transformer`` parameter, the deep visual prompt tokens included (the
  official code keeps them in its CLIP model as ``visual.transformer.prompt_tokens``);
* ``none``: everything frozen.
"""
from typing import Iterable, List

from torch import nn

FINETUNE_MODES = ("attention", "prompt", "full", "none")
# The official name of the deep visual prompt tokens, which cat-seg keeps outside the CLIP
# module (``backbone.visual_prompt_tokens``): the rule is applied to it as to CLIP's names.
PROMPT_TOKENS_NAME = "visual.transformer.prompt_tokens"


def _trainable(name: str, mode: str) -> bool:
    if "transformer" not in name:
        return False
    if mode == "attention":
        return "attn" in name and ("q_proj" in name or "v_proj" in name)
    if mode == "prompt":
        return "prompt" in name
    if mode == "full":
        return True
    return False


def apply_clip_finetune(clip_model: nn.Module, mode: str, extra_prompt_params: Iterable[nn.Parameter] = ()) -> List[str]:
    """Set ``requires_grad`` on ``clip_model`` for ``mode``; returns the trainable names.

    ``extra_prompt_params`` (deep visual prompts kept outside the CLIP module) follow the rule
    for their official name :data:`PROMPT_TOKENS_NAME`: trainable in ``prompt`` and ``full``
    modes.
    """
    if mode not in FINETUNE_MODES:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.CLIP_FINETUNE={mode!r} is unknown; expected one of {FINETUNE_MODES}"
        )
    trainable = []
    for name, param in clip_model.named_parameters():
        param.requires_grad_(_trainable(name, mode))
        if param.requires_grad:
            trainable.append(name)
    for param in extra_prompt_params:
        param.requires_grad_(_trainable(PROMPT_TOKENS_NAME, mode))
    return trainable
