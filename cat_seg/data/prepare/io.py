"""Crash-safe file writing and checked reading of label / image files.

Every output is written with :func:`cat_seg.utils.atomic_write` (a hidden temporary name
``.<name>.<pid>.<thread>.tmp`` in the destination folder, renamed into place), so an interrupted run never leaves a partial
file under a final name, and a rerun can skip the files that exist. Temporary files left by a
killed run are removed by :func:`remove_stale_temp_files` at the start of the next run, which
holds a lock on the output folders (:func:`exclusive_folders`) so that two runs never write
into the same folder at once.
"""
import contextlib
import io
import os
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple, Union

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None

import numpy as np
from PIL import Image

from ...utils import atomic_write, remove_temp_files
from ..datasets.errors import PrepareError
from ..datasets.label_check import size_problem

PathLike = Union[str, os.PathLike]

LOCK_FILE = ".prepare.lock"


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (no disk sync: a rerun redoes what a power loss
    may have lost); a failed write raises :class:`cat_seg.utils.WriteError` naming ``path``."""
    atomic_write(path, lambda f: f.write(data), durable=False)
    return Path(path)


def save_array(path: PathLike, array: np.ndarray, fmt: str, **params) -> Path:
    """Save ``array`` with PIL (``fmt`` = ``"PNG"``, ``"TIFF"`` or ``"JPEG"``) atomically.

    uint16 arrays become 16-bit TIFFs; JPEGs use PIL's default settings unless ``params``
    say otherwise."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **params)
    return atomic_write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def exclusive_folders(folders: Iterable[PathLike]):
    """Hold an exclusive lock (``.prepare.lock``, released even if the process is killed) on
    each folder, so that one preparation at a time writes there; a second one gets a
    :class:`PrepareError`. While held, temporary files in these folders are stale. The lock
    file is removed on exit (a killed run leaves it behind, unlocked and harmless)."""
    held = []
    try:
        for folder in folders:
            path = Path(folder) / LOCK_FILE
            handle = open(path, "a")
            if fcntl is not None:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    raise PrepareError(f"another preparation is writing into {folder}; wait for "
                                       f"it to finish") from None
            held.append((path, handle))
        yield
    finally:
        for path, handle in held:
            path.unlink(missing_ok=True)  # still locked: nobody else can be using it
            handle.close()


def remove_stale_temp_files(folder: PathLike) -> int:
    """Delete the temporary files in ``folder`` (left by an interrupted run); returns count.

    Call it only while holding :func:`exclusive_folders` on ``folder``."""
    return len(remove_temp_files(folder))


def read_array(path: PathLike, what: str = "label", modes=None) -> np.ndarray:
    """Read an image file as a numpy array (palette images give their indices). With
    ``modes``, an image in another PIL mode is converted to RGB first.

    A missing or unreadable file raises :class:`PrepareError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"missing {what} file {path}")
    try:
        with Image.open(path) as image:
            image.load()
            if modes is not None and image.mode not in modes:
                image = image.convert("RGB")
            return np.asarray(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise PrepareError(f"cannot read {what} file {path}: {_reason(exc, path)}") from None


def _reason(exc: Exception, path: Path) -> str:
    """PIL's message without the path it repeats (``cannot identify image file '/a/b.png'``)."""
    return str(exc).replace(f" {str(path)!r}", "").replace(f" {path}", "") or type(exc).__name__


def image_size(path: PathLike) -> Tuple[int, int]:
    """``(height, width)`` of an image file, from its header (the pixels are not decoded); a
    missing or unreadable file raises :class:`PrepareError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"missing image file {path}")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise PrepareError(f"cannot read image file {path}: {_reason(exc, path)}") from None
    return height, width


def check_label_size(label_shape: Sequence[int], image_shape: Sequence[int], label: PathLike,
                     image: PathLike) -> None:
    """A label map must have its image's size: else :class:`PrepareError` naming both files,
    in the words the loader and ``--check-labels`` use (:func:`size_problem`)."""
    problem = size_problem(str(label), label_shape, str(image), image_shape)
    if problem:
        raise PrepareError(problem)


def label_files(folder: PathLike, ext: str = ".png") -> List[Path]:
    """The visible files of ``folder`` whose name ends with ``ext`` in any case, sorted: not
    the ``._*`` files macOS leaves beside each file of an archive unpacked there (as the
    dataset loader skips them)."""
    return sorted(path for path in Path(folder).iterdir()
                  if not path.name.startswith(".") and path.name.lower().endswith(ext) and path.is_file())


def read_label(path: PathLike) -> np.ndarray:
    """Read a single-channel label map; anything else raises :class:`PrepareError`."""
    label = read_array(path, "label")
    if label.ndim != 2:
        raise PrepareError(
            f"label file {path} has shape {label.shape}, expected a single-channel label map"
        )
    return label


def check_values(label: np.ndarray, allowed: np.ndarray, source: PathLike, expected: str):
    """Raise :class:`PrepareError` if ``label`` has a value ``v`` with ``allowed[v]`` False.

    ``allowed`` is a boolean lookup table indexed by label value; ``expected`` describes the
    valid range for the message."""
    values = np.unique(label)
    bad = values[(values < 0) | (values >= len(allowed))]
    inside = values[(values >= 0) & (values < len(allowed))]
    bad = np.concatenate([bad, inside[~allowed[inside]]])
    if bad.size:
        shown = ", ".join(str(int(v)) for v in np.sort(bad)[:8])
        raise PrepareError(
            f"{source}: label values outside the expected range ({expected}): {shown}"
        )


def read_id_list(path: PathLike) -> List[str]:
    """Non-empty stripped lines of an image-id list file (e.g. VOC ``val.txt``)."""
    path = Path(path)
    try:
        ids = [line.strip() for line in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise PrepareError(f"cannot read id list {path}: {exc}") from None
    ids = [i for i in ids if i]
    if not ids:
        raise PrepareError(f"{path} lists no image id")
    return ids
