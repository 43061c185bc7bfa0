"""On-disk layout of every registered benchmark: one table, used by registration, the
preparation scripts, the toy-benchmark generator and the docs.

All paths are relative to the dataset root, which is ``$DETECTRON2_DATASETS`` (default
``datasets``) unless given explicitly.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

from ..class_names import get_class_names

ENV_VAR = "DETECTRON2_DATASETS"
DEFAULT_ROOT = "datasets"


def dataset_root(root: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The dataset root: ``root`` if given, else ``$DETECTRON2_DATASETS``, else ``datasets``."""
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(root).expanduser()


@dataclass(frozen=True)
class SemSegLayout:
    """Where one registered semantic-segmentation split lives and how it is scored."""

    name: str  # registered detectron2 name
    image_dir: str  # relative to the dataset root
    label_dir: str  # relative to the dataset root
    image_ext: str
    label_ext: str
    class_key: str  # stem of the class json (cat_seg.data.class_names)
    num_classes: int  # classes scored by the evaluator
    ignore_label: int
    evaluator_type: str  # "sem_seg" or "sem_seg_background"
    prepare_command: str  # what to run to create label_dir
    expected_count: Optional[int] = None  # number of label files of the full benchmark

    @property
    def class_json(self) -> str:
        """Repository-relative path of the class json, e.g. ``datasets/coco.json``."""
        return f"datasets/{self.class_key}.json"

    def stuff_classes(self) -> List[str]:
        """Class names scored by the evaluator (metadata ``stuff_classes``).

        Equal to the class json except for VOC-20b, whose json has 59 prompts (20 VOC classes
        + 39 background concepts) while the evaluator scores 20 classes + ``background``."""
        names = get_class_names(self.class_key)
        if self.evaluator_type == "sem_seg_background":
            names = names[: self.num_classes - 1] + ["background"]
        if len(names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(names)} class names, expected {self.num_classes}")
        return names


_VOC2012 = "VOCdevkit/VOC2012"
_VOC2010 = "VOCdevkit/VOC2010"

# The eight benchmarks of the paper (spec 5.1) and the embedded toy benchmark.
LAYOUTS = (
    SemSegLayout(
        "coco_2017_train_stuff_all_sem_seg", "coco-stuff/images/train2017",
        "coco-stuff/annotations_detectron2/train2017", "jpg", "png", "coco", 171, 255,
        "sem_seg", "python datasets/prepare_coco_stuff.py", 118287),
    SemSegLayout(
        "coco_2017_test_stuff_all_sem_seg", "coco-stuff/images/val2017",
        "coco-stuff/annotations_detectron2/val2017", "jpg", "png", "coco", 171, 255,
        "sem_seg", "python datasets/prepare_coco_stuff.py", 5000),
    SemSegLayout(
        "ade20k_150_test_sem_seg", "ADEChallengeData2016/images/validation",
        "ADEChallengeData2016/annotations_detectron2/validation", "jpg", "png", "ade150", 150,
        255, "sem_seg", "python datasets/prepare_ade20k.py --benchmark 150", 2000),
    SemSegLayout(
        "ade20k_full_sem_seg_freq_val_all", "ADE20K_2021_17_01/images_detectron2/validation",
        "ADE20K_2021_17_01/annotations_detectron2/validation", "jpg", "tif", "ade847", 847,
        65535, "sem_seg", "python datasets/prepare_ade20k.py --benchmark 847", 2000),
    SemSegLayout(
        "voc_2012_test_sem_seg", f"{_VOC2012}/JPEGImages",
        f"{_VOC2012}/annotations_detectron2/val", "jpg", "png", "voc20", 20, 255, "sem_seg",
        "python datasets/prepare_voc.py --benchmark voc", 1449),
    SemSegLayout(
        "voc_2012_test_background_sem_seg", f"{_VOC2012}/JPEGImages",
        f"{_VOC2012}/annotations_detectron2_bg/val", "jpg", "png", "voc20b", 21, 255,
        "sem_seg_background", "python datasets/prepare_voc.py --benchmark voc", 1449),
    SemSegLayout(
        "context_59_test_sem_seg", f"{_VOC2010}/JPEGImages",
        f"{_VOC2010}/annotations_detectron2/pc59_val", "jpg", "png", "pc59", 59, 255, "sem_seg",
        "python datasets/prepare_voc.py --benchmark pc59", 5105),
    SemSegLayout(
        "context_459_test_sem_seg", f"{_VOC2010}/JPEGImages",
        f"{_VOC2010}/annotations_detectron2/pc459_val", "jpg", "tif", "pc459", 459, 459,
        "sem_seg", "python datasets/prepare_voc.py --benchmark pc459", 5104),
    SemSegLayout(
        "synthetic_train_sem_seg", "synthetic/images/train", "synthetic/annotations/train", "jpg",
        "png", "synthetic_train", 12, 255, "sem_seg", "python datasets/prepare_synthetic.py"),
    SemSegLayout(
        "synthetic_val_sem_seg", "synthetic/images/val", "synthetic/annotations/val", "jpg",
        "png", "synthetic_val", 16, 255, "sem_seg", "python datasets/prepare_synthetic.py"),
)

LAYOUTS_BY_NAME: Dict[str, SemSegLayout] = {layout.name: layout for layout in LAYOUTS}


def get_layout(name: str) -> SemSegLayout:
    """The layout of the registered dataset ``name``."""
    try:
        return LAYOUTS_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(LAYOUTS_BY_NAME)}") from None
