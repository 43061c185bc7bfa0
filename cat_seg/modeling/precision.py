"""Compute precision: one setting, ``MODEL.PRECISION``, for training and inference.

Values:

* ``fp32``: everything in float32 (with TF32 off this is the reference computation);
* ``bf16`` / ``fp16``: ``torch.autocast`` with that dtype around the model;
* ``auto`` (default): bf16 where the device computes it natively (CUDA GPUs with bf16
  support; CPUs with AVX512-BF16 or AMX), fp32 everywhere else.

A reduced precision the device does not compute natively is not used: on a CPU without
native bf16 a bf16 matmul is emulated and is tens of times slower than fp32 (measured on an
AVX2-only AMD EPYC: 4.8 s against 0.067 s for a 768x768 matmul). Asking for it explicitly
then falls back to fp32 with a one-line warning.

Precision policy under autocast (the one description; ``docs/architecture.md``,
"Precision"): everything follows autocast except three fp32 regions, each entered with
:func:`full_precision`:

* the cosine cost volume, the top-k class selection and the cost embedding
  (``Aggregator.forward``, ``Aggregator.embed_cost``): classes with similar names differ in
  cosine score by less than bf16's spacing, the selection must not depend on rounding, and
  the embedding conv computes from the fp32 scores, rounding once at its output (rounding
  its input instead made near-duplicate classes indistinguishable: 99.30% of the toy
  model's labels agreed with fp32, 99.52% with the fp32 embedding; docs/benchmarks.md);
* the logit head (``CostDecoder.forward``): bf16 keeps 8 significant bits, which flips the
  label of pixels where two classes are close;
* the cached text embeddings (``TextEncoder``): computed once per vocabulary, so fp32 costs
  nothing and every later call (fp32 or not) gets the same embeddings.

The aggregator's and decoder's norms compute in their input's dtype instead of autocast's
fp32 (:mod:`.norms`).

The model applies autocast itself at inference (:func:`autocast`, from ``MODEL.PRECISION``);
in training the trainer does, with the same setting.
"""
import contextlib
import logging
from functools import lru_cache
from typing import Optional

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """``"fp32"`` for ``None`` (no autocast), else the setting name of an autocast dtype
    (``torch.bfloat16`` -> ``"bf16"``): what :func:`resolve_precision` resolved to, by name."""
    return "fp32" if dtype is None else next(name for name, value in _DTYPES.items() if value == dtype)


@lru_cache(maxsize=None)
def _cpu_native(dtype: torch.dtype) -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


def supports_native(dtype: torch.dtype, device) -> bool:
    """Whether ``device`` computes ``dtype`` (bf16 / fp16) natively, i.e. faster than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        if dtype == torch.bfloat16:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        return True
    if device.type == "cpu":
        return _cpu_native(dtype)
    return False


def cpu_instruction_sets() -> str:
    """The CPU's vector extensions relevant to speed, e.g. ``"AVX2"`` or ``"AVX512, AVX512-BF16"``
    (what ``torch.backends.cpu.get_cpu_capability()`` reports, plus native bf16/fp16)."""
    names = [torch.backends.cpu.get_cpu_capability()]
    if _cpu_native(torch.bfloat16):
        names.append("native bf16")
    if _cpu_native(torch.float16):
        names.append("native fp16")
    return ", ".join(names)


_warned = set()
# device types whose MODEL.PRECISION auto resolution was logged (once per process)
_told = set()


def resolve_precision(setting: str, device, key: str = "MODEL.PRECISION") -> Optional[torch.dtype]:
    """The autocast dtype for ``setting`` on ``device``, or None for fp32.

    Raises ``ValueError`` (one line naming ``key``) for an unknown setting. An explicit
    ``bf16``/``fp16`` the device does not compute natively falls back to fp32 with a
    one-line warning (logged once per setting and device type).
    """
    setting = str(setting).lower()
    if setting not in PRECISIONS:
        raise ValueError(f"{key}={setting!r}: expected one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if setting == "fp32":
        return None
    if setting == "auto":
        dtype = torch.bfloat16 if supports_native(torch.bfloat16, device) else None
        if device.type not in _told:  # which computation ran is in the run's log
            _told.add(device.type)
            logger.info(f"{key}=auto on {device.type}: " + (
                "bf16 autocast (native bf16 here); MODEL.PRECISION fp32 computes as the official code"
                if dtype is not None else "fp32 (no native bf16 here), the official computation"))
        return dtype
    dtype = _DTYPES[setting]
    if supports_native(dtype, device):
        return dtype
    if (setting, device.type) not in _warned:
        _warned.add((setting, device.type))
        what = f"this CPU ({cpu_instruction_sets()})" if device.type == "cpu" else f"device {device}"
        logger.warning(f"{key}={setting}: {what} has no native {setting}, running in fp32 instead "
                       f"(emulated {setting} is many times slower)")
    return None


def autocast(dtype: Optional[torch.dtype], device):
    """``torch.autocast`` with ``dtype`` on ``device``'s type, or a no-op context for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def autocast_dtype(device) -> Optional[torch.dtype]:
    """The dtype autocast computes in on ``device``'s type now, or None where it is off."""
    device_type = torch.device(device).type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def full_precision(tensor_or_device):
    """Context of an fp32 region of the precision policy: autocast off on that device type.

    Inputs computed under autocast must still be cast with :func:`full_precision_tensor`.
    """
    device = tensor_or_device.device if isinstance(tensor_or_device, torch.Tensor) else torch.device(tensor_or_device)
    return torch.autocast(device.type, enabled=False)


def full_precision_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 if it is in a reduced precision (fp16 / bf16), else unchanged (fp32, fp64)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor
