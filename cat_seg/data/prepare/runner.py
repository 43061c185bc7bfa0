"""Running one conversion per file: skip finished files, progress bar, worker processes,
and a summary with a label-histogram sanity check.

A conversion is a module-level function ``convert(*task.args) -> Converted`` (module level so
that worker processes can receive it). It writes its outputs with :mod:`.io` (atomic) and
returns the histogram of the label values it wrote, computed by :func:`label_histogram`,
which also rejects values outside ``0..num_classes-1`` and the ignore value.
"""
import contextlib
import multiprocessing
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ...utils import available_cores
from ..datasets.errors import PrepareError
from .io import (check_label_size, check_values, exclusive_folders, image_size, read_label, remove_stale_temp_files,
                 save_array)


@dataclass(frozen=True)
class Task:
    """One unit of work: ``convert(*args)`` creates ``outputs``; ``source`` names the input;
    ``image``: the image the label belongs to, where the dataset reads it (None: the
    conversion writes or reads the image itself)."""

    source: str
    outputs: Tuple[Path, ...]
    args: tuple
    image: Optional[Path] = None

    def done(self) -> bool:
        return all(p.exists() for p in self.outputs)


@dataclass
class Converted:
    """What one conversion wrote: ``histogram[c]`` pixels of class ``c``, ``ignored`` pixels
    with the ignore value; ``written`` is False when nothing was written (e.g. a VOC mask with
    no labelled pixel)."""

    histogram: Optional[np.ndarray] = None
    ignored: int = 0
    written: bool = True


def label_histogram(label: np.ndarray, num_classes: int, ignore_label: int, source) -> Converted:
    """Histogram of an output label map; values other than ``0..num_classes-1`` and
    ``ignore_label`` raise :class:`PrepareError` naming ``source``."""
    flat = label.reshape(-1).astype(np.int64)
    ignored = int(np.count_nonzero(flat == ignore_label))
    valid = flat[flat != ignore_label]
    if valid.size and (valid.min() < 0 or valid.max() >= num_classes):
        bad = np.unique(valid[(valid < 0) | (valid >= num_classes)])[:8]
        raise PrepareError(
            f"{source}: output label values {', '.join(map(str, bad))} outside "
            f"0..{num_classes - 1} and ignore {ignore_label}"
        )
    return Converted(np.bincount(valid, minlength=num_classes), ignored)


def relabel(src: str, dst: str, table: np.ndarray, valid: np.ndarray, expected: str, layout,
            skip_unlabelled: bool = False, image: Optional[str] = None) -> Converted:
    """One single-channel uint8 label map ``src`` through ``table`` (raw value -> train id) into
    the PNG ``dst``: the conversion of the datasets whose raw labels are 8-bit ids.

    ``valid[v]`` says whether raw value ``v`` may occur (``expected`` describes them in the
    error); ``layout`` (a catalog layout) gives the class count and ignore label the output is
    checked and counted against. With ``skip_unlabelled``, a map with no labelled pixel is not
    written (``Converted(written=False)``). ``image``: the label's image, whose size the map
    must have."""
    label = read_label(src)
    if label.dtype != np.uint8:
        raise PrepareError(f"label file {src} has dtype {label.dtype}, expected uint8")
    if image is not None:
        check_label_size(label.shape, image_size(image), src, image)
    check_values(label, valid, src, expected)
    out = table[label]
    if skip_unlabelled and np.all(out == layout.ignore_label):
        return Converted(written=False)
    stats = label_histogram(out, layout.num_classes, layout.ignore_label, src)
    save_array(dst, out, "PNG")
    return stats


@dataclass
class Summary:
    """Totals of one :func:`run_tasks` call."""

    title: str
    num_classes: int
    ignore_label: int
    total: int = 0
    written: int = 0
    skipped: int = 0
    not_written: int = 0
    histogram: np.ndarray = field(default=None)
    ignored: int = 0
    expected_count: Optional[int] = None
    # files in the output folders (of the outputs' kinds) that no input of this run makes
    strays: List[Path] = field(default_factory=list)

    def report(self) -> str:
        """Human-readable multi-line summary."""
        lines = [
            f"{self.title}: {self.total} inputs: {self.written} written, {self.skipped} skipped "
            f"(already done), {self.not_written} not written (no labelled pixel)"
        ]
        labelled = int(self.histogram.sum()) if self.histogram is not None else 0
        if labelled + self.ignored:
            present = int(np.count_nonzero(self.histogram))
            lines.append(
                f"  labels of the written files: all within 0..{self.num_classes - 1} or "
                f"{self.ignore_label} (ignore); {present}/{self.num_classes} classes present; "
                f"{100.0 * self.ignored / (labelled + self.ignored):.1f}% ignore pixels"
            )
        if self.expected_count is not None and self.total != self.expected_count:
            lines.append(
                f"  note: the full benchmark has {self.expected_count} files, found {self.total} "
                f"inputs (fine for a subset, otherwise check the raw download)"
            )
        if self.strays:
            folders = sorted({str(p.parent) for p in self.strays})
            lines.append(
                f"  note: {len(self.strays)} file(s) in {', '.join(folders)} are not made from these inputs (left by "
                f"an earlier run with other inputs?), e.g. {self.strays[0].name}; the dataset reads every label "
                f"file there that has an image: remove them unless they belong"
            )
        return "\n".join(lines)


def _call(item):
    """Run one task; an unexpected error (a bug, not a :class:`PrepareError`) gets a note
    naming the input it failed on."""
    convert, task = item
    try:
        return convert(*task.args)
    except PrepareError:
        raise
    except Exception as exc:
        if hasattr(exc, "add_note"):
            exc.add_note(f"while converting {task.source}")
        raise


def _results(convert: Callable, tasks: Sequence[Task], pool, pool_size: int
             ) -> Iterator[Converted]:
    """Results of ``convert`` over ``tasks``, in this process or (unordered) in ``pool``."""
    if pool is None:
        for task in tasks:
            yield _call((convert, task))
        return
    chunksize = max(1, min(32, len(tasks) // (pool_size * 8)))
    yield from pool.imap_unordered(_call, [(convert, t) for t in tasks], chunksize)


def _ignore_interrupt():
    """A worker's start: Ctrl-C (SIGINT, sent to the whole process group) is the main
    process's to handle; it stops the pool, so the workers print no traceback of their own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers() -> int:
    """All cores this process may run on."""
    return available_cores()


def run_tasks(
    title: str,
    tasks: List[Task],
    convert: Callable[..., Converted],
    *,
    num_classes: int,
    ignore_label: int,
    workers: int = 1,
    force: bool = False,
    expected_count: Optional[int] = None,
    progress: bool = True,
) -> Summary:
    """Run ``convert`` for every task whose outputs are missing (all of them with ``force``)
    and print a summary. Stops at the first error; finished files stay, so a rerun resumes."""
    folders = sorted({p.parent for task in tasks for p in task.outputs})
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    pending = [task for task in tasks if force or not task.done()]
    summary = Summary(title, num_classes, ignore_label, total=len(tasks),
                      skipped=len(tasks) - len(pending), histogram=np.zeros(num_classes, np.int64),
                      expected_count=expected_count)
    with contextlib.ExitStack() as stack:
        # the workers are started before the folders are locked, so that they do not inherit
        # the lock (an orphaned worker would otherwise keep it after the main process died)
        pool, pool_size = None, min(workers, len(pending))
        if pool_size > 1:
            pool = stack.enter_context(multiprocessing.Pool(pool_size, initializer=_ignore_interrupt))
        stack.enter_context(exclusive_folders(folders))
        for folder in folders:
            remove_stale_temp_files(folder)
        bar = stack.enter_context(tqdm(total=len(pending), desc=title, unit="file",
                                       disable=not progress or not pending, dynamic_ncols=True))
        for result in _results(convert, pending, pool, pool_size):
            if result.written:
                summary.written += 1
            else:
                summary.not_written += 1
            if result.histogram is not None:
                summary.histogram += result.histogram
                summary.ignored += result.ignored
            bar.update(1)
    outputs = {p for task in tasks for p in task.outputs}
    for folder in folders:
        kinds = {p.suffix for p in outputs if p.parent == folder}
        summary.strays += sorted(p for p in folder.iterdir() if p.suffix in kinds and not p.name.startswith(".")
                                 and p not in outputs and p.is_file())
    print(summary.report(), flush=True)
    return summary
