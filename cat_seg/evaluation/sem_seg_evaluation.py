"""Semantic segmentation evaluators (spec 4.6), numpy >= 2 safe.

Works with any detectron2 build (the pip ``sal-detectron2`` ``SemSegEvaluator`` calls
``np.array(..., copy=False)``, which numpy 2 rejects). Numbers follow detectron2's
``SemSegEvaluator``: a ``(K+1) x (K+1)`` confusion matrix indexed ``[pred, gt]`` whose
last column collects ground-truth ``ignore_label`` pixels (never scored), per-class
IoU = TP / (GT + Pred - TP) and ACC = TP / GT, mIoU / mACC averaged over the classes that
occur in the ground truth, fwIoU weighted by GT frequency, pACC = sum(TP) / sum(GT); all x100.
"""
import csv
import json
import logging
import math
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

__all__ = [
    "SemSegEvaluator",
    "VOCbEvaluator",
    "build_evaluator",
    "compute_sem_seg_metrics",
    "load_sem_seg_gt",
]

RESULTS_JSON = "sem_seg_results.json"
PER_CLASS_CSV = "per_class_iou.csv"


def load_sem_seg_gt(file_name: str) -> np.ndarray:
    """
    Read a label map (PNG, or TIFF incl. 16-bit) as an int64 array ``[H, W]``.

    Uses PIL, falling back to OpenCV (``IMREAD_UNCHANGED``) for files PIL cannot decode.
    """
    try:
        with PathManager.open(file_name, "rb") as f:
            with Image.open(f) as img:
                array = np.asarray(img)
    except Exception as pil_error:  # noqa: BLE001 - retry with OpenCV, then report both
        array = None
        try:
            import cv2

            local = PathManager.get_local_path(file_name)
            array = cv2.imread(local, cv2.IMREAD_UNCHANGED)
        except Exception:  # noqa: BLE001
            array = None
        if array is None:
            raise ValueError(
                f"cannot read semantic segmentation GT file {file_name}: {pil_error}"
            ) from pil_error
    if array.ndim != 2:
        raise ValueError(
            f"semantic segmentation GT file {file_name} must be a single-channel label map, "
            f"got array of shape {array.shape}"
        )
    return array.astype(np.int64)


def compute_sem_seg_metrics(
    conf_matrix: np.ndarray,
    class_names: Sequence[str],
    seen_classes: Optional[Sequence[int]] = None,
    unseen_classes: Optional[Sequence[int]] = None,
) -> Dict[str, float]:
    """
    Metrics from a confusion matrix ``[K+1, K+1]`` indexed ``[pred, gt]`` (last index = the
    ignore bin). Returns detectron2's keys ``mIoU, fwIoU, IoU-<name>, mACC, pACC,
    ACC-<name>`` (x100; classes absent from GT get NaN), plus ``mIoU-seen``,
    ``mIoU-unseen`` and ``hIoU`` (harmonic mean) when both class-index lists are given.
    """
    num_classes = len(class_names)
    if conf_matrix.shape != (num_classes + 1, num_classes + 1):
        raise ValueError(
            f"confusion matrix shape {conf_matrix.shape} does not match {num_classes} classes + 1"
        )
    acc = np.full(num_classes, np.nan, dtype=np.float64)
    iou = np.full(num_classes, np.nan, dtype=np.float64)
    tp = conf_matrix.diagonal()[:-1].astype(np.float64)
    pos_gt = conf_matrix[:-1, :-1].sum(axis=0).astype(np.float64)
    pos_pred = conf_matrix[:-1, :-1].sum(axis=1).astype(np.float64)
    total_gt = pos_gt.sum()
    class_weights = pos_gt / total_gt if total_gt > 0 else np.zeros_like(pos_gt)
    valid = pos_gt > 0  # union >= pos_gt > 0, so IoU is defined wherever ACC is
    acc[valid] = tp[valid] / pos_gt[valid]
    union = pos_gt + pos_pred - tp
    iou[valid] = tp[valid] / union[valid]

    def _mean(values: np.ndarray) -> float:
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else float("nan")

    res: Dict[str, float] = {}
    res["mIoU"] = 100 * _mean(iou)
    if valid.any():
        res["fwIoU"] = 100 * float(np.sum(iou[valid] * class_weights[valid]))
    else:
        res["fwIoU"] = float("nan")
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = 100 * float(iou[i])
    res["mACC"] = 100 * _mean(acc)
    res["pACC"] = 100 * float(tp.sum() / total_gt) if total_gt > 0 else float("nan")
    for i, name in enumerate(class_names):
        res[f"ACC-{name}"] = 100 * float(acc[i])

    if seen_classes is not None and unseen_classes is not None:
        for split, indexes in (("seen", seen_classes), ("unseen", unseen_classes)):
            indexes = np.asarray(list(indexes), dtype=np.int64)
            if indexes.size and (indexes.min() < 0 or indexes.max() >= num_classes):
                raise ValueError(
                    f"metadata {split}_classes has an index outside 0..{num_classes - 1}"
                )
            res[f"mIoU-{split}"] = 100 * _mean(iou[indexes])
        seen, unseen = res["mIoU-seen"], res["mIoU-unseen"]
        if math.isnan(seen) or math.isnan(unseen):
            res["hIoU"] = float("nan")
        elif seen + unseen == 0:
            res["hIoU"] = 0.0
        else:
            res["hIoU"] = 2 * seen * unseen / (seen + unseen)
    return res


class SemSegEvaluator(DatasetEvaluator):
    """
    Semantic segmentation evaluator (same metrics and result keys as detectron2's).

    ``process(inputs, outputs)`` takes any number of images: ``inputs[i]["file_name"]``
    identifies the image (its GT file is the dataset record's ``sem_seg_file_name``, or
    ``inputs[i]["sem_seg_file_name"]`` if present) and ``outputs[i]["sem_seg"]`` is a score
    tensor ``[T, H, W]`` at the GT resolution; the prediction is its argmax over T.

    Metadata used (``MetadataCatalog.get(dataset_name)``): ``stuff_classes`` (K names),
    ``ignore_label``, optionally ``seen_classes`` / ``unseen_classes`` (lists of class
    indexes, adds ``mIoU-seen``, ``mIoU-unseen``, ``hIoU``).
    """

    def __init__(
        self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None
    ):
        """
        Args:
            dataset_name: registered dataset to evaluate.
            distributed: gather confusion matrices of all ranks; only the main process
                returns results (the others return None).
            output_dir: if given, ``sem_seg_results.json`` and ``per_class_iou.csv`` are
                written there.
        """
        self._logger = logging.getLogger(__name__)
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir

        meta = MetadataCatalog.get(dataset_name)
        if not hasattr(meta, "stuff_classes"):
            raise ValueError(f"metadata of dataset {dataset_name!r} has no 'stuff_classes'")
        if not hasattr(meta, "ignore_label"):
            raise ValueError(f"metadata of dataset {dataset_name!r} has no 'ignore_label'")
        self._class_names: List[str] = list(meta.stuff_classes)
        self._num_classes = len(self._class_names)
        self._ignore_label = int(meta.ignore_label)
        self._seen_classes = getattr(meta, "seen_classes", None)
        self._unseen_classes = getattr(meta, "unseen_classes", None)

        self._input_file_to_gt_file: Dict[str, str] = {}
        if dataset_name in DatasetCatalog.list():
            for record in DatasetCatalog.get(dataset_name):
                if "sem_seg_file_name" in record:
                    self._input_file_to_gt_file[record["file_name"]] = record["sem_seg_file_name"]
        self.reset()

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def reset(self):
        self._conf_matrix = np.zeros((self._num_classes + 1,) * 2, dtype=np.int64)
        self._num_images = 0

    # ------------------------------------------------------------------ per image
    def _gt_file(self, input: dict) -> str:
        if "sem_seg_file_name" in input:
            return input["sem_seg_file_name"]
        file_name = input.get("file_name")
        if file_name not in self._input_file_to_gt_file:
            raise KeyError(
                f"image {file_name!r} has no sem_seg_file_name in dataset {self._dataset_name!r}"
            )
        return self._input_file_to_gt_file[file_name]

    def _prediction(self, scores: torch.Tensor) -> np.ndarray:
        """``[T, H, W]`` scores -> int64 class indexes ``[H, W]`` in ``0..K-1``."""
        if scores.dim() != 3 or scores.shape[0] != self._num_classes:
            raise ValueError(
                f"output['sem_seg'] must have shape [{self._num_classes}, H, W] for dataset "
                f"{self._dataset_name!r}, got {tuple(scores.shape)}"
            )
        return scores.argmax(dim=0).cpu().numpy().astype(np.int64)

    def _gt(self, gt_file: str) -> np.ndarray:
        """GT label map ``[H, W]`` with ignore pixels moved to index K; values checked."""
        gt = load_sem_seg_gt(gt_file)
        ignore = gt == self._ignore_label
        bad = (~ignore) & ((gt < 0) | (gt >= self._num_classes))
        if bad.any():
            value = int(gt[bad][0])
            raise ValueError(
                f"GT file {gt_file} has label value {value} outside 0..{self._num_classes - 1} "
                f"(ignore_label {self._ignore_label}) of dataset {self._dataset_name!r}"
            )
        gt[ignore] = self._num_classes
        return gt

    def process(self, inputs, outputs):
        """
        Args:
            inputs: list of dataset dicts (``file_name``, optionally ``sem_seg_file_name``).
            outputs: list of dicts with ``"sem_seg"``: scores ``[T, H, W]``.
        """
        if len(inputs) != len(outputs):
            raise ValueError(f"process() got {len(inputs)} inputs but {len(outputs)} outputs")
        n = self._num_classes + 1
        for input, output in zip(inputs, outputs):
            gt_file = self._gt_file(input)
            pred = self._prediction(output["sem_seg"])
            gt = self._gt(gt_file)
            if pred.shape != gt.shape:
                raise ValueError(
                    f"prediction of shape {pred.shape} does not match GT {gt_file} "
                    f"of shape {gt.shape}"
                )
            self._conf_matrix += np.bincount(
                n * pred.reshape(-1) + gt.reshape(-1), minlength=n * n
            ).reshape(n, n)
            self._num_images += 1

    # ------------------------------------------------------------------ reduce
    def evaluate(self):
        """
        Returns ``OrderedDict(sem_seg={metric: value})`` on the main process, None elsewhere.
        """
        conf_matrix, num_images = self._conf_matrix, self._num_images
        if self._distributed:
            comm.synchronize()
            gathered = comm.all_gather((self._conf_matrix, self._num_images))
            if not comm.is_main_process():
                return None
            conf_matrix = np.sum([m for m, _ in gathered], axis=0).astype(np.int64)
            num_images = sum(k for _, k in gathered)
        if num_images == 0:
            self._logger.warning(f"SemSegEvaluator on {self._dataset_name}: no images processed")

        res = compute_sem_seg_metrics(
            conf_matrix, self._class_names, self._seen_classes, self._unseen_classes
        )
        if self._output_dir:
            self._write_outputs(res, conf_matrix, num_images)
        results = OrderedDict({"sem_seg": res})
        self._logger.info(results)
        return results

    def _write_outputs(self, res: Dict[str, float], conf_matrix: np.ndarray, num_images: int):
        PathManager.mkdirs(self._output_dir)
        summary = {
            k: _json_float(v) for k, v in res.items() if not k.startswith(("IoU-", "ACC-"))
        }
        payload = {
            "dataset": self._dataset_name,
            "num_images": int(num_images),
            "num_classes": self._num_classes,
            "metrics": summary,
            "per_class": {
                name: {
                    "IoU": _json_float(res[f"IoU-{name}"]),
                    "ACC": _json_float(res[f"ACC-{name}"]),
                }
                for name in self._class_names
            },
        }
        with PathManager.open(os.path.join(self._output_dir, RESULTS_JSON), "w") as f:
            json.dump(payload, f, indent=2)
        gt_pixels = conf_matrix[:-1, :-1].sum(axis=0)
        with PathManager.open(os.path.join(self._output_dir, PER_CLASS_CSV), "w") as f:
            writer = csv.writer(f)
            writer.writerow(["class", "IoU", "ACC", "gt_pixels"])
            for i, name in enumerate(self._class_names):
                iou, acc = _csv_float(res[f"IoU-{name}"]), _csv_float(res[f"ACC-{name}"])
                writer.writerow([name, iou, acc, int(gt_pixels[i])])


class VOCbEvaluator(SemSegEvaluator):
    """
    Pascal VOC-20 with background (``evaluator_type`` ``sem_seg_background``): K = 21 GT
    classes (20 VOC + background at index 20); the prediction may have any number T of
    channels (voc20b.json has 59 prompts) and every predicted index >= 20 counts as
    background (20).
    """

    BACKGROUND = 20

    def __init__(
        self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None
    ):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        if self._num_classes != self.BACKGROUND + 1:
            raise ValueError(
                f"VOCbEvaluator needs {self.BACKGROUND + 1} stuff_classes (20 VOC + background) "
                f"in the metadata of {dataset_name!r}, got {self._num_classes}"
            )

    def _prediction(self, scores: torch.Tensor) -> np.ndarray:
        if scores.dim() != 3:
            raise ValueError(
                f"output['sem_seg'] must have shape [T, H, W], got {tuple(scores.shape)}"
            )
        pred = scores.argmax(dim=0).cpu().numpy().astype(np.int64)
        pred[pred >= self.BACKGROUND] = self.BACKGROUND
        return pred


def _json_float(value: float):
    return None if value is None or math.isnan(value) else float(value)


def _csv_float(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


_EVALUATORS = {"sem_seg": SemSegEvaluator, "sem_seg_background": VOCbEvaluator}


def build_evaluator(
    cfg, dataset_name: str, output_folder: Optional[str] = None
) -> DatasetEvaluator:
    """
    Evaluator for ``dataset_name`` chosen by its metadata ``evaluator_type``
    (``sem_seg`` -> :class:`SemSegEvaluator`, ``sem_seg_background`` -> :class:`VOCbEvaluator`).
    ``output_folder`` defaults to ``cfg.OUTPUT_DIR/inference``.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
    if evaluator_type not in _EVALUATORS:
        raise NotImplementedError(
            f"no evaluator for dataset {dataset_name!r} with evaluator_type {evaluator_type!r} "
            f"(supported: {sorted(_EVALUATORS)})"
        )
    evaluator_class = _EVALUATORS[evaluator_type]
    return evaluator_class(dataset_name, distributed=True, output_dir=output_folder)
