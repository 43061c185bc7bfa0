"""Train-time dataset mapper for semantic segmentation (the official MaskFormer / CAT-Seg
training mapper)."""
import copy
import logging
import warnings
from typing import List, Optional, Union

import numpy as np
import torch
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ...config import get_key
from ...utils import read_class_json
from ..datasets.errors import DatasetFileError
from ..datasets.label_check import form_problem, size_problem, unreadable, value_problem
from ..image_io import read_image_file, read_label_file
from ..transforms import ColorAugSSDTransform, ResizeShortestEdgeNonEmpty

__all__ = ["MaskFormerSemanticDatasetMapper", "SemanticTrainMapper", "build_train_augmentations"]

logger = logging.getLogger(__name__)

# Raw pixel value of the padding, before normalisation: the official mapper pads images with
# 128 (not 0), and the padded area is seen by the model, so we keep it.
IMAGE_PAD_VALUE = 128


#: ``INPUT.MIN_SIZE_TRAIN_SAMPLING`` / ``INPUT.CROP.TYPE`` values detectron2's augmentations take.
RESIZE_SAMPLING = ("choice", "range")
CROP_TYPES = ("absolute", "absolute_range", "relative", "relative_range")


def check_crop(crop_type: str, size: list) -> None:
    """``INPUT.CROP.TYPE`` and ``INPUT.CROP.SIZE`` as detectron2's ``RandomCrop`` reads them: two
    fractions in (0, 1] of the image's height and width (``relative``; ``relative_range``: the
    smallest fractions), two positive pixel sizes (``absolute``), or the smallest and largest
    side in pixels (``absolute_range``). Other values fail inside detectron2 with an
    assertion or an empty image; here they are a one-line ``ValueError``."""
    if crop_type not in CROP_TYPES:
        raise ValueError(f"INPUT.CROP.TYPE={crop_type!r}: expected one of {', '.join(CROP_TYPES)}")
    if crop_type.startswith("relative"):
        valid = len(size) == 2 and all(isinstance(v, (int, float)) and 0 < v <= 1 for v in size)
        expected = "two fractions in (0, 1] of the image's height and width"
    else:
        valid = len(size) == 2 and all(isinstance(v, int) and v >= 1 for v in size)
        expected = "two positive sizes [height, width] in pixels"
        if crop_type == "absolute_range":
            valid = valid and size[0] <= size[1]
            expected = "the smallest and the largest crop side in pixels, [min, max] with 1 <= min <= max"
    if not valid:
        raise ValueError(f"INPUT.CROP.SIZE={size}: expected {expected} (INPUT.CROP.TYPE {crop_type!r})")


def build_train_augmentations(cfg) -> List[Union[T.Augmentation, T.Transform]]:
    """
    Augmentations of the official training recipe, in order: ResizeShortestEdge (no side below one
    pixel: :class:`ResizeShortestEdgeNonEmpty`), RandomCrop_CategoryAreaConstraint
    (``INPUT.CROP.ENABLED``), ColorAugSSDTransform (``INPUT.COLOR_AUG_SSD``), RandomFlip
    (``INPUT.RANDOM_FLIP``: horizontal / vertical / none). A value detectron2's augmentations
    would reject with a bare assertion is a ``ValueError`` naming its key.
    """
    sampling, sizes = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING, tuple(cfg.INPUT.MIN_SIZE_TRAIN)
    if sampling not in RESIZE_SAMPLING:
        raise ValueError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING={sampling!r}: expected one of {', '.join(RESIZE_SAMPLING)}")
    if not sizes or (sampling == "range" and len(sizes) != 2):
        expected = "two sizes (min, max)" if sampling == "range" else "one or more sizes"
        raise ValueError(f"INPUT.MIN_SIZE_TRAIN={sizes}: expected {expected} with "
                         f"INPUT.MIN_SIZE_TRAIN_SAMPLING={sampling!r}")
    if not all(isinstance(size, int) and size >= 0 for size in sizes):
        raise ValueError(f"INPUT.MIN_SIZE_TRAIN={sizes}: expected sizes of the shorter side in pixels "
                         "(0: keep the image's size)")
    if not isinstance(cfg.INPUT.MAX_SIZE_TRAIN, int) or cfg.INPUT.MAX_SIZE_TRAIN < 1:
        raise ValueError(f"INPUT.MAX_SIZE_TRAIN={cfg.INPUT.MAX_SIZE_TRAIN!r}: expected a positive longest side "
                         "in pixels")
    if cfg.INPUT.CROP.ENABLED:
        check_crop(cfg.INPUT.CROP.TYPE, list(cfg.INPUT.CROP.SIZE))
    augs: List[Union[T.Augmentation, T.Transform]] = [
        ResizeShortestEdgeNonEmpty(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                get_key(cfg, "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA"),
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    if get_key(cfg, "INPUT.COLOR_AUG_SSD"):
        augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
    flip = cfg.INPUT.RANDOM_FLIP
    if flip not in ("horizontal", "vertical", "none"):
        raise ValueError(f"INPUT.RANDOM_FLIP must be horizontal, vertical or none, got {flip!r}")
    if flip != "none":
        augs.append(T.RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical"))
    return augs



def read_dataset_image(file_name: str, format: Optional[str] = "RGB") -> np.ndarray:
    """An image of a dataset as ``uint8`` ``[H, W, 3]`` in ``format`` (``RGB`` or ``BGR``,
    ``INPUT.FORMAT``), decoded as the Python API decodes it
    (:func:`cat_seg.data.image_io.read_image_file`: EXIF orientation applied once, 16-bit
    images scaled to 8 bits, where detectron2's ``read_image`` clipped them to white). A file
    that cannot be read (missing, corrupt, truncated) is a :class:`DatasetFileError` naming it
    (PIL's messages do not always)."""
    try:
        image = read_image_file(file_name)
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetFileError(f"cannot read image {file_name}: {e}") from e
    return np.ascontiguousarray(image[:, :, ::-1]) if format == "BGR" else image


def read_dataset_label(file_name: str) -> np.ndarray:
    """A label map of a dataset (:func:`cat_seg.data.image_io.read_label_file`: its own values,
    turned by its EXIF orientation like its image); ``DatasetFileError`` naming the file when
    it cannot be read or is not single-channel."""
    try:
        label = read_label_file(file_name)
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetFileError(unreadable(file_name, e)) from e
    problem = form_problem(file_name, label)
    if problem:
        raise DatasetFileError(problem)
    return label


class MaskFormerSemanticDatasetMapper:
    """
    Train mapper: reads a dataset dict ``{"file_name", "sem_seg_file_name", ...}`` and returns
    a copy with

    * ``image``: uint8 tensor ``[3, H, W]`` in ``INPUT.FORMAT`` channel order,
    * ``sem_seg``: int64 tensor ``[H, W]`` (ignore pixels = ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``),

    after resize, category-area-constrained crop, SSD colour jitter, flip, and padding
    right/bottom up to a multiple of ``INPUT.SIZE_DIVISIBILITY`` (image value 128, label the
    ignore value). With the official crop 384 and SIZE_DIVISIBILITY 384 every sample is
    exactly 384x384. The label is read unchanged (8-bit PNG or 16-bit TIFF).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str,
        ignore_label: int,
        size_divisibility: int,
        num_classes: Optional[int] = None,
    ):
        """
        Args:
            is_train: must be True (this mapper is for training only).
            augmentations: applied to the image and label together.
            image_format: channel order of the image read (:func:`read_dataset_image`: "RGB" or "BGR").
            ignore_label: label value of ignored pixels, used for crop and label padding.
            size_divisibility: pad to a multiple of this; <= 0 disables padding.
            num_classes: the training vocabulary's size: a label value that is neither a class
                (``0..num_classes-1``) nor ``ignore_label`` is an error naming the file (the
                loss would fail on it without one); None: not checked.
        """
        self.is_train = is_train
        self.tfm_gens = augmentations
        self.augmentations = T.AugmentationList(augmentations)
        self.img_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        self.num_classes = num_classes
        mode = "training" if is_train else "inference"
        logger.info(f"[{type(self).__name__}] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        class_json = cfg.MODEL.SEM_SEG_HEAD.get("TRAIN_CLASS_JSON", "")  # a bare detectron2 cfg has none
        return {
            "is_train": is_train,
            "augmentations": build_train_augmentations(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "size_divisibility": get_key(cfg, "INPUT.SIZE_DIVISIBILITY"),
            "num_classes": len(read_class_json(class_json)) if class_json else None,
        }

    def _read_label(self, file_name: str) -> np.ndarray:
        label = read_dataset_label(file_name)
        problem = value_problem(file_name, label, self.num_classes, self.ignore_label,  # e.g. -1 for unlabeled
                                " of MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON")
        if problem:
            raise DatasetFileError(problem)
        # float64 like the official mapper: detectron2 then resizes it with torch "nearest"
        return label.astype(np.float64)

    def __call__(self, dataset_dict: dict) -> dict:
        if not self.is_train:
            raise RuntimeError(f"{type(self).__name__} is for training only (is_train=False)")
        if "sem_seg_file_name" not in dataset_dict:
            raise ValueError(
                f"dataset dict of {dataset_dict.get('file_name')} has no 'sem_seg_file_name'"
            )
        if "annotations" in dataset_dict:
            raise ValueError("semantic segmentation dataset dicts must not have 'annotations'")
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_dataset_image(dataset_dict["file_name"], self.img_format)
        utils.check_image_size(dataset_dict, image)
        label_file = dataset_dict.pop("sem_seg_file_name")
        sem_seg = self._read_label(label_file)
        problem = size_problem(label_file, sem_seg.shape, dataset_dict["file_name"], image.shape)
        if problem:
            raise DatasetFileError(problem)

        aug_input = T.AugInput(image, sem_seg=sem_seg)
        with warnings.catch_warnings():
            # fvcore's flips wrap the image in a tensor (torch.from_numpy) to flip it and never
            # write to it; after detectron2's resize (through PIL) the array is read-only, and
            # torch would warn once per process that writing to such a tensor is undefined
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
            self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg

        image = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        sem_seg = torch.as_tensor(sem_seg.astype(np.int64))
        if self.size_divisibility > 0:
            h, w = image.shape[-2:]
            d = self.size_divisibility
            pad_h, pad_w = (d - h % d) % d, (d - w % d) % d
            padding = [0, pad_w, 0, pad_h]  # left, right, top, bottom
            image = F.pad(image, padding, value=IMAGE_PAD_VALUE).contiguous()
            sem_seg = F.pad(sem_seg, padding, value=self.ignore_label).contiguous()

        dataset_dict["image"] = image
        dataset_dict["sem_seg"] = sem_seg
        return dataset_dict


SemanticTrainMapper = MaskFormerSemanticDatasetMapper


class InferenceDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper(cfg, is_train=False)`` for evaluation: ``image``
    ``[3, H', W']`` resized by the test augmentations, ``height``/``width`` of the original,
    the record's other fields. Differences: the image is decoded as the Python API and training
    decode it (:func:`read_dataset_image`), an image that cannot be read raises a
    :class:`DatasetFileError` naming the file, the resize never makes a side 0 pixels
    (:class:`ResizeShortestEdgeNonEmpty`), and the label is not read: the evaluator reads the
    ground truth from its file (detectron2's mapper read it, resized it and left it unused,
    and a label of another size than its image stopped it with a bare assertion)."""

    @classmethod
    def from_config(cls, cfg, is_train: bool = False):
        kwargs = super().from_config(cfg, is_train)
        kwargs["augmentations"] = [  # detectron2's test resize, never to an empty image
            ResizeShortestEdgeNonEmpty(aug.short_edge_length, aug.max_size, aug.sample_style, aug.interp)
            if type(aug) is T.ResizeShortestEdge else aug
            for aug in kwargs["augmentations"]
        ]
        return kwargs

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_dataset_image(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)  # sets height / width, the output size
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        dataset_dict.pop("sem_seg_file_name", None)
        dataset_dict.pop("annotations", None)
        return dataset_dict
