"""Event writers: detectron2's, with ``metrics.json`` kept valid JSON."""
import json
import math
import os
from typing import List, Optional

from detectron2.utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter
from detectron2.utils.file_io import PathManager

from ..utils import atomic_write


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
        self.json_file = json_file
        self._file_handle = _JSONLinesWithFiniteNumbers(self._file_handle)

    def discard_from(self, iteration: int) -> int:
        """Remove what an interrupted run logged from training step ``iteration`` on (the steps
        after the checkpoint that ``--resume`` continues from, which the resumed run logs again:
        detectron2 appends, so the file would have them twice), and an unfinished last line.
        The evaluation detectron2 runs after a finished run's last step is logged one past it,
        at ``MAX_ITER``, where a resumed longer run starts: that entry holds no training step's
        ``total_loss`` and is kept (nothing logs it again). The file is replaced whole (never
        left half-written); returns the number of lines removed."""
        self._file_handle.flush()
        with open(self.json_file, encoding="utf-8") as f:
            lines = f.readlines()
        keep = [line for line in lines if not _logged_again(line, iteration)]
        if len(keep) == len(lines):
            return 0
        self._file_handle.close()
        atomic_write(self.json_file, lambda f: f.writelines(keep), mode="w", durable=False)
        self._file_handle = _JSONLinesWithFiniteNumbers(PathManager.open(self.json_file, "a"))
        return len(lines) - len(keep)


def _logged_again(line: str, iteration: int) -> bool:
    """Whether a line of ``metrics.json`` goes when a run resumes at training step
    ``iteration`` (:meth:`StrictJSONWriter.discard_from`): an entry of a later iteration, of
    that step itself, or an unfinished last line (no line break: the write a kill cut short).
    A line that is not a JSON object with an ``iteration`` (written by something else) stays."""
    if not line.endswith("\n"):
        return True
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    logged = entry.get("iteration") if isinstance(entry, dict) else None
    if not isinstance(logged, int):
        return False
    return logged > iteration or (logged == iteration and "total_loss" in entry)


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
