"""Checkpoint loading for cat-seg models (our layout and the official CAT-Seg layout)."""
from .catseg_checkpointer import CATSegCheckpointer, check_state_dict_fits
from .errors import CheckpointError, CheckpointFormatError, CheckpointMismatchError
from .official import ConversionReport, convert_official_state_dict, detect_layout, read_checkpoint, unwrap_checkpoint

__all__ = [
    "CATSegCheckpointer", "check_state_dict_fits", "CheckpointError", "CheckpointFormatError",
    "CheckpointMismatchError", "ConversionReport", "convert_official_state_dict", "detect_layout",
    "read_checkpoint", "unwrap_checkpoint",
]
