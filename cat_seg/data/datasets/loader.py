"""Loading a prepared semantic-segmentation split into detectron2 records.

Equivalent to detectron2's ``load_sem_seg`` (images and labels matched by basename, the
intersection kept when the folders hold different files, records with only ``file_name`` and
``sem_seg_file_name``), but a missing or empty folder raises a one-line
:class:`DatasetNotFoundError` that says what to run.
"""
import logging
import os
from typing import Dict, List, Optional

from .errors import DatasetNotFoundError
from ..catalog import ENV_VAR

logger = logging.getLogger(__name__)


def _files_by_stem(folder: str, ext: str) -> Dict[str, str]:
    """``{basename without extension: path}`` of the visible ``*.ext`` files in ``folder``."""
    suffix = "." + ext
    return {
        name[: -len(suffix)]: os.path.join(folder, name)
        for name in os.listdir(folder)
        if name.endswith(suffix) and not name.startswith(".")
    }


def root_note(root: Optional[str] = None) -> str:
    """Where a dataset root comes from, for messages: ``root`` given at registration, else
    ``$DETECTRON2_DATASETS`` or its default (read now)."""
    if root is not None:
        return f"registered with the dataset root {root}"
    root = os.environ.get(ENV_VAR)
    return f"${ENV_VAR}={root}" if root else f"${ENV_VAR} is not set, default 'datasets'"


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
    gt_ext: str = "png",
    image_ext: str = "jpg",
    prepare_command: Optional[str] = "the dataset's prepare script",
    dataset_root: Optional[str] = None,
) -> List[dict]:
    """Records ``{"file_name", "sem_seg_file_name"}`` for every image that has a label file.

    Raises :class:`DatasetNotFoundError` when a folder is missing, holds no label file, or no
    image matches a label; it says what to run (``prepare_command``; ``None`` for a folder of
    the user's, which has none) and where the folders were looked for (``dataset_root``, the
    root given at registration; ``None``: ``$DETECTRON2_DATASETS``)."""
    for folder in (image_root, gt_root):
        if not os.path.isdir(folder):
            raise _not_found(dataset_name, f"folder {folder} not found", prepare_command, dataset_root)
    labels = _files_by_stem(gt_root, gt_ext)
    if not labels:
        raise _not_found(dataset_name, f"no .{gt_ext} label files in {gt_root}", prepare_command, dataset_root)
    images = _files_by_stem(image_root, image_ext)
    if len(images) != len(labels):
        logger.warning(
            "Directory %s and %s have %d and %d files; using their intersection.",
            image_root, gt_root, len(images), len(labels),
        )
    common = sorted(set(images) & set(labels))
    if not common:
        raise _not_found(
            dataset_name, f"no .{image_ext} image in {image_root} matches a label in {gt_root}",
            prepare_command, dataset_root,
        )
    logger.info("Loaded %d images with semantic segmentation from %s", len(common), image_root)
    return [{"file_name": images[s], "sem_seg_file_name": labels[s]} for s in common]
