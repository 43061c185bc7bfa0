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


# The two problems of a label map's content, worded once for the training mapper, the
# evaluator's ground-truth reader and the pre-run scan (``--check-labels``).

def unreadable(label_file: str, error: BaseException) -> str:
    """A label map that cannot be decoded."""
    return f"label map {label_file}: cannot be read ({error})"


def form_problem(label_file: str, label: np.ndarray) -> Optional[str]:
    """What is wrong with the form of a decoded label map, or None when it is ``[H, W]`` of
    whole numbers: more channels (a colour-coded mask gets the hint to convert it), or
    fractional values (a floating-point TIFF; casting to class indices would truncate them)."""
    if label.ndim != 2:
        hint = (" (a colour-coded mask: convert each colour to its class index first)"
                if label.ndim == 3 and label.shape[2] in (3, 4) else "")
        return (f"label map {label_file}: not single-channel (shape {tuple(label.shape)}), a class index per pixel "
                f"expected{hint}")
    if label.dtype.kind == "f":
        fractional = label != np.round(label)  # NaN too
        if fractional.any():
            return (f"label map {label_file}: value {label[fractional][0]:g} is not a whole number (class indices "
                    "expected; save the label map with an integer pixel type)")
    return None


def size_problem(label_file: str, label_shape, image_file: str, image_shape) -> Optional[str]:
    """A label map of another size than its image (shapes ``[H, W, ...]``), or None."""
    if tuple(label_shape[:2]) == tuple(image_shape[:2]):
        return None
    return (f"label map {label_file}: size {label_shape[0]}x{label_shape[1]} (HxW), its image {image_file} "
            f"{image_shape[0]}x{image_shape[1]}")


def value_problem(label_file: str, label: np.ndarray, num_classes: Optional[int], ignore_label: int,
                  classes_of: str = "") -> Optional[str]:
    """What is wrong with the values of a label map (:func:`outside_classes`), or None.

    Names up to five of the offending values. ``classes_of``: where the classes come from,
    appended to "the N classes" (e.g. ``" of dataset 'ade20k_150'"``).
    """
    outside = outside_classes(label, num_classes, ignore_label)
    if not outside.any():
        return None
    values = np.unique(label[outside])
    shown = ", ".join(str(int(v)) for v in values[:5]) + (" ..." if len(values) > 5 else "")
    classes = (f"the {num_classes} classes{classes_of} (0..{num_classes - 1})" if num_classes is not None
               else "the class indices (>= 0)")
    return (f"label map {label_file}: value(s) {shown} outside {classes} and not the ignore value "
            f"{ignore_label}{lossy_label_hint(label_file)}")


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
    or None: unreadable, not single-channel or fractional, another size than its image, or a value that is
    neither a class index (``0..num_classes - 1``) nor ``ignore_label``."""
    label_file = record["sem_seg_file_name"]
    try:
        label = read_label_file(label_file)
    except (OSError, SyntaxError, ValueError) as e:
        return unreadable(label_file, e)
    problem = form_problem(label_file, label)
    if problem:
        return problem
    try:
        size = _image_size(record["file_name"])
    except (OSError, SyntaxError, ValueError) as e:
        return f"{record['file_name']}: the image cannot be read ({e})"
    problem = size_problem(label_file, label.shape, record["file_name"], size)
    if problem:
        return problem
    return value_problem(label_file, label, num_classes, ignore_label)


def label_problems(records: Iterable[dict], num_classes: int, ignore_label: int,
                   workers: Optional[int] = None) -> List[str]:
    """:func:`label_problem` of every record that has a label, in the records' order."""
    records = [r for r in records if r.get("sem_seg_file_name")]
    with ThreadPoolExecutor(max_workers=workers or available_cores()) as pool:
        found = pool.map(lambda record: label_problem(record, num_classes, ignore_label), records)
        return [problem for problem in found if problem]
