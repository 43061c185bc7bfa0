"""ADE20K-150 (ADEChallengeData2016) and ADE20K-847 (ADE20K_2021_17_01 full release).

ADE-150: ``ADEChallengeData2016/annotations/validation/*.png`` (uint8, 0 = other, 1..150) are
shifted by -1 with wrap-around (0 -> 255 ignore, v -> v-1) into
``ADEChallengeData2016/annotations_detectron2/validation``; the images stay where they are.

ADE-847: ``ADE20K_2021_17_01/index_ade20k.pkl`` lists every image. Keys relied upon:
``filename`` (list of names such as ``ADE_val_00000001.jpg``) and ``folder`` (parallel list of
folders relative to the dataset root, e.g. ``ADE20K_2021_17_01/images/ADE/validation/...``);
other keys (``objectnames``, ``scene``, ...) are not used. For the entries whose name has
``val`` as its second ``_``-separated field, the image and its ``<name>_seg.png`` are read;
the object id of a pixel is ``floor(R / 10) * 256 + G``. Images whose short side exceeds 512
are resized to short side 512 (long side rounded; image cv2 INTER_LINEAR, label
INTER_NEAREST). Object ids are mapped to the 847 trainIds (others 65535) and saved as uint16
TIFF in ``annotations_detectron2/validation``; the image is re-encoded with PIL's default JPEG
settings into ``images_detectron2/validation``.
"""
import pickle
from pathlib import Path
from typing import List, Optional, Sequence

import cv2
import numpy as np

from ...utils import error_line
from ..datasets.errors import PrepareError
from ..download import how_to_get
from ..catalog import get_layout, raw_id_to_label
from . import cli
from .io import check_label_size, label_files, read_array, save_array
from .runner import Converted, Task, label_histogram, relabel

ADE150 = get_layout("ade20k_150_test_sem_seg")
ADE847 = get_layout("ade20k_full_sem_seg_freq_val_all")
#: each --benchmark choice -> the catalog layouts it prepares
BENCHMARK_LAYOUTS = {"150": (ADE150,), "847": (ADE847,)}
BENCHMARKS = tuple(BENCHMARK_LAYOUTS)
ADE150_RAW_LABELS = "ADEChallengeData2016/annotations/validation"
ADE847_INDEX = "ADE20K_2021_17_01/index_ade20k.pkl"
ADE847_MAX_SHORT_SIDE = 512

# ADE-150: raw values 0..150 are valid; value v becomes (v - 1) mod 256.
_ADE150_VALID = np.ones(151, dtype=bool)
_ADE150_LUT = ((np.arange(256) - 1) % 256).astype(np.uint8)


def _ade847_lut() -> np.ndarray:
    """Object id (0..floor(255/10)*256+255) -> trainId, the ignore label (65535) for unlisted ids."""
    lut = np.full(25 * 256 + 256, ADE847.ignore_label, dtype=np.uint16)
    for raw_id, train_id in raw_id_to_label("ade847").items():
        lut[raw_id] = train_id
    return lut


_ADE847_LUT = _ade847_lut()


def convert_ade150(src: str, dst: str, image: Optional[str] = None) -> Converted:
    """One ADEChallenge label (of the image ``image``): shift by -1 with wrap-around and save as PNG."""
    return relabel(src, dst, _ADE150_LUT, _ADE150_VALID, "0..150", ADE150, image=image)


def decode_ade_full_seg(seg: np.ndarray, source) -> np.ndarray:
    """Object ids ``floor(R / 10) * 256 + G`` of an ADE20K full ``_seg.png`` (RGB uint8)."""
    if seg.ndim != 3 or seg.shape[2] < 3 or seg.dtype != np.uint8:
        raise PrepareError(f"segmentation file {source} has shape {seg.shape} and dtype "
                           f"{seg.dtype}, expected an RGB uint8 image")
    r = seg[:, :, 0].astype(np.int32)
    g = seg[:, :, 1].astype(np.int32)
    return (r // 10) * 256 + g


def short_side_resize_shape(h: int, w: int, max_short: int = ADE847_MAX_SHORT_SIDE):
    """``(h, w)`` after the ADE-847 resize, or None when the short side is <= ``max_short``."""
    if w >= h > max_short:
        return max_short, round(w / float(h) * max_short)
    if h >= w > max_short:
        return round(h / float(w) * max_short), max_short
    return None


def convert_ade847(image_src: str, seg_src: str, image_dst: str, label_dst: str) -> Converted:
    """One ADE20K full validation image: decode, resize, map to trainIds, save JPEG + TIFF."""
    image = read_array(image_src, "image", modes=("RGB", "L"))  # e.g. CMYK JPEG -> RGB
    ids = decode_ade_full_seg(read_array(seg_src, "segmentation"), seg_src)
    check_label_size(ids.shape, image.shape, seg_src, image_src)
    new_shape = short_side_resize_shape(*ids.shape)
    if new_shape is not None:
        h, w = new_shape
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        ids = cv2.resize(ids, (w, h), interpolation=cv2.INTER_NEAREST)
    out = _ADE847_LUT[ids]
    stats = label_histogram(out, ADE847.num_classes, ADE847.ignore_label, seg_src)
    save_array(image_dst, image, "JPEG")
    save_array(label_dst, out, "TIFF")
    return stats


def ade150_tasks(root: Path) -> List[Task]:
    cli.require(root, ADE150_RAW_LABELS, "ade20k_challenge", "folder")
    cli.require(root, ADE150.image_dir, "ade20k_challenge", "folder")
    out_dir = root / ADE150.label_dir
    tasks = []
    for src in label_files(root / ADE150_RAW_LABELS):
        dst = out_dir / src.name
        image = root / ADE150.image_dir / f"{src.stem}.{ADE150.image_ext}"
        tasks.append(Task(str(src), (dst,), (str(src), str(dst), str(image)), image=image))
    if not tasks:
        raise PrepareError(f"no .png label files in {root / ADE150_RAW_LABELS}")
    cli.require_images(tasks, root, "ade20k_challenge")
    return tasks


def load_ade_index(path: Path) -> dict:
    """Read ``index_ade20k.pkl`` and check the keys used here."""
    try:
        with open(path, "rb") as f:
            index = pickle.load(f)
    except Exception as exc:  # a damaged or foreign file makes the unpickler raise almost anything
        raise PrepareError(f"cannot read {path}: {error_line(exc)}; expected the index_ade20k.pkl of ADE20K_2021_17_01.zip") from None
    if not isinstance(index, dict) or not {"filename", "folder"} <= set(index):
        raise PrepareError(f"{path} is not an ADE20K index (expected a dict with 'filename' and "
                           f"'folder' lists)")
    if len(index["filename"]) != len(index["folder"]):
        raise PrepareError(f"{path}: 'filename' and 'folder' have different lengths")
    return index


def ade847_tasks(root: Path) -> List[Task]:
    index = load_ade_index(cli.require(root, ADE847_INDEX, "ade20k_full", "index file"))
    image_out = root / ADE847.image_dir
    label_out = root / ADE847.label_dir
    tasks = []
    for folder, filename in zip(index["folder"], index["filename"]):
        fields = filename.split("_")
        if len(fields) < 2 or fields[1] != "val":
            continue
        image_src = root / folder / filename
        seg_src = image_src.with_name(image_src.stem + "_seg.png")
        image_dst = image_out / filename
        label_dst = label_out / (Path(filename).stem + "." + ADE847.label_ext)
        tasks.append(Task(str(image_src), (image_dst, label_dst),
                          (str(image_src), str(seg_src), str(image_dst), str(label_dst))))
    if not tasks:
        raise PrepareError(f"{root / ADE847_INDEX} lists no validation image (ADE_val_*)")
    for index, what in ((0, "validation images"), (1, "segmentation files (_seg.png) of validation images")):
        missing = [t.args[index] for t in tasks if not Path(t.args[index]).is_file()]
        if missing:
            raise PrepareError(f"{len(missing)} {what} listed in {ADE847_INDEX} are "
                               f"missing, e.g. {missing[0]}: {how_to_get('ade20k_full', root)}")
    return tasks


def main(argv: Optional[Sequence[str]] = None, benchmark: Optional[str] = None) -> int:
    """``datasets/prepare_ade20k.py``; ``benchmark``: that one alone, for a script under an
    official name (:data:`~.cli.OFFICIAL_SCRIPTS`)."""
    parser = cli.build_parser("Prepare ADE20K-150 (ADEChallengeData2016) and ADE20K-847 (ADE20K_2021_17_01) "
                              "validation labels for detectron2.", BENCHMARK_LAYOUTS, only=benchmark)
    args = parser.parse_args(argv)
    root = cli.root_of(args)
    plans = {
        "150": lambda: [("ADE20K-150 val", ade150_tasks(root), convert_ade150, ADE150)],
        "847": lambda: [("ADE20K-847 val", ade847_tasks(root), convert_ade847, ADE847)],
    }
    return cli.prepare_benchmarks(args, BENCHMARKS, {"150": ADE150.archives, "847": ADE847.archives}, plans)
