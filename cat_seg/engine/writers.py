"""Event writers: detectron2's, with ``metrics.json`` kept valid JSON."""
import json
import math
import os
from typing import List, Optional

from detectron2.utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter
from detectron2.utils.file_io import PathManager


def _finite(value):
    """NaN and infinities -> ``None`` (JSON's ``null``), in nested dicts and lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class _JSONLinesWithFiniteNumbers:
    """A file of JSON lines whose ``write`` turns NaN / infinities into ``null``."""

    def __init__(self, file):
        self._file = file

    def write(self, text: str) -> int:
        lines = [json.dumps(_finite(json.loads(line)), sort_keys=True) if line.strip() else line
                 for line in text.split("\n")]
        return self._file.write("\n".join(lines))

    def __getattr__(self, name):  # flush, fileno, close
        return getattr(self._file, name)


class StrictJSONWriter(JSONWriter):
    """detectron2's ``JSONWriter`` (one JSON object per line of ``metrics.json``), with the
    values that are not numbers written as ``null``.

    detectron2 writes them as the bare tokens ``NaN`` / ``Infinity``, which Python's ``json``
    reads but JSON is without (jq, JavaScript and pandas' strict readers refuse the file): an
    evaluation gives NaN for every class absent from a benchmark's ground truth (``IoU-<class>``)
    and for ``mIoU-unseen`` of a benchmark without unseen classes, and a diverging loss is NaN.
    """

    def __init__(self, json_file: str, window_size: int = 20):
        super().__init__(json_file, window_size)
        self._file_handle = _JSONLinesWithFiniteNumbers(self._file_handle)


def default_writers(output_dir: str, max_iter: Optional[int] = None) -> List[EventWriter]:
    """detectron2's ``default_writers`` (console, ``metrics.json``, TensorBoard) with
    :class:`StrictJSONWriter` for the JSON file (the list is built here rather than edited, so
    that no second TensorBoard event file is opened)."""
    PathManager.mkdirs(output_dir)
    return [
        CommonMetricPrinter(max_iter),
        StrictJSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]
