"""Pascal Context val with 59 and with 459 classes (VOC 2010 images).

Context 59: ``VOCdevkit/VOC2010/trainval_merged.json`` (Detail API format). Keys relied upon:
``images[*]`` with ``image_id``, ``file_name``, ``phase`` (``"val"`` selects the split) and
``height`` / ``width`` (if absent, the size comes from the masks or the JPEG), and
``annos_segmentation[*]`` with ``image_id``, ``category_id`` (1..459) and ``segmentation`` (an
RLE dict ``{"size": [h, w], "counts": ...}``, compressed string or uncompressed list). Each
image's masks are painted with their category id in file order (later ones overwrite earlier
ones, background 0); the 60 ids of :data:`PC59_IDS` map to 255 (id 0) and 0..58, all others to
255. Saved as PNG ``annotations_detectron2/pc59_val/<image name>.png``.

Context 459: per-image ``VOCdevkit/VOC2010/trainval/<id>.mat`` with ``LabelMap`` (1..459) for
the ids of ``VOCdevkit/VOC2010/pascalcontext_val.txt``; label = LabelMap - 1 (0..458), saved
as uint16 TIFF ``annotations_detectron2/pc459_val/<id>.tif``. The ignore value 459 does not
occur, so every pixel is scored (``unknown`` is class 430).
"""
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import List, Optional

import numpy as np
import scipy.io
from pycocotools import mask as mask_utils

from ..datasets.errors import PrepareError
from ..catalog import get_layout, raw_label_ids
from . import cli
from .io import check_label_size, image_size, read_id_list, save_array
from .runner import Converted, Task, label_histogram

PC59 = get_layout("context_59_test_sem_seg")
PC459 = get_layout("context_459_test_sem_seg")
PC59_JSON = "VOCdevkit/VOC2010/trainval_merged.json"
PC459_MATS = "VOCdevkit/VOC2010/trainval"
PC459_VAL_LIST = "VOCdevkit/VOC2010/pascalcontext_val.txt"

# The sorted 60 category ids of Pascal Context 59 (0 = background, mapped to ignore).
PC59_IDS = (0,) + tuple(raw_label_ids("pc59"))


def _pc59_lut() -> np.ndarray:
    """Pascal Context category id (0..459) -> PC-59 label, its ignore label for background and
    the categories PC-59 leaves out."""
    lut = np.full(PC459.num_classes + 1, PC59.ignore_label, dtype=np.uint8)
    for index, cat_id in enumerate(PC59_IDS):
        lut[cat_id] = PC59.ignore_label if index == 0 else index - 1
    return lut


_PC59_LUT = _pc59_lut()


def _decode(rle: dict, h: int, w: int, source: str) -> np.ndarray:
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise PrepareError(f"{source}: segmentation is not an RLE dict with 'size' and 'counts'")
    if list(rle["size"]) != [h, w]:
        raise PrepareError(f"{source}: mask size {list(rle['size'])} differs from the image "
                           f"size {[h, w]}")
    if isinstance(rle["counts"], list):
        rle = mask_utils.frPyObjects(rle, h, w)
    elif isinstance(rle["counts"], str):
        rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    try:
        return mask_utils.decode(rle)
    except Exception as exc:  # pycocotools raises plain Exceptions for corrupt RLE
        raise PrepareError(f"{source}: cannot decode RLE mask: {exc}") from None


def convert_pc59(source: str, image_path: str, size, annotations, dst: str) -> Converted:
    """Paint one image's Detail masks with their category ids and map them to PC-59."""
    h, w = size if size is not None else (None, None)
    if h is None and annotations:
        h, w = annotations[0][1]["size"]
    if h is None:  # no size in the annotations: the image's
        h, w = image_size(image_path)
    painted = np.zeros((h, w), dtype=np.int64)
    for category_id, rle in annotations:
        if not isinstance(category_id, int) or not 0 <= category_id <= 459:
            raise PrepareError(f"{source}: category_id {category_id!r} outside 0..459")
        painted[_decode(rle, h, w, source) > 0] = category_id
    out = _PC59_LUT[painted]
    stats = label_histogram(out, PC59.num_classes, PC59.ignore_label, source)
    save_array(dst, out, "PNG")
    return stats


def _require_keys(entry, keys, json_path: Path, where: str) -> None:
    """A Detail API entry must be an object with ``keys``: else one error naming the entry."""
    if not isinstance(entry, dict):
        raise PrepareError(f"{json_path}: {where} is a {type(entry).__name__}, expected an object")
    missing = [key for key in keys if key not in entry]
    if missing:
        raise PrepareError(f"{json_path}: {where} lacks {', '.join(repr(k) for k in missing)} "
                           f"(not the Detail API trainval_merged.json, or a damaged copy)")


def pc59_tasks(root: Path) -> List[Task]:
    json_path = cli.require(root, PC59_JSON, "pascal_context_59", "annotation file")
    images_dir = cli.require(root, PC59.image_dir, "voc2010", "folder")
    try:
        with open(json_path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise PrepareError(f"cannot read {json_path}: {exc}") from None
    if not isinstance(data, dict) or not {"images", "annos_segmentation"} <= set(data):
        raise PrepareError(f"{json_path} lacks 'images' or 'annos_segmentation' (not the Detail "
                           f"API trainval_merged.json)")
    by_image = defaultdict(list)
    for index, anno in enumerate(data["annos_segmentation"]):
        _require_keys(anno, ("image_id", "category_id", "segmentation"), json_path, f"annos_segmentation[{index}]")
        by_image[anno["image_id"]].append((anno["category_id"], anno["segmentation"]))
    out_dir = root / PC59.label_dir
    tasks = []
    for index, image in enumerate(data["images"]):
        _require_keys(image, ("file_name", "image_id"), json_path, f"images[{index}]")
        if image.get("phase") != "val":
            continue
        stem = Path(image["file_name"]).stem
        size = (image["height"], image["width"]) if "height" in image and "width" in image else None
        dst = out_dir / f"{stem}.png"
        source = f"{json_path} image {image['file_name']}"
        image_path = images_dir / image["file_name"]
        tasks.append(Task(source, (dst,), (source, str(image_path), size, by_image.get(image["image_id"], []),
                                           str(dst)), image=image_path))
    if not tasks:
        raise PrepareError(f"{json_path} has no image with phase 'val'")
    cli.require_images(tasks, root, "voc2010")
    return tasks


def convert_pc459(src: str, dst: str, image: Optional[str] = None) -> Converted:
    """One ``.mat`` LabelMap (1..459) of the image ``image`` -> uint16 TIFF with values 0..458."""
    try:
        label = scipy.io.loadmat(src)["LabelMap"]
    except KeyError:
        raise PrepareError(f"{src} has no 'LabelMap' variable") from None
    except (OSError, ValueError, TypeError, NotImplementedError,
            scipy.io.matlab.MatReadError) as exc:
        raise PrepareError(f"cannot read {src}: {exc}") from None
    if label.ndim != 2:
        raise PrepareError(f"{src}: LabelMap has shape {label.shape}, expected 2-D")
    if image is not None:
        check_label_size(label.shape, image_size(image), src, image)
    label = label.astype(np.int64)
    if label.size and (label.min() < 1 or label.max() > 459):
        bad = np.unique(label[(label < 1) | (label > 459)])[:8]
        raise PrepareError(f"{src}: LabelMap values outside the expected range (1..459): "
                           f"{', '.join(map(str, bad))}")
    out = (label - 1).astype(np.uint16)
    stats = label_histogram(out, PC459.num_classes, PC459.ignore_label, src)
    save_array(dst, out, "TIFF")
    return stats


def pc459_tasks(root: Path, val_list: Optional[str] = None) -> List[Task]:
    if val_list is not None:
        list_path = Path(val_list)
        if list_path.is_dir():
            raise PrepareError(f"--val-list {list_path} is a folder; expected the id list file (pascalcontext_val.txt)")
        if not list_path.is_file():
            raise PrepareError(f"missing id list {list_path}")
    else:
        list_path = cli.require(root, PC459_VAL_LIST, "pascal_context_459_val_list", "id list")
    mats = cli.require(root, PC459_MATS, "pascal_context_459", "folder")
    cli.require(root, PC459.image_dir, "voc2010", "folder")
    ids = read_id_list(list_path)
    malformed = [i for i in ids if not re.fullmatch(r"\d{4}_\d{6}", i)]
    if malformed:
        raise PrepareError(f"{list_path} is not a list of VOC image ids (e.g. 2008_000002); "
                           f"first bad line: {malformed[0][:60]!r}")
    missing = [i for i in ids if not (mats / f"{i}.mat").is_file()]
    if missing:
        raise PrepareError(f"{len(missing)} of the {len(ids)} ids of {list_path} have no .mat "
                           f"file in {mats}, e.g. {missing[0]}.mat")
    out_dir = root / PC459.label_dir
    tasks = []
    for i in ids:
        image = root / PC459.image_dir / f"{i}.{PC459.image_ext}"
        tasks.append(Task(str(mats / f"{i}.mat"), (out_dir / f"{i}.tif",),
                          (str(mats / f"{i}.mat"), str(out_dir / f"{i}.tif"), str(image)), image=image))
    cli.require_images(tasks, root, "voc2010")
    return tasks
