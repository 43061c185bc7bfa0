"""Errors raised while reading or loading CAT-Seg checkpoints.

They derive from ``ValueError`` so that ``train_net.py`` reports them as one ``error: ...``
line (a bad ``MODEL.WEIGHTS`` is an input mistake, not a crash).
"""
from typing import Iterable, List, Tuple

from ..utils import fit_problems, show_keys  # noqa: F401  (show_keys: also imported from here)


class CheckpointError(ValueError):
    """Base class: a checkpoint could not be used."""


class CheckpointFormatError(CheckpointError):
    """The file is not a readable checkpoint, or its layout is not recognised."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's tensors do not fit the model: nothing was loaded.

    Attributes:
        missing: model keys the checkpoint does not provide.
        unexpected: checkpoint keys the model does not have (after conversion; when they came
            from an official key, the entry reads ``"ours (from official)"``).
        wrong_shape: ``(key, checkpoint shape, model shape)``.
        unknown: official-layout keys no conversion rule knows.

    ``architecture`` (first in the message) says how the checkpoint's model differs from the
    config's when that is known (e.g. a ViT-L checkpoint with a ViT-B config); ``hint`` ends it.
    """

    def __init__(
        self,
        source: str,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        wrong_shape: Iterable[Tuple[str, tuple, tuple]] = (),
        unknown: Iterable[str] = (),
        hint: str = "",
        architecture: str = "",
    ):
        self.source = source
        self.missing: List[str] = sorted(missing)
        self.unexpected: List[str] = sorted(unexpected)
        self.wrong_shape: List[Tuple[str, tuple, tuple]] = sorted(wrong_shape)
        self.unknown: List[str] = sorted(unknown)
        problems = []
        if self.unknown:
            problems.append(f"{len(self.unknown)} unknown official key(s): {show_keys(self.unknown)}")
        problems += fit_problems(self.missing, self.unexpected, self.wrong_shape)
        fit = f"does not fit the model ({architecture})" if architecture else "does not fit the model"
        message = f"checkpoint {source} {fit}, nothing loaded: " + "; ".join(problems)
        if hint:
            message += f" ({hint})"
        super().__init__(message)
