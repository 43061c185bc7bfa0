"""The official CAT-Seg checkpoint layout and its mapping onto our modules.

Official checkpoints (``model_base.pth``, ``model_large.pth``) are detectron2 checkpoints of
the official code: ``{"model": state_dict, ...}`` (possibly with ``optimizer`` /
``scheduler`` / ``iteration`` / ``trainer`` extras) or a bare state dict, with keys

* ``sem_seg_head.predictor.clip_model.*``: CLIP, split ``q/k/v_proj_weight`` + packed
  ``in_proj_bias`` (the same inner names as our ``backbone.clip.*``);
* ``sem_seg_head.predictor.transformer.*``: the aggregator;
* ``upsample1.*`` / ``upsample2.*``: the decoder-guidance upsamplers.

:data:`RULES` (official -> ours) and :data:`DROPS` (official keys we do not load, with the
reason) are the one place that describes the mapping. :func:`convert_official_state_dict`
applies it and returns a :class:`ConversionReport`; a state dict already in our layout is
passed through untouched.
"""
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from ..modeling.clip.attention import unpack_qkv
from .errors import CheckpointFormatError, show_keys

OFFICIAL = "official"
OURS = "ours"
UNKNOWN = "unknown"

_CLIP = "sem_seg_head.predictor.clip_model."
_AGG = "sem_seg_head.predictor.transformer."
_OUR_CLIP = "backbone.clip."
_OUR_AGG = "sem_seg_head.aggregator."

# Parameter names inside one CLIP residual block (both towers).
_CLIP_BLOCK_PARAM = (
    r"attn\.(?:q|k|v)_proj_weight|attn\.in_proj_bias|attn\.out_proj\.(?:weight|bias)"
    r"|ln_[12]\.(?:weight|bias)|mlp\.c_(?:fc|proj)\.(?:weight|bias)"
)
# Every CLIP parameter name of the official model (OpenAI CLIP).
_CLIP_PARAM = (
    r"positional_embedding|text_projection|logit_scale|token_embedding\.weight|ln_final\.(?:weight|bias)"
    r"|visual\.(?:class_embedding|positional_embedding|proj|conv1\.weight|ln_pre\.(?:weight|bias)"
    r"|ln_post\.(?:weight|bias))"
    rf"|(?:visual\.)?transformer\.resblocks\.\d+\.(?:{_CLIP_BLOCK_PARAM})"
)

# ``{name}`` in a rule pattern matches this regex; in a target it is replaced by what it
# matched, and ``{name-1}`` by that number minus one (official 1-based -> our 0-based).
PLACEHOLDERS: Dict[str, str] = {
    "clip": _CLIP_PARAM,
    "block": r"(?:visual\.)?transformer\.resblocks\.\d+",
    "p": r"weight|bias",
    "i": r"\d+",
    "l": r"\d+",
    "n": r"[1-9]\d*",
    "swin": r"block_1|block_2",
    "norm": r"norm1|norm2",
    "wattn": r"q|k|v|proj",
    "fc": r"fc1|fc2",
    "cattn": r"q|k|v",
    "mlp": r"0|2",
    "pad": r"padding_tokens|padding_guidance",
    "conv": r"0|1|3|4",
    "buffer": r"pixel_mean|pixel_std|clip_pixel_mean|clip_pixel_std",
}


@dataclass(frozen=True)
class Rule:
    """Official key pattern -> our key template.

    ``split_qkv``: the official tensor is a packed ``in_proj_weight [3W, W]``; it is split
    into three ``[W, W]`` tensors for the targets with ``{qkv}`` = ``q``, ``k``, ``v``.
    """

    source: str
    target: str
    split_qkv: bool = False


@dataclass(frozen=True)
class Drop:
    """Official keys that are deliberately not loaded, and why."""

    source: str
    reason: str


RULES: Tuple[Rule, ...] = (
    # CLIP: identical inner names below backbone.clip (first matching rule wins).
    Rule(_CLIP + "visual.transformer.prompt_tokens", "backbone.visual_prompt_tokens"),
    Rule(_CLIP + "{block}.attn.in_proj_weight", _OUR_CLIP + "{block}.attn.{qkv}_proj_weight", split_qkv=True),
    Rule(_CLIP + "{clip}", _OUR_CLIP + "{clip}"),
    # Aggregator (official `transformer`).
    Rule(_AGG + "conv1.{p}", _OUR_AGG + "cost_embed.{p}"),
    Rule(_AGG + "guidance_projection.0.{p}", _OUR_AGG + "appearance_guidance_proj.0.{p}"),
    Rule(_AGG + "text_guidance_projection.0.{p}", _OUR_AGG + "text_guidance_proj.0.{p}"),
    Rule(_AGG + "decoder_guidance_projection.{i}.0.{p}", _OUR_AGG + "decoder_guidance_proj.{i}.0.{p}"),
    Rule(_AGG + "layers.{l}.swin_block.{swin}.{norm}.{p}", _OUR_AGG + "layers.{l}.spatial.{swin}.{norm}.{p}"),
    Rule(_AGG + "layers.{l}.swin_block.{swin}.attn.{wattn}.{p}", _OUR_AGG + "layers.{l}.spatial.{swin}.attn.{wattn}.{p}"),
    Rule(_AGG + "layers.{l}.swin_block.{swin}.mlp.{fc}.{p}", _OUR_AGG + "layers.{l}.spatial.{swin}.mlp.{fc}.{p}"),
    Rule(_AGG + "layers.{l}.swin_block.guidance_norm.{p}", _OUR_AGG + "layers.{l}.spatial.guidance_norm.{p}"),
    Rule(_AGG + "layers.{l}.attention.{pad}", _OUR_AGG + "layers.{l}.classes.{pad}"),
    Rule(_AGG + "layers.{l}.attention.attention.{cattn}.{p}", _OUR_AGG + "layers.{l}.classes.attn.{cattn}.{p}"),
    Rule(_AGG + "layers.{l}.attention.MLP.{mlp}.{p}", _OUR_AGG + "layers.{l}.classes.mlp.{mlp}.{p}"),
    Rule(_AGG + "layers.{l}.attention.{norm}.{p}", _OUR_AGG + "layers.{l}.classes.{norm}.{p}"),
    Rule(_AGG + "decoder{n}.up.{p}", _OUR_AGG + "decoder.blocks.{n-1}.up.{p}"),
    Rule(_AGG + "decoder{n}.conv.double_conv.{conv}.{p}", _OUR_AGG + "decoder.blocks.{n-1}.conv.{conv}.{p}"),
    Rule(_AGG + "head.{p}", _OUR_AGG + "decoder.head.{p}"),
    # Top level.
    Rule("upsample{n}.{p}", "sem_seg_head.guidance_upsample.{n-1}.{p}"),
)

DROPS: Tuple[Drop, ...] = (
    Drop(_AGG + "layers.{l}.swin_block.{swin}.attn_mask",
         "shifted-window attention mask buffer; recomputed from the window geometry"),
    Drop("{buffer}", "normalisation constants; taken from the config (MODEL.CLIP_PIXEL_MEAN/STD)"),
)


def _compile(pattern: str) -> "re.Pattern[str]":
    parts = re.split(r"\{(\w+)\}", pattern)
    regex = ""
    for index, part in enumerate(parts):
        if index % 2:
            regex += f"(?P<{part}>{PLACEHOLDERS[part]})"
        else:
            regex += re.escape(part)
    return re.compile(regex)


def _fill(template: str, groups: Mapping[str, str]) -> str:
    def replace(match):
        name, minus_one = match.group(1), match.group(2)
        return str(int(groups[name]) - 1) if minus_one else groups[name]

    return re.sub(r"\{(\w+)(-1)?\}", replace, template)


_COMPILED_RULES = [(rule, _compile(rule.source)) for rule in RULES]
_COMPILED_DROPS = [(drop, _compile(drop.source)) for drop in DROPS]


@dataclass
class MappedKey:
    """One converted tensor: official ``source`` -> our ``target`` by ``rule``."""

    source: str
    target: str
    rule: Rule


@dataclass
class ConversionReport:
    """What :func:`convert_official_state_dict` did.

    Attributes:
        layout: ``official`` (converted), ``ours`` (passed through) or ``unknown``.
        mapped: converted keys (a split packed projection gives three entries).
        dropped: ``(official key, reason)`` of keys deliberately not loaded.
        unknown: official keys no rule knows (loading refuses them).
        cast: ``(key, original dtype)`` of tensors cast to float32.
    """

    layout: str
    mapped: List[MappedKey] = field(default_factory=list)
    dropped: List[Tuple[str, str]] = field(default_factory=list)
    unknown: List[str] = field(default_factory=list)
    cast: List[Tuple[str, str]] = field(default_factory=list)

    def source_of(self, target: str) -> Optional[str]:
        """Official key a converted key came from (None if it was not converted)."""
        for item in self.mapped:
            if item.target == target:
                return item.source
        return None

    def summary(self, verbose: bool = False) -> str:
        """Multi-line human-readable account (per rule counts; every key with ``verbose``)."""
        if self.layout != OFFICIAL:
            return f"layout: {self.layout} (no conversion)"
        lines = [f"layout: official; mapped {len(self.mapped)} tensor(s), dropped {len(self.dropped)}, "
                 f"unknown {len(self.unknown)}"]
        by_rule: Dict[Rule, List[MappedKey]] = {}
        for item in self.mapped:
            by_rule.setdefault(item.rule, []).append(item)
        for rule in RULES:
            items = by_rule.get(rule)
            if not items:
                continue
            note = " (packed q/k/v split)" if rule.split_qkv else ""
            lines.append(f"  mapped {len(items):4d}: {rule.source} -> {rule.target}{note}")
            if verbose:
                lines.extend(f"      {item.source} -> {item.target}" for item in items)
        for key, reason in self.dropped:
            lines.append(f"  dropped: {key}: {reason}")
        if self.cast:
            lines.append(f"  cast to float32: {len(self.cast)} tensor(s) ({show_keys([k for k, _ in self.cast], 3)})")
        if self.unknown:
            lines.append(f"  unknown: {len(self.unknown)} key(s): {show_keys(self.unknown, 10)}")
        return "\n".join(lines)


# the official model's CLIP and aggregator (its top level holds only these and upsample1/2)
_OFFICIAL_START = re.compile(r"sem_seg_head\.predictor\.(?:clip_model|transformer)\.")
_OURS_START = re.compile(r"backbone\.|sem_seg_head\.(?:aggregator|guidance_upsample)\.")


def cannot_resume(checkpoint: str, official: bool) -> str:
    """Why ``--resume`` refuses ``checkpoint``, a file without the training state of a cat-seg
    run: an ``official`` checkpoint (its weights load; an official run's optimizer, schedule and
    data order are not resumed), else a converted release or a bare state dict. The one wording
    of train_net's check before the run and of the trainer's own."""
    what = ("is a checkpoint of the official code, whose training state (optimizer, schedule, data order) cat-seg "
            "does not resume" if official else
            "holds no training state (not a checkpoint of a cat-seg run: a converted release or a bare state dict)")
    return (f"--resume: {checkpoint} {what}; train from its weights with MODEL.WEIGHTS <file> without --resume, in "
            "another OUTPUT_DIR")


def detect_layout(state: Mapping[str, Any]) -> str:
    """``ours`` if any key is of our layout, else ``official`` if any key is the official
    model's CLIP or aggregator, else ``unknown``. (``module.`` prefixes must be stripped first.)

    Our keys decide first: a model built on cat-seg may add a module named like an official
    one (a head's ``predictor``, a top-level ``upsample1``), and its own checkpoint was then
    taken for an official one and converted, losing every key."""
    if any(_OURS_START.match(key) for key in state):
        return OURS
    if any(_OFFICIAL_START.match(key) for key in state):
        return OFFICIAL
    return UNKNOWN


def strip_prefix(state: Dict[str, Any], prefix: str = "module.") -> Dict[str, Any]:
    """Remove ``prefix`` (DDP ``module.``) if every key has it."""
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items()}
    return state


def _as_fp32(key: str, value: Any, report: ConversionReport) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if value.is_floating_point() and value.dtype != torch.float32:
        report.cast.append((key, str(value.dtype).replace("torch.", "")))
        value = value.float()
    return value


def convert_official_state_dict(state: Mapping[str, Any]) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """Map an official-layout state dict onto our module names.

    Args:
        state: the checkpoint's ``"model"`` dict (tensors or numpy arrays).
    Returns:
        ``(converted, report)``. ``converted`` holds float32 tensors under our names; keys no
        rule knows are left out and listed in ``report.unknown``. A state dict that is not in
        the official layout is returned unchanged (``report.layout`` says which it is).
    Raises:
        CheckpointFormatError: two official keys map to the same tensor (e.g. both a packed
            ``in_proj_weight`` and split ``q_proj_weight``).
    """
    state = strip_prefix(dict(state))
    layout = detect_layout(state)
    report = ConversionReport(layout=layout)
    if layout != OFFICIAL:
        return state, report
    converted: Dict[str, torch.Tensor] = {}
    sources: Dict[str, str] = {}
    for key, value in state.items():
        drop = next((d for d, rx in _COMPILED_DROPS if rx.fullmatch(key)), None)
        if drop is not None:
            report.dropped.append((key, drop.reason))
            continue
        match = None
        for rule, rx in _COMPILED_RULES:
            match = rx.fullmatch(key)
            if match:
                break
        if match is None or not isinstance(value, (torch.Tensor, np.ndarray)):
            report.unknown.append(key)
            continue
        value = _as_fp32(key, value, report)
        if rule.split_qkv:
            targets = [(_fill(rule.target, {**match.groupdict(), "qkv": name}), chunk)
                       for name, chunk in zip("qkv", unpack_qkv(value))]
        else:
            targets = [(_fill(rule.target, match.groupdict()), value)]
        for target, tensor in targets:
            if target in converted:
                raise CheckpointFormatError(
                    f"official keys {sources[target]} and {key} both map to {target}: the checkpoint is inconsistent"
                )
            converted[target] = tensor.contiguous()
            sources[target] = key
            report.mapped.append(MappedKey(key, target, rule))
    return converted, report


def read_checkpoint(path: str) -> Any:
    """``torch.load`` a checkpoint safely (``weights_only``: tensors, containers, numbers)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointFormatError(f"checkpoint file not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointFormatError(f"{path} is a directory, not a checkpoint file") from None
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointFormatError(not_a_checkpoint(path, e)) from None


def checkpoint_file_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be a torch checkpoint, found from its first and last bytes without
    reading it (a checkpoint is hundreds of MB): empty, or a zip archive cut short (a copy or
    download that did not finish); None when it may be one (a complete zip archive, a legacy
    pickle, a detectron2 ``.pkl``). :func:`read_checkpoint` finds the other problems."""
    import zipfile

    if os.path.getsize(path) == 0:
        return f"{path} is not a readable torch checkpoint: the file is empty"
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    if zipped and not zipfile.is_zipfile(path):
        return f"{path} is not a readable torch checkpoint: a damaged or truncated torch.save zip archive"
    return None


def not_a_checkpoint(path: str, error: Exception) -> str:
    """One line saying what ``path`` is not, from the ``torch.load(weights_only=True)`` error.

    torch's own message advises ``weights_only=False``; that is not offered here: a file that
    needs it holds arbitrary Python objects (which could run code when unpickled), not a
    checkpoint of tensors.
    """
    text = str(error)
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsafe:
        return (f"{path} is not a readable torch checkpoint: it is not only tensors, it holds a pickled "
                f"{unsafe.group(1)} object (not unpickled, as that could run code from the file)")
    problem = checkpoint_file_problem(path) if os.path.isfile(path) else None  # empty, cut short
    if problem:
        return problem
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":  # a whole zip archive torch cannot read
            return f"{path} is not a readable torch checkpoint: a damaged or truncated torch.save zip archive"
    return f"{path} is not a readable torch checkpoint: neither a torch.save zip archive nor a pickle of tensors"


def unwrap_checkpoint(obj: Any, source: str = "checkpoint") -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Split a loaded checkpoint into ``(state_dict, extras)``.

    Accepts ``{"model": state_dict, ...extras}`` (detectron2) or a bare state dict.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{source} holds a {type(obj).__name__}, not a checkpoint dict")
    if "model" in obj and isinstance(obj["model"], Mapping):
        state, extras = dict(obj["model"]), {k: v for k, v in obj.items() if k != "model"}
    else:
        state, extras = dict(obj), {}
    not_tensors = [k for k, v in state.items() if not isinstance(v, (torch.Tensor, np.ndarray))]
    if not state or not_tensors:
        what = "is empty" if not state else f"has non-tensor entries: {show_keys(not_tensors)}"
        raise CheckpointFormatError(f"{source} is not a model state dict: it {what}")
    return state, extras
