"""Pascal VOC 2012 val with 20 classes (VOC-20) and with background (VOC-20b), plus the
``prepare_voc.py`` entry point that also prepares Pascal Context 59 / 459
(:mod:`.pascal_context`).

For the 1449 ids of ``VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt`` the SBD-augmented
mask ``VOCdevkit/VOC2012/SegmentationClassAug/<id>.png`` (0 background, 1..20 classes, 255
boundary) is mapped 1..20 -> 0..19, 255 -> 255 and background 0 -> 255 for VOC-20
(``annotations_detectron2/val``) or 0 -> 20 for VOC-20b (``annotations_detectron2_bg/val``).
A mask that is entirely 255 after the mapping is not written.
"""
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..datasets.errors import PrepareError
from ..catalog import get_layout
from . import cli, pascal_context
from .io import read_id_list
from .runner import Converted, Task, relabel

VOC20 = get_layout("voc_2012_test_sem_seg")
VOC20B = get_layout("voc_2012_test_background_sem_seg")
#: each --benchmark choice -> the catalog layouts it prepares
BENCHMARK_LAYOUTS = {"voc": (VOC20, VOC20B), "pc59": (pascal_context.PC59,), "pc459": (pascal_context.PC459,)}
BENCHMARKS = tuple(BENCHMARK_LAYOUTS)
VAL_LIST = "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
AUG_LABELS = "VOCdevkit/VOC2012/SegmentationClassAug"
# what each --benchmark choice is prepared from
ARCHIVE_KEYS = {
    "voc": list(VOC20.archives),
    "pc59": list(pascal_context.PC59.archives),
    "pc459": list(pascal_context.PC459.archives),
}

_VALID = np.zeros(256, dtype=bool)
_VALID[:21] = True
_VALID[255] = True


def _lut(background: bool) -> np.ndarray:
    lut = np.full(256, 255, dtype=np.uint8)
    lut[1:21] = np.arange(20)
    lut[0] = 20 if background else 255
    return lut


_LUTS = {False: _lut(False), True: _lut(True)}


def convert(src: str, dst: str, background: bool, image: Optional[str] = None) -> Converted:
    """One SegmentationClassAug mask (of the image ``image``) -> VOC-20 (``background`` False)
    or VOC-20b label; a mask with no labelled pixel (VOC-20: background and boundary only) is
    not written."""
    return relabel(src, dst, _LUTS[background], _VALID, "0..20 or 255", VOC20B if background else VOC20,
                   skip_unlabelled=True, image=image)


def voc_tasks(root: Path, background: bool) -> List[Task]:
    ids = read_id_list(cli.require(root, VAL_LIST, "voc2012", "id list"))
    aug = cli.require(root, AUG_LABELS, "voc2012_aug", "folder")
    cli.require(root, VOC20.image_dir, "voc2012", "folder")
    missing = [i for i in ids if not (aug / f"{i}.png").is_file()]
    if missing:
        raise PrepareError(f"{len(missing)} of the {len(ids)} ids of {root / VAL_LIST} have no "
                           f"mask in {aug}, e.g. {missing[0]}.png")
    layout = VOC20B if background else VOC20
    out_dir = root / layout.label_dir
    tasks = []
    for i in ids:
        image = root / layout.image_dir / f"{i}.{layout.image_ext}"
        tasks.append(Task(str(aug / f"{i}.png"), (out_dir / f"{i}.png",),
                          (str(aug / f"{i}.png"), str(out_dir / f"{i}.png"), background, str(image)), image=image))
    cli.require_images(tasks, root, "voc2012")
    return tasks


def main(argv: Optional[Sequence[str]] = None, benchmark: Optional[str] = None) -> int:
    """``datasets/prepare_voc.py``; ``benchmark``: that one alone, for a script under an
    official name (:data:`~.cli.OFFICIAL_SCRIPTS`)."""
    parser = cli.build_parser("Prepare Pascal VOC 2012 val (VOC-20, VOC-20b) and Pascal Context val (59, 459 "
                              "classes) labels for detectron2.", BENCHMARK_LAYOUTS, only=benchmark)
    parser.set_defaults(val_list=None)
    if benchmark in (None, "pc459"):  # a script that cannot prepare Context 459 has no use for its list
        parser.add_argument("--val-list", default=None,
                            help="Pascal Context 459 id list (default: "
                                 f"<root>/{pascal_context.PC459_VAL_LIST})")
    args = parser.parse_args(argv)
    if args.val_list is not None and "pc459" not in cli.selected_benchmarks(args, BENCHMARKS):
        parser.error(f"--val-list is the Pascal Context 459 id list, and pc459 is not among the benchmarks "
                     f"prepared ({', '.join(cli.selected_benchmarks(args, BENCHMARKS))}): add --benchmark pc459")
    root = cli.root_of(args)
    archives = {choice: [k for k in keys if not (args.val_list and k == "pascal_context_459_val_list")]
                for choice, keys in ARCHIVE_KEYS.items()}
    plans = {
        "voc": lambda: [("VOC-20 val", voc_tasks(root, False), convert, VOC20),
                        ("VOC-20b val", voc_tasks(root, True), convert, VOC20B)],
        "pc59": lambda: [("Pascal Context 59 val", pascal_context.pc59_tasks(root),
                          pascal_context.convert_pc59, pascal_context.PC59)],
        "pc459": lambda: [("Pascal Context 459 val", pascal_context.pc459_tasks(root, args.val_list),
                           pascal_context.convert_pc459, pascal_context.PC459)],
    }
    return cli.prepare_benchmarks(args, BENCHMARKS, archives, plans)
