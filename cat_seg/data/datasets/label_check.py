"""A scan of every label map of a dataset before a run (``train_net --check-labels``).

A label map is otherwise read when it is used, so a bad file (colour-coded, another size than
its image, a value that is no class and not the ignore value, unreadable) stops a run at the
first batch that meets it, possibly hours in. The scan reads each label once and each image's
header only (its size, turned by its EXIF orientation as the decoder turns it), in threads.
"""
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, List, Optional

import numpy as np
from PIL import Image

from ...utils import available_cores
from ..image_io import ORIENTATION_TAG, lossy_label_hint, read_label_file


def outside_classes(label: np.ndarray, num_classes: Optional[int], ignore_label: int) -> np.ndarray:
    """Mask of the pixels of ``label`` whose value is neither a class index
    (``0..num_classes - 1``; any value >= 0 for ``num_classes`` None) nor ``ignore_label``: the
    one rule of the training mapper, the evaluator and :func:`label_problem`."""
    outside = label < 0
    if num_classes is not None:
        outside |= label >= num_classes
    return outside & (label != ignore_label)


def _image_size(path: str) -> tuple:
    """``(H, W)`` of an image as decoded (a 90-degree EXIF orientation swaps the sides), from
    its header."""
    with Image.open(path) as image:
        width, height = image.size
        # Pillow's TIFF plugin reports a TIFF's size as turned by its tag already
        orientation = None if image.format == "TIFF" else image.getexif().get(ORIENTATION_TAG)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def label_problem(record: dict, num_classes: int, ignore_label: int) -> Optional[str]:
    """What is wrong with the label map of ``record`` (``{"file_name", "sem_seg_file_name"}``),
    or None: unreadable, not single-channel, another size than its image, or a value that is
    neither a class index (``0..num_classes - 1``) nor ``ignore_label``."""
    label_file = record["sem_seg_file_name"]
    try:
        label = read_label_file(label_file)
    except (OSError, SyntaxError, ValueError) as e:
        return f"{label_file}: cannot be read ({e})"
    if label.ndim != 2:
        return f"{label_file}: not single-channel (shape {label.shape}; value = class index expected)"
    try:
        size = _image_size(record["file_name"])
    except (OSError, SyntaxError, ValueError) as e:
        return f"{record['file_name']}: the image cannot be read ({e})"
    if label.shape != size:
        return f"{label_file}: size {label.shape[0]}x{label.shape[1]} (HxW), its image {size[0]}x{size[1]}"
    outside = outside_classes(label, num_classes, ignore_label)
    if outside.any():
        values = np.unique(label[outside])
        shown = ", ".join(str(int(v)) for v in values[:5]) + (" ..." if len(values) > 5 else "")
        return (f"{label_file}: value(s) {shown} outside the {num_classes} classes (0..{num_classes - 1}) and "
                f"not the ignore value {ignore_label}{lossy_label_hint(label_file)}")
    return None


def label_problems(records: Iterable[dict], num_classes: int, ignore_label: int,
                   workers: Optional[int] = None) -> List[str]:
    """:func:`label_problem` of every record that has a label, in the records' order."""
    records = [r for r in records if r.get("sem_seg_file_name")]
    with ThreadPoolExecutor(max_workers=workers or available_cores()) as pool:
        found = pool.map(lambda record: label_problem(record, num_classes, ignore_label), records)
        return [problem for problem in found if problem]
