"""Small shared helpers."""
import json
import os
from typing import List

# The repository (or source tree) that holds configs/ and datasets/*.json.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_path(path: str) -> str:
    """``path`` as given if it exists, else relative to the repository root if it exists there.

    Config values such as ``configs/clip_models/tiny-vit-b16.json`` or ``datasets/coco.json``
    are relative to the repository; this lets them work from any working directory.
    """
    if not path or os.path.isabs(path) or os.path.exists(path):
        return path
    candidate = os.path.join(REPO_ROOT, path)
    return candidate if os.path.exists(candidate) else path


def read_class_json(path: str, key: str = "class json") -> List[str]:
    """Read a flat JSON array of class names (``datasets/*.json``); clear errors otherwise."""
    path = resolve_path(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key} {path!r} not found (class-name jsons are written by datasets/prepare_*.py)")
    with open(path) as f:
        try:
            names = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"{path}: expected a non-empty JSON array of non-empty class-name strings")
    return names
