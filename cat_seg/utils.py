"""Small shared helpers."""
import json
import os
from typing import List


def read_class_json(path: str, key: str = "class json") -> List[str]:
    """Read a flat JSON array of class names (``datasets/*.json``); clear errors otherwise."""
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
