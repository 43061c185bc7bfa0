"""Loading a prepared semantic-segmentation split into detectron2 records.

Equivalent to detectron2's ``load_sem_seg`` (images and labels matched by basename, the
intersection kept when the folders hold different files, records with only ``file_name`` and
``sem_seg_file_name``), except that extensions match in any case (several may be given), the
files left out are named (a warning, except a benchmark's images without a label: VOC's image
folder holds every image), a benchmark with another number of pairs than its complete split
is a warning, and a missing or empty folder raises a one-line :class:`DatasetNotFoundError`
that says what the folder holds and what to run.
"""
import logging
import os
from collections import Counter
from pathlib import Path, PurePath
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ...utils import show_keys
from .errors import DatasetNotFoundError
from ..catalog import ENV_VAR, FOLDER_ALIASES

logger = logging.getLogger(__name__)


def extensions(ext: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """``"png"``, ``".png"`` or ``["jpg", "jpeg"]`` -> ``(".png",)`` / ``(".jpg", ".jpeg")``,
    lower-case."""
    names = [ext] if isinstance(ext, str) else list(ext)
    return tuple("." + name.lower().lstrip(".") for name in names)


def _files_by_stem(folder: str, ext: Union[str, Sequence[str]]) -> Dict[str, str]:
    """``{basename without extension: path}`` of the visible files in ``folder`` with one of
    the extensions ``ext``, in any case (``.JPG`` is a ``jpg``; a compound extension such as
    ``mask.png`` is cut off whole, whatever the order of the extensions). A stem with files of
    two of the extensions keeps the first in sorted order, with a warning."""
    suffixes = sorted(extensions(ext), key=len, reverse=True)  # the longest that matches: mask.png before png
    files, twice = {}, []
    for name in sorted(os.listdir(folder)):
        suffix = next((s for s in suffixes if name.lower().endswith(s)), None)
        if suffix is None or name.startswith(".") or len(name) == len(suffix):
            continue
        stem = name[:-len(suffix)]
        if stem in files:
            twice.append(name)
        else:
            files[stem] = os.path.join(folder, name)
    if twice:
        logger.warning(f"{folder}: {len(twice)} file(s) with the name of another one and another extension are left "
                       f"out ({_examples(twice)}); each image needs a name of its own")
    return files


def _what_is_there(folder: str) -> str:
    """``" (it holds 12 .tif files; subfolders are not searched: train, val)"``: what a folder
    without the files looked for holds, or ""."""
    entries = [entry for entry in os.scandir(folder) if not entry.name.startswith(".")]
    found = Counter(os.path.splitext(e.name)[1].lower() or "(no extension)" for e in entries if e.is_file())
    folders = sorted(e.name for e in entries if e.is_dir())
    notes = []
    if found:
        notes.append("it holds " + ", ".join(f"{n} {ext} file(s)" for ext, n in found.most_common(3)))
    if folders:
        notes.append(f"subfolders are not searched: {', '.join(folders[:3])}{', ...' if len(folders) > 3 else ''}")
    return f" ({'; '.join(notes)})" if notes else ""


def _examples(names: Sequence[str]) -> str:
    """``"a, b, c (+4 more)"``."""
    return show_keys(names, limit=3)


def root_note(root: Optional[str] = None) -> str:
    """Where a dataset root comes from, for messages: ``root`` given at registration, else
    ``$DETECTRON2_DATASETS`` or its default (read now)."""
    if root is not None:
        return f"registered with the dataset root {root}"
    root = os.environ.get(ENV_VAR)
    return f"${ENV_VAR}={root}" if root else f"${ENV_VAR} is not set, default 'datasets'"


def misplaced_hint(root, relpath: str) -> str:
    """Where the missing ``root / relpath`` is after all, when it is one folder off: under a
    folder of ``root`` (an archive extracted one folder too deep, ``ADEChallengeData2016/
    ADEChallengeData2016/...``, or into a folder of its own), or right in ``root`` when ``root``
    is the dataset's own folder (one folder too shallow), or under another name the folder is
    known by (:data:`~cat_seg.data.catalog.FOLDER_ALIASES`). ``"; found ..."`` to append to a
    not-found message, else ``""``."""
    root, parts = Path(root), PurePath(relpath).parts
    if not parts or not root.is_dir():
        return ""
    for child in sorted(entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")):
        found = child.joinpath(*parts)
        if found.exists():
            moved = child / parts[0]
            what = (f"move the contents of {moved} up into {root / parts[0]}" if child.name == parts[0]
                    else f"move {moved} up into {root}")
            return f"; found {found}: the data is one folder too deep ({what})"
    if len(parts) > 1 and root.name == parts[0] and root.joinpath(*parts[1:]).exists():
        return f"; {root} is the dataset's own folder: the root is the folder that holds it, {root.parent}"
    for alias in FOLDER_ALIASES.get(parts[0], ()):
        if root.joinpath(alias, *parts[1:]).exists():
            return f"; found {root / alias}: cat-seg reads {root / parts[0]} (rename {alias} to {parts[0]})"
    return ""


def _not_found(dataset_name: str, what: str, prepare_command: Optional[str],
               root: Optional[str] = None) -> DatasetNotFoundError:
    if prepare_command is None:  # a folder of the user's (register_sem_seg_folder): no root, no script
        return DatasetNotFoundError(f"dataset '{dataset_name}': {what}")
    where = ("register it with the folder holding the datasets as its root" if root is not None
             else f"set ${ENV_VAR} to the folder holding the datasets")
    return DatasetNotFoundError(
        f"dataset '{dataset_name}': {what} ({root_note(root)}); {where} or run: {prepare_command}"
    )


def load_sem_seg_files(
    dataset_name: str,
    gt_root: str,
    image_root: str,
    gt_ext: Union[str, Sequence[str]] = "png",
    image_ext: Union[str, Sequence[str]] = "jpg",
    prepare_command: Optional[str] = "the dataset's prepare script",
    dataset_root: Optional[str] = None,
    expected_count: Optional[int] = None,
) -> List[dict]:
    """Records ``{"file_name", "sem_seg_file_name"}`` for every image that has a label file.

    Raises :class:`DatasetNotFoundError` when a folder is missing, holds no label file, or no
    image matches a label; it says what to run (``prepare_command``; ``None`` for a folder of
    the user's, which has none) and where the folders were looked for (``dataset_root``, the
    root given at registration; ``None``: ``$DETECTRON2_DATASETS``). ``expected_count``: the
    number of pairs of the complete split (a benchmark's); another number is a warning, since
    scores on part of a benchmark (an interrupted preparation, deleted files) do not compare
    with published ones."""
    for folder in (image_root, gt_root):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise _not_found(dataset_name, f"{folder} is a file, not a folder of "
                             f"{'images' if folder == image_root else 'label maps'}", prepare_command, dataset_root)
        if not os.path.isdir(folder):
            where = "" if os.path.isabs(folder) else f" (relative to the working folder {os.getcwd()})"
            root = dataset_root if dataset_root is not None else os.environ.get(ENV_VAR, "datasets")
            inside = os.path.relpath(folder, root)
            hint = misplaced_hint(root, inside) if prepare_command is not None and not inside.startswith("..") else ""
            raise _not_found(dataset_name, f"folder {folder} not found{where}{hint}", prepare_command, dataset_root)
    label_exts, image_exts = extensions(gt_ext), extensions(image_ext)
    labels = _files_by_stem(gt_root, label_exts)
    if not labels:
        raise _not_found(dataset_name, f"no {'/'.join(label_exts)} label files in {gt_root}"
                         f"{_what_is_there(gt_root)}", prepare_command, dataset_root)
    images = _files_by_stem(image_root, image_exts)
    common = sorted(set(images) & set(labels))
    if not common:
        image_note = (f"images such as {_examples(sorted(os.path.basename(p) for p in images.values()))}"
                      if images else f"no {'/'.join(image_exts)} image{_what_is_there(image_root)}")
        raise _not_found(
            dataset_name, f"no image in {image_root} matches a label in {gt_root} by name: labels such as "
            f"{_examples(sorted(os.path.basename(p) for p in labels.values()))}, {image_note}",
            prepare_command, dataset_root,
        )
    without_label = sorted(os.path.basename(images[stem]) for stem in set(images) - set(labels))
    without_image = sorted(os.path.basename(labels[stem]) for stem in set(labels) - set(images))
    if without_label or without_image:  # each named: a pairing mistake should not pass unseen
        unlabelled = f"{len(without_label)} image(s) without a label in {gt_root} ({_examples(without_label)})"
        imageless = f"{len(without_image)} label(s) without an image in {image_root} ({_examples(without_image)})"
        if prepare_command is not None:
            # a benchmark's image folder may hold more than its split (VOC's JPEGImages: every
            # image): its images without a label are expected (INFO), its labels without an
            # image are not (WARNING, said alone, not after thousands of expected ones)
            if without_image:
                logger.warning(f"dataset '{dataset_name}': {imageless} are left out; {len(common)} pairs are used")
            if without_label:
                logger.info(f"dataset '{dataset_name}': {unlabelled} are left out; {len(common)} pairs are used")
        else:
            parts = [part for part, left in ((unlabelled, without_label), (imageless, without_image)) if left]
            logger.warning(f"dataset '{dataset_name}': {' and '.join(parts)} are left out; {len(common)} pairs are used")
    if expected_count is not None and len(common) != expected_count:
        rerun = f"; if its preparation was interrupted, rerun: {prepare_command}" if prepare_command else ""
        logger.warning(f"dataset '{dataset_name}': {len(common)} image/label pairs in {gt_root}, the complete split "
                       f"has {expected_count}: its scores do not compare with published ones{rerun}")
    logger.info("Loaded %d images with semantic segmentation from %s", len(common), image_root)
    return [{"file_name": images[s], "sem_seg_file_name": labels[s]} for s in common]
