"""Small shared helpers."""
import json
import os
import tempfile
from typing import Callable, List

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


def atomic_write(path: str, write: Callable, mode: str = "wb"):
    """Write ``path`` through a temporary file in the same folder, then rename it into place.

    ``write(f)`` fills the open temporary file. A crash or kill at any moment leaves either
    the previous file or the complete new one, never a half-written file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj, path: str):
    """``torch.save`` with :func:`atomic_write`."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))
