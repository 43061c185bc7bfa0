"""Checkpoint loading for cat-seg models."""
from .catseg_checkpointer import CATSegCheckpointer

__all__ = ["CATSegCheckpointer"]
