"""Build the CLIP model used by CAT-Seg and load its weights.

The model is an ``open_clip.CLIP`` whose attention modules are replaced by
:class:`~cat_seg.modeling.clip.attention.SplitQKVAttention` (official parameter layout).
Weights come from (``MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS``):

* an open_clip pretrained tag (``"openai"``, ``"laion2b_s32b_b79k"``, ...; downloaded by
  open_clip on first use, ``"default"`` = the tag the official code used);
* a local checkpoint file (OpenAI TorchScript archive, open_clip state dict, safetensors);
* ``""`` / ``"none"``: random initialisation (tests; or a full CAT-Seg checkpoint is loaded
  afterwards through ``MODEL.WEIGHTS``).
"""
import os
import zipfile
from typing import Dict, Optional, Tuple, Union

import open_clip
import torch

from ...utils import error_line, fit_problems
from .attention import replace_multihead_attention, split_attention_weights
from .model_configs import CLIPArch, resolve_clip_arch

NO_WEIGHTS = ("", "none", "None", "random")

# Entries of OpenAI TorchScript state dicts that are not parameters.
_NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")


class CLIPLoadError(RuntimeError):
    """A CLIP checkpoint could not be read or does not fit the architecture."""


def _is_torchscript_archive(path: str) -> bool:
    """Whether ``path`` is a zip archive with TorchScript code (``torch.jit.save``), not a
    ``torch.save`` file (also a zip archive)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_clip_state_dict(path: str, mmap: bool = False) -> Dict[str, torch.Tensor]:
    """Read a CLIP checkpoint file into an open_clip-layout state dict (packed or split q/k/v).

    Handles OpenAI TorchScript archives, plain/wrapped (``state_dict``) torch files,
    ``module.``-prefixed keys and ``.safetensors``. ``mmap``: tensors of a torch zip file are
    mapped, not read (enough to check their shapes).
    """
    if not os.path.isfile(path):
        raise CLIPLoadError(f"CLIP weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        obj = load_file(path, device="cpu")
    else:
        if _is_torchscript_archive(path):  # OpenAI's original release
            try:
                obj = torch.jit.load(path, map_location="cpu").state_dict()
            except Exception as e:  # torch.jit.load raises RuntimeError and others for a bad archive
                raise CLIPLoadError(f"{path}: not a readable TorchScript archive ({error_line(e, limit=300)})") from None
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
            except Exception as e:  # torch.load raises UnpicklingError, RuntimeError, EOFError, ... for a bad file
                from ...checkpoint.official import not_a_checkpoint

                raise CLIPLoadError(not_a_checkpoint(path, e)) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CLIPLoadError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        if key in _NON_PARAMETER_KEYS:
            continue
        if key.startswith("module."):
            key = key[len("module."):]
        state[key] = value
    return state


def load_clip_weights(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source: str):
    """Load a CLIP state dict into ``model`` (split q/k/v layout); every mismatch is an error
    (:func:`fitted_clip_state`)."""
    state = fitted_clip_state(model, state_dict, source)
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def fitted_clip_state(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source: str
                      ) -> Dict[str, torch.Tensor]:
    """``state_dict`` in ``model``'s layout (split q/k/v), or :class:`CLIPLoadError` naming
    ``source`` and every missing, unexpected or wrongly shaped key. Reads shapes only: works on
    a meta-device model and mapped tensors (the check before a run)."""
    state = split_attention_weights(state_dict)
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    expected = model.state_dict()
    problems = fit_problems(
        sorted(set(expected) - set(state)), sorted(set(state) - set(expected)),
        sorted((k, tuple(state[k].shape), tuple(expected[k].shape)) for k in set(state) & set(expected)
               if state[k].shape != expected[k].shape))
    if problems:
        raise CLIPLoadError(f"CLIP weights {source} do not fit the model: " + "; ".join(problems))
    return state


def build_clip_model(arch: str, weights: Optional[str] = "openai") -> torch.nn.Module:
    """Build the CLIP model of ``arch`` (see :func:`resolve_clip_arch`) with ``weights``.

    Returns an ``open_clip.CLIP`` in fp32 on the CPU with split q/k/v attention.
    """
    resolved: CLIPArch = resolve_clip_arch(arch)
    model = open_clip.CLIP(**resolved.model_cfg, quick_gelu=resolved.quick_gelu)
    replace_multihead_attention(model)
    kind, source, pretrained_cfg = clip_weights_source(resolved, weights)
    if kind == "file":
        load_clip_weights(model, read_clip_state_dict(source), source)
    elif kind == "pretrained":
        try:
            path = open_clip.download_pretrained(pretrained_cfg)
        except Exception as exc:  # the hub or server refused, the connection dropped, the disk filled
            raise CLIPLoadError(
                f"CLIP weights {source} (MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS) cannot be downloaded "
                f"({error_line(exc, limit=300)}); "
                f"fetch them once where the download works: {fetch_command(source)}, or pass a local CLIP "
                f"file as MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS, or a CAT-Seg checkpoint as MODEL.WEIGHTS (it holds "
                f"the CLIP weights too)") from None
        load_clip_weights(model, read_clip_state_dict(path), source)
    return model.float()


def fetch_command(source: str) -> str:
    """The shell command that downloads the open_clip weights ``source`` (``"name/tag"``, as
    :func:`clip_weights_source` names them) into open_clip's cache."""
    name, tag = source.rsplit("/", 1)
    return (f"python -c \"import open_clip; open_clip.download_pretrained("
            f"open_clip.get_pretrained_cfg('{name}', '{tag}'))\"")


def default_pretrained_tag(arch: CLIPArch) -> Optional[str]:
    """The tag ``CLIP_WEIGHTS default`` means for ``arch``: the official code's for an official
    name (``ViT-B/16``: ``openai``; ``ViT-H``: LAION's), else ``openai`` when open_clip has it
    for the model, else its first listed tag; None for a model without pretrained weights."""
    if arch.default_tag:
        return arch.default_tag
    tags = open_clip.list_pretrained_tags_by_model(arch.name)
    return "openai" if "openai" in tags else (tags[0] if tags else None)


def clip_weights_source(arch: Union[str, CLIPArch], weights: Optional[str]) -> Tuple[str, str, Optional[dict]]:
    """What ``CLIP_WEIGHTS`` names, without reading or downloading anything:
    ``("none", "", None)``, ``("file", path, None)`` or ``("pretrained", "name/tag",
    open_clip's pretrained config)``. Raises :class:`CLIPLoadError` for a missing file or a
    tag the architecture does not have (also what the command lines check before starting)."""
    resolved = resolve_clip_arch(arch) if isinstance(arch, str) else arch
    weights = "" if weights is None else str(weights)
    if weights in NO_WEIGHTS:
        return "none", "", None
    if os.path.exists(weights) or os.sep in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors")):
        if not os.path.isfile(weights):
            raise CLIPLoadError(f"CLIP weights file {weights!r} (MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS) not found")
        return "file", weights, None
    default_tag = default_pretrained_tag(resolved)
    tag = default_tag if weights == "default" else weights
    pretrained_cfg = open_clip.get_pretrained_cfg(resolved.name, tag or "")
    if not pretrained_cfg:
        if weights == "default" and default_tag is None:
            raise CLIPLoadError(f"MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS=default: open_clip has no pretrained weights for "
                                f"{resolved.name}; give a weights file, or none (random, with MODEL.WEIGHTS of a "
                                f"full CAT-Seg checkpoint)")
        known = open_clip.list_pretrained_tags_by_model(resolved.name)
        default = (f"; MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS default picks {default_tag!r}"
                   if default_tag and weights != "default" else "")
        raise CLIPLoadError(
            f"MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS={weights!r} is neither a file nor a pretrained tag "
            f"of {resolved.name} (known tags: {known}){default}"
        )
    return "pretrained", f"{resolved.name}/{tag}", pretrained_cfg
