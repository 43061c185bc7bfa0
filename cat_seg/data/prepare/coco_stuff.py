"""COCO-Stuff 171 (COCO 2017 images + ``stuffthingmaps_trainval2017.zip``).

Raw label PNGs ``coco-stuff/annotations/{train2017,val2017}/*.png`` store ``COCO id - 1``
(0..181) and 255 for unlabeled. The 171 used ids (80 things, 91 stuff) are mapped to their
contiguous train ids 0..170 in COCO id order, everything else to 255, and saved into
``coco-stuff/annotations_detectron2/{train2017,val2017}``. Raw values 182..254 do not occur in
the real data and are reported as an error.
"""
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..datasets.errors import PrepareError
from ..catalog import get_layout, raw_id_to_label
from . import cli
from .io import label_files
from .runner import Converted, Task, relabel, run_tasks

SPLITS = {
    "train2017": get_layout("coco_2017_train_stuff_all_sem_seg"),
    "val2017": get_layout("coco_2017_test_stuff_all_sem_seg"),
}
RAW_LABELS = "coco-stuff/annotations/{split}"
# each split's layout lists its image archive, then the label archive
IMAGE_ARCHIVES = {split: layout.archives[0] for split, layout in SPLITS.items()}
LABEL_ARCHIVE = SPLITS["val2017"].archives[1]

# Raw value v = COCO id - 1; valid raw values are 0..181 and 255.
_VALID = np.zeros(256, dtype=bool)
_VALID[:182] = True
_VALID[255] = True


def _lut() -> np.ndarray:
    lut = np.full(256, 255, dtype=np.uint8)
    for coco_id, train_id in raw_id_to_label("coco").items():
        lut[coco_id - 1] = train_id
    return lut


_LUT = _lut()


def convert(src: str, dst: str, image: Optional[str] = None) -> Converted:
    """One stuffthingmaps PNG (of the image ``image``) -> contiguous 171-class label PNG."""
    return relabel(src, dst, _LUT, _VALID, "0..181 or 255", SPLITS["val2017"], image=image)


def split_tasks(root: Path, split: str) -> List[Task]:
    layout = SPLITS[split]
    raw = RAW_LABELS.format(split=split)
    cli.require(root, raw, LABEL_ARCHIVE, "folder")
    cli.require(root, layout.image_dir, IMAGE_ARCHIVES[split], "folder")
    out_dir = root / layout.label_dir
    tasks = []
    for src in label_files(root / raw):
        image = root / layout.image_dir / f"{src.stem}.{layout.image_ext}"
        tasks.append(Task(str(src), (out_dir / src.name,), (str(src), str(out_dir / src.name), str(image)),
                          image=image))
    if not tasks:
        raise PrepareError(f"no .png label files in {root / raw}")
    cli.require_images(tasks, root, IMAGE_ARCHIVES[split])
    return tasks


def _split_step(args, root: Path, split: str) -> List[Task]:
    """:func:`split_tasks`; when its raw data is missing and no ``--split`` was given (both are
    prepared), the error also says how to prepare the other split without it."""
    try:
        return split_tasks(root, split)
    except PrepareError as exc:
        if args.split:
            raise
        other = next(s for s in SPLITS if s != split)
        raise PrepareError(f"{exc} (needed for split {split}; to prepare the other without it: --split {other})") \
            from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.build_parser("Prepare COCO-Stuff 171 labels (train2017 and val2017) for "
                              "detectron2.")
    parser.add_argument("--split", action="append", choices=list(SPLITS),
                        help="split to prepare, repeatable (default: train2017 and val2017)")
    args = parser.parse_args(argv)
    root = cli.root_of(args)
    splits = [s for s in SPLITS if s in set(args.split or SPLITS)]
    cli.fetch_if_asked(args, [LABEL_ARCHIVE] + [IMAGE_ARCHIVES[s] for s in splits])
    plans = [(split, _split_step(args, root, split)) for split in splits]
    for split, tasks in plans:
        layout = SPLITS[split]
        run_tasks(f"COCO-Stuff {split}", tasks, convert, num_classes=layout.num_classes,
                  ignore_label=layout.ignore_label, workers=args.workers, force=args.force,
                  expected_count=layout.expected_count, progress=not args.no_progress)
    return 0
