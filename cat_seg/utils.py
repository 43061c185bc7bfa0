"""Small shared helpers."""
import hashlib
import json
import os
import re
import threading
from typing import Callable, List, Optional, Sequence, Tuple, Union

# The repository (or source tree) that holds configs/ and datasets/*.json.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, where the OS tells; else all)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def int_at_least(text: str, minimum: int = 1) -> Optional[int]:
    """``text`` read as an integer >= ``minimum`` (a count of processes, workers, steps); None
    when it is not one."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        return None
    return value if value >= minimum else None


def show_keys(keys: Sequence[str], limit: int = 5) -> str:
    """``"a, b, c (+12 more)"``: the first ``limit`` keys and how many were left out."""
    keys = list(keys)
    text = ", ".join(keys[:limit])
    if len(keys) > limit:
        text += f" (+{len(keys) - limit} more)"
    return text


def fit_problems(missing: Sequence[str], unexpected: Sequence[str],
                 wrong_shape: Sequence[Tuple[str, tuple, tuple]]) -> List[str]:
    """How a state dict does not fit a model, one phrase per kind (the words of checkpoint and
    CLIP-weights errors alike): ``"2 missing key(s): a, b"``, ``"1 unexpected key(s): c"``,
    ``"1 shape mismatch(es): k [3, 4] vs model [4, 4]"`` (``wrong_shape``: ``(key, the file's
    shape, the model's)``); empty when it fits."""
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {show_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {show_keys(unexpected)}")
    if wrong_shape:
        shapes = [f"{key} {list(theirs)} vs model {list(ours)}" for key, theirs, ours in wrong_shape]
        problems.append(f"{len(wrong_shape)} shape mismatch(es): {show_keys(shapes)}")
    return problems


def file_digest(path, algorithm: str, block_size: int = 1 << 22) -> str:
    """Hex digest (``"md5"``, ``"sha256"``, ...) of a file, read in blocks (``hashlib.file_digest``
    needs Python 3.11)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_path(path: str) -> str:
    """``path`` as given if it exists, else relative to the repository root if it exists there.

    Config values such as ``configs/clip_models/tiny-vit-b16.json`` or ``datasets/coco.json``
    are relative to the repository; this lets them work from any working directory.
    """
    if not path or os.path.isabs(path) or os.path.exists(path):
        return path
    candidate = os.path.join(REPO_ROOT, path)
    return candidate if os.path.exists(candidate) else path


def resolve_vocabulary_path(path: str, key: str = "class json") -> str:
    """The file a vocabulary path names: an existing file wins (``path`` as given, or relative to
    the repository); otherwise a vocabulary shipped with the package, named as configs written
    for the official code name it (``datasets/coco.json``) or by its file name (``coco.json``).
    Raises ``FileNotFoundError`` (one line naming ``key`` and ``path``) when it is neither."""
    resolved = resolve_path(path)
    if os.path.isfile(resolved):
        return resolved
    if os.path.isdir(resolved):
        raise FileNotFoundError(f"{key} {path!r} is a directory; expected a file of class names")
    from .data.catalog import vocabulary_path

    try:
        return str(vocabulary_path(path))
    except KeyError as e:
        where = "" if os.path.isabs(path) else f" (relative to the working folder {os.getcwd()})"
        raise FileNotFoundError(f"{key} {path!r} not found{where}, and it names no packaged vocabulary "
                                f"({e.args[0]})") from None


def read_vocabulary_text(path: str, key: str = "class json") -> Tuple[str, str]:
    """``(file, text)``: the file ``path`` names (:func:`resolve_vocabulary_path`: a file, or a
    packaged vocabulary) and its text, read as UTF-8; a byte-order mark at its start (Windows
    editors write one) is dropped.

    Errors are one line that names ``key`` (the option or config key that gave ``path``) and
    the file: ``FileNotFoundError`` for no such file, ``OSError`` for a file that cannot be read,
    ``ValueError`` for a file that is not UTF-8 text."""
    file = resolve_vocabulary_path(path, key)
    try:
        with open(file, encoding="utf-8-sig") as f:
            return file, f.read()
    except UnicodeDecodeError as e:  # a binary file, or text in another encoding (Latin-1, UTF-16)
        raise ValueError(f"{key} {file!r}: not UTF-8 text ({e.reason} at byte {e.start}); expected a UTF-8 "
                         f"file of class names") from None
    except OSError as e:
        raise OSError(f"{key} {file!r}: cannot read it ({e.strerror or e})") from None


def parse_json_text(text: str, file: str, key: str = "class json"):
    """``text`` (read from ``file``) parsed as JSON; a ``ValueError`` naming ``key`` and
    ``file`` if it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{key} {file!r}: not valid JSON ({e})") from None


def read_class_json(path: str, key: str = "class json") -> List[str]:
    """Read a flat JSON array of class names (a UTF-8 file, with or without a byte-order mark).

    ``path`` is resolved by :func:`resolve_vocabulary_path` (a file, or a packaged vocabulary).
    Every error is one line naming ``key`` and the file (:func:`read_vocabulary_text`): a
    missing or unreadable file, text that is not UTF-8 or not JSON, or JSON that is not a
    non-empty array of non-empty strings.
    """
    file, text = read_vocabulary_text(path, key)
    names = parse_json_text(text, file, key)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        if not isinstance(names, list):
            found = f"a JSON {_JSON_KINDS.get(type(names), type(names).__name__)}"
        elif not names:
            found = "an empty array"
        else:
            position = next(i for i, n in enumerate(names) if not (isinstance(n, str) and n.strip()))
            found = f"{names[position]!r} at position {position}"
        raise ValueError(f"{key} {file!r}: expected a non-empty JSON array of non-empty class-name strings, got "
                         f"{found}")
    return names


# what json.loads returns, by the JSON kind's name
_JSON_KINDS = {dict: "object", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def same_device(a, b) -> bool:
    """Whether the torch devices ``a`` and ``b`` are one device; a device without an index
    (``torch.device("cuda")``) matches every index of its type."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _name_limit(folder: str) -> int:
    """The longest file name (in bytes) the file system of ``folder`` takes (255 if unknown)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no such folder yet
        return 255


def temporary_path(path) -> str:
    """Where :func:`atomic_write` (and other writers that rename into place) write ``path``
    first: ``.<name>.<pid>.<thread>.tmp`` in its folder, a name :func:`remove_temp_files`
    recognises.

    A ``<name>`` too long for that pattern within the file system's name limit (a final name
    of more than about 225 bytes) is shortened to its start, ``~``, 8 hex digits of its hash
    and its last 16 characters: the extension stays, so the temporary file of a ``.pth`` still
    ends in ``.pth.<pid>.<thread>.tmp``, and two long names with a common start stay apart."""
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    suffix = f".{os.getpid()}.{threading.get_ident()}.tmp"
    room = _name_limit(folder) - len(suffix) - 1  # the leading dot
    if len(os.fsencode(name)) > room:
        digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:8]
        tail = f"~{digest}{name[-16:]}"
        head = name[:-16]
        while head and len(os.fsencode(head + tail)) > room:
            head = head[:-1]
        name = head + tail
    return os.path.join(folder, f".{name}{suffix}")


_TRACEBACK = "Traceback (most recent call last):"
_WORKER_TRACEBACK = "Original " + _TRACEBACK  # how torch's DataLoader re-raises a worker's error


def last_traceback_error(text: str) -> Optional[Tuple[str, str]]:
    """``(type, message)`` of the error that ends the last traceback printed in ``text``: its
    frames are indented, the error (``type: message``, possibly several lines) starts at the
    first line after them that is not; ``("", line)`` for an error line without a type.
    ``None`` when ``text`` holds no traceback."""
    if _TRACEBACK not in text:
        return None
    lines = text.rsplit(_TRACEBACK, 1)[1].splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() and not line[0].isspace()), None)
    if start is None:
        return None
    error = "\n".join(lines[start:])
    kind, separator, message = error.partition(": ")
    return (kind, message) if separator else ("", error)


def error_line(error: Union[BaseException, str], limit: Optional[int] = None, with_type: bool = True) -> str:
    """``error`` as ``Type: message`` (or the message alone: ``with_type=False``, for errors
    whose message is written for the user, or a string) on one line (its whitespace folded),
    cut to ``limit`` characters with ``...`` when longer: the reason quoted in a one-line
    error message. An error re-raised from a ``DataLoader`` worker, whose message is the
    worker's traceback, gives the original error (its type and message) instead."""
    kind, message = ("", error) if isinstance(error, str) else (type(error).__name__, str(error))
    if _WORKER_TRACEBACK in message:
        original = last_traceback_error(message)
        if original is not None:
            kind, message = original
    text = f"{kind}: {message}" if with_type and kind else message
    line = " ".join(text.split())
    return line if limit is None or len(line) <= limit else line[:limit - 3] + "..."


class WriteError(OSError):
    """An ``OSError`` of :func:`atomic_write` while writing ``filename``, the file the caller
    asked for: the OS names the temporary file it failed on (``.a.pth.<pid>.<thread>.tmp``), a
    name the user never gave. ``str()`` is ``cannot write PATH: REASON``; ``errno`` is the
    OS's."""

    def __str__(self):
        return f"cannot write {self.filename}: {self.strerror}"


def atomic_write(path, write: Callable, mode: str = "wb", durable: bool = True):
    """Write ``path`` through a temporary file in the same folder, then rename it into place.

    ``write(f)`` fills the open temporary file, named ``.<name>.<pid>.<thread>.tmp`` and
    created with the usual permissions (``0o666`` less the umask). A crash
    or kill of the process at any moment leaves either the previous file or the complete new
    one, never a half-written file under the final name. ``durable`` also flushes the data to
    disk before the rename (survives a power loss; costs a disk sync, so the preparation
    scripts that write many thousands of small files turn it off).

    An ``OSError`` while creating, writing or renaming the temporary file (a read-only
    folder, a full disk) is raised as :class:`WriteError` naming ``path``, and the temporary
    file is removed. Errors of creating the folder name the folder, and errors that ``write``
    raises about other files are raised as they are.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temporary_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, mode) as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.remove(tmp)
        # an error without a file (a full disk while writing) or on the temporary file is about `path`
        if isinstance(error, OSError) and error.filename in (None, tmp, path):
            raise WriteError(error.errno, error.strerror or str(error), path) from error
        raise


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.\d+\.tmp$")  # atomic_write's temporary names


def remove_temp_files(folder, names: Callable[[str], bool] = lambda name: True, keep_running: bool = False) -> List[str]:
    """Delete the temporary files :func:`atomic_write` left in ``folder`` (a killed process
    leaves its file; a crash in Python removes its own) whose final name satisfies ``names``;
    returns the paths deleted.

    With ``keep_running``, files of other processes still running on this machine are kept
    (the pid in the name), for folders that another process may be writing into; those
    named with this process's id are removed (the caller is not writing any, and a container
    restarted after a kill often gets the killed process's id again).
    """
    if not os.path.isdir(folder):
        return []
    removed = []
    for entry in os.scandir(folder):
        match = _TEMP_NAME.match(entry.name)
        if not match or not names(match["name"]) or not entry.is_file():
            continue
        pid = int(match["pid"])
        if keep_running and pid != os.getpid() and _process_running(pid):
            continue
        try:
            os.remove(entry.path)
        except FileNotFoundError:  # renamed into place or removed meanwhile
            continue
        removed.append(entry.path)
    return removed


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # someone else's process, or no such check here
        return True
    return True


def atomic_torch_save(obj, path: str):
    """``torch.save`` with :func:`atomic_write`."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))
