"""Semantic segmentation evaluators: detectron2's ``SemSegEvaluator`` plus what CAT-Seg needs.

The metrics (confusion matrix ``[pred, gt]`` with an ignore bin, mIoU, fwIoU, mACC, pACC and
the per-class ``IoU-<name>`` / ``ACC-<name>``) are computed by detectron2. This module adds:

* a ground-truth reader that works with numpy >= 2 (detectron2's default reader calls
  ``np.array(..., copy=False)``, which numpy 2 rejects) and reads 16-bit TIFF label maps
  (ADE20K-847, Pascal Context-459), passed as detectron2's ``sem_seg_loading_fn``;
* predictions given as labels ``output["sem_seg_labels"]`` ``[H, W]`` (what the model returns
  during evaluation, without the ``[T, H, W]`` probabilities) or as scores ``output["sem_seg"]``;
* checks with one-line messages (score channels vs. classes, label values, prediction vs. GT
  size, GT label values outside the classes and ``ignore_label``);
* ``mIoU-seen``, ``mIoU-unseen`` and their harmonic mean ``hIoU`` when the dataset metadata
  lists ``seen_classes`` / ``unseen_classes``;
* ``sem_seg_results.json`` and ``per_class_iou.csv`` in ``output_dir``;
* the evaluation's throughput in images/s (logged, and in ``sem_seg_results.json``), measured
  from the end of the first ``process()`` call, i.e. without the first batch, whose forward
  pays for compilation and CUDA-graph capture;
* :class:`VOCbEvaluator`, which scores Pascal VOC-20 with background (see
  ``docs/datasets.md``).

Boundary IoU (computed by recent detectron2 versions) is turned off: the benchmarks of the
paper report region IoU only, and it would double the evaluation time on small datasets.
"""
import csv
import json
import logging
import math
import numbers
import os
import time
from typing import Dict, Optional

import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation import SemSegEvaluator as _D2SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..data.datasets.errors import DatasetError, DatasetFileError
from ..data.dataset_mappers.semantic_mapper import read_dataset_label
from ..data.datasets.label_check import value_problem
from ..utils import atomic_write

__all__ = ["SemSegEvaluator", "VOCbEvaluator", "build_evaluator", "load_sem_seg_gt"]

RESULTS_JSON = "sem_seg_results.json"
PER_CLASS_CSV = "per_class_iou.csv"
# written by detectron2's SemSegEvaluator.evaluate
D2_OUTPUTS = ("sem_seg_predictions.json", "sem_seg_evaluation.pth")

logger = logging.getLogger(__name__)


def _plain(value):
    """numpy scalars (also inside dicts) as Python numbers."""
    if isinstance(value, dict):
        return type(value)((k, _plain(v)) for k, v in value.items())
    return value.item() if isinstance(value, np.generic) else value


class _PlainNumbersLog(logging.LoggerAdapter):
    """detectron2's evaluator logs its results dict, whose numpy-2 scalars would print as
    ``np.float64(61.18)``: this adapter of its logger prints them as ``61.18``."""

    def process(self, msg, kwargs):
        return _plain(msg), kwargs

    warn = logging.LoggerAdapter.warning  # detectron2 calls the old name


def load_sem_seg_gt(file_name: str, dtype=np.int64) -> np.ndarray:
    """Read a label map (PNG, or TIFF incl. 16-bit) as an array ``[H, W]`` of ``dtype``.

    Same call signature as detectron2's ``load_image_into_numpy_array`` (usable as its
    ``sem_seg_loading_fn``), but always copies, so it works with numpy >= 2. Decoded as the
    training mapper decodes labels (:func:`cat_seg.data.image_io.read_label_file`: turned by
    an EXIF orientation tag like its image), with the same errors: a file that does not decode
    (a truncated one, too) is refused rather than scored with what a lenient decoder makes of it.
    """
    return np.array(read_dataset_label(PathManager.get_local_path(file_name)), dtype=dtype)


class SemSegEvaluator(_D2SemSegEvaluator):
    """detectron2's ``SemSegEvaluator`` (same metrics and result keys) for CAT-Seg.

    ``process(inputs, outputs)`` takes any number of images: ``inputs[i]["file_name"]``
    identifies the image (its GT file is the dataset record's ``sem_seg_file_name``, or
    ``inputs[i]["sem_seg_file_name"]`` if present). The prediction at the GT resolution is
    ``outputs[i]["sem_seg_labels"]`` (int ``[H, W]``, class indexes in ``0..K-1``) when
    present, else the argmax over K of the scores ``outputs[i]["sem_seg"]`` ``[K, H, W]``
    (K = number of ``stuff_classes``). The model returns the labels without materialising
    the ``[K, H, W]`` maps (``OutputRequest(probabilities=False, labels=True)`` in
    ``cat_seg.modeling.postprocess``); both give the same metrics.

    Metadata used (``MetadataCatalog.get(dataset_name)``): ``stuff_classes`` (K names),
    ``ignore_label``, optionally ``seen_classes`` / ``unseen_classes`` (lists of class
    indexes; adds ``mIoU-seen``, ``mIoU-unseen``, ``hIoU``).
    """

    def __init__(
        self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None
    ):
        """
        Args:
            dataset_name: registered dataset to evaluate.
            distributed: gather confusion matrices of all ranks; only the main process
                returns results (the others return None).
            output_dir: if given, detectron2's files plus ``sem_seg_results.json`` and
                ``per_class_iou.csv`` are written there.
        """
        meta = MetadataCatalog.get(dataset_name)
        problem = metadata_problem(dataset_name)
        if problem:
            raise DatasetError(problem)
        super().__init__(
            dataset_name, distributed=distributed, output_dir=output_dir,
            sem_seg_loading_fn=self._load_gt,
        )
        self._class_names = list(self._class_names)
        self._ignore_label = int(self._ignore_label)
        self._logger = _PlainNumbersLog(self._logger, {})
        self._compute_boundary_iou = False
        self._seen_classes = getattr(meta, "seen_classes", None)
        self._unseen_classes = getattr(meta, "unseen_classes", None)
        self._expected_gt = None  # [H, W] of the prediction of the image being processed
        self._image_file = None  # that image
        super().reset()
        self._reset_counts()

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def reset(self):
        """Start an evaluation (``inference_on_dataset`` calls it first): counts zeroed, and the
        result files a previous evaluation wrote into ``output_dir`` removed (main process), so
        that a run that fails leaves none that look like its own. (Constructing an evaluator
        removes nothing.)"""
        super().reset()
        if self._output_dir and comm.is_main_process():
            for name in (RESULTS_JSON, PER_CLASS_CSV, *D2_OUTPUTS):
                path = os.path.join(self._output_dir, name)
                if PathManager.exists(path):
                    PathManager.rm(path)
        self._reset_counts()

    def _reset_counts(self):
        self._num_images = 0
        # throughput: the images of the process() calls after the first one, and the seconds
        # from the end of the first call to the end of the last (data loading, forward, scoring)
        self._timer_start = None
        self._timed_images = 0
        self._timed_seconds = 0.0

    # ------------------------------------------------------------------ per image
    def _load_gt(self, file_name: str, dtype=int) -> np.ndarray:
        """``sem_seg_loading_fn``: the GT ``[H, W]``, checked against the classes and the
        size of the prediction being scored."""
        gt = load_sem_seg_gt(file_name, dtype=np.int64)
        problem = value_problem(file_name, gt, self._num_classes, self._ignore_label,
                                f" of dataset {self._dataset_name!r}")
        if problem:
            raise DatasetFileError(problem)
        if self._expected_gt is not None and gt.shape != self._expected_gt:
            raise DatasetFileError(
                f"prediction of shape {self._expected_gt} does not match GT {file_name} "
                f"of shape {gt.shape} (a label map must have its image's size; the image: {self._image_file})"
            )
        return gt.astype(dtype, copy=False)

    def _labels_from_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Predicted classes ``[H, W]`` of the scores ``[K, H, W]`` (argmax; ties: lowest index)."""
        if scores.dim() != 3 or scores.shape[0] != self._num_classes:
            raise ValueError(
                f"output['sem_seg'] must have shape [{self._num_classes}, H, W] for dataset "
                f"{self._dataset_name!r}, got {tuple(scores.shape)}"
            )
        return scores.argmax(dim=0)

    def _map_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Predicted classes ``[H, W]`` of the model's labels ``[H, W]``: the same labels,
        checked to be in ``0..K-1``."""
        self._check_label_range(labels, self._num_classes)
        return labels

    def _check_label_range(self, labels: torch.Tensor, num_channels: Optional[int]):
        if labels.dim() != 2 or labels.dtype.is_floating_point or labels.dtype.is_complex \
                or labels.dtype == torch.bool:
            raise ValueError(
                f"output['sem_seg_labels'] must be an integer tensor [H, W], got "
                f"{labels.dtype} of shape {tuple(labels.shape)}"
            )
        if labels.numel() == 0:
            return
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (num_channels is not None and high >= num_channels):
            expected = f"0..{num_channels - 1}" if num_channels is not None else ">= 0"
            raise ValueError(
                f"output['sem_seg_labels'] has class index {low if low < 0 else high} outside "
                f"{expected} for dataset {self._dataset_name!r}"
            )

    def predicted_labels(self, output: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The predicted classes ``[H, W]`` (values ``0..K-1``) of one model output dict:
        its ``"sem_seg_labels"`` if present, else computed from its ``"sem_seg"`` scores."""
        if "sem_seg_labels" in output:
            return self._map_labels(output["sem_seg_labels"])
        if "sem_seg" not in output:
            raise KeyError("model output has neither 'sem_seg_labels' nor 'sem_seg'")
        return self._labels_from_scores(output["sem_seg"])

    def process(self, inputs, outputs):
        """
        Args:
            inputs: list of dataset dicts (``file_name``, optionally ``sem_seg_file_name``).
            outputs: list of dicts with ``"sem_seg_labels"``: classes ``[H, W]``, or
                ``"sem_seg"``: scores ``[T, H, W]``.
        """
        if len(inputs) != len(outputs):
            raise ValueError(f"process() got {len(inputs)} inputs but {len(outputs)} outputs")
        gt_files = self.input_file_to_gt_file
        for input, output in zip(inputs, outputs):
            file_name = input["file_name"]
            if "sem_seg_file_name" in input:  # this image's GT, for this call only
                self.input_file_to_gt_file = {file_name: input["sem_seg_file_name"]}
            elif file_name not in gt_files:
                raise KeyError(
                    f"image {file_name!r} has no sem_seg_file_name in dataset "
                    f"{self._dataset_name!r}"
                )
            labels = self.predicted_labels(output)
            # one image per call so that _load_gt can check the GT size against this one
            self._expected_gt, self._image_file = tuple(labels.shape), file_name
            try:
                super().process([input], [{"sem_seg": _ArgmaxIs(labels)}])
            finally:
                self._expected_gt = self._image_file = None
                self.input_file_to_gt_file = gt_files
            self._num_images += 1
        now = time.perf_counter()
        if self._timer_start is None:
            self._timer_start = now
        else:
            self._timed_images += len(inputs)
            self._timed_seconds = now - self._timer_start

    def _counts(self):
        """``(images, timed images, timed seconds)`` of this process (gathered across ranks)."""
        return self._num_images, self._timed_images, self._timed_seconds

    # ------------------------------------------------------------------ reduce
    def evaluate(self):
        """``OrderedDict(sem_seg={metric: value})`` on the main process, None elsewhere."""
        counts = comm.all_gather(self._counts()) if self._distributed else [self._counts()]
        num_images = sum(c[0] for c in counts)
        timed_images, seconds = sum(c[1] for c in counts), max(c[2] for c in counts)
        throughput = None
        if timed_images and seconds > 0:  # the ranks run at the same time: images / longest time
            throughput = {"images_per_s": timed_images / seconds, "images": timed_images, "seconds": seconds}
        results = super().evaluate()
        if results is None:
            return None
        res = results["sem_seg"]
        if self._seen_classes is not None and self._unseen_classes is not None:
            split = self._seen_unseen_metrics(res)
            res.update(split)
            # detectron2's copypaste lines (print_csv_format) leave out every metric with a "-"
            # in its name (per-class IoU-<class>), mIoU-seen and mIoU-unseen with them
            logger.info(f"copypaste: Task: sem_seg, seen / unseen classes of {self._dataset_name}")
            logger.info("copypaste: " + ",".join(split))
            logger.info("copypaste: " + ",".join(f"{value:.4f}" for value in split.values()))
        if throughput is not None:
            logger.info(
                f"Evaluation throughput on {self._dataset_name}: {throughput['images_per_s']:.2f} images/s "
                f"({timed_images} images in {seconds:.2f} s, without the first batch: compilation, CUDA graphs)"
            )
        if self._output_dir:
            self._write_outputs(res, num_images, throughput)
        return results

    def _seen_unseen_metrics(self, res: Dict[str, float]) -> Dict[str, float]:
        """``mIoU-seen``, ``mIoU-unseen`` (over the classes present in GT) and ``hIoU``."""
        iou = np.array([res[f"IoU-{name}"] for name in self._class_names], dtype=np.float64)
        out = {}
        for split, indexes in (("seen", self._seen_classes), ("unseen", self._unseen_classes)):
            indexes = np.asarray(list(indexes), dtype=np.int64)  # checked by metadata_problem
            values = iou[indexes][~np.isnan(iou[indexes])]
            out[f"mIoU-{split}"] = float(values.mean()) if values.size else float("nan")
        seen, unseen = out["mIoU-seen"], out["mIoU-unseen"]
        if math.isnan(seen) or math.isnan(unseen):
            out["hIoU"] = float("nan")
        else:
            out["hIoU"] = 0.0 if seen + unseen == 0 else 2 * seen * unseen / (seen + unseen)
        return out

    def _write_outputs(self, res: Dict[str, float], num_images: int, throughput: Optional[Dict[str, float]] = None):
        PathManager.mkdirs(self._output_dir)
        summary = {
            k: _json_float(v) for k, v in res.items() if not k.startswith(("IoU-", "ACC-"))
        }
        payload = {
            "dataset": self._dataset_name,
            "num_images": int(num_images),
            "num_classes": self._num_classes,
            "metrics": summary,
            # images/s after the first batch (null with a single batch)
            "throughput": None if throughput is None else {
                "images_per_s": round(throughput["images_per_s"], 3),
                "images": int(throughput["images"]),
                "seconds": round(throughput["seconds"], 3),
            },
            "per_class": {
                name: {
                    "IoU": _json_float(res[f"IoU-{name}"]),
                    "ACC": _json_float(res[f"ACC-{name}"]),
                }
                for name in self._class_names
            },
        }
        # each file appears whole or not at all (a crash or kill while writing leaves no partial file)
        atomic_write(os.path.join(self._output_dir, RESULTS_JSON), lambda f: json.dump(payload, f, indent=2),
                     mode="w", durable=False)
        gt_pixels = self._conf_matrix[:-1, :-1].sum(axis=0)

        def write_csv(f):
            writer = csv.writer(f)
            writer.writerow(["class", "IoU", "ACC", "gt_pixels"])
            for i, name in enumerate(self._class_names):
                iou, acc = _csv_float(res[f"IoU-{name}"]), _csv_float(res[f"ACC-{name}"])
                writer.writerow([name, iou, acc, int(gt_pixels[i])])

        atomic_write(os.path.join(self._output_dir, PER_CLASS_CSV), write_csv, mode="w", durable=False)


class VOCbEvaluator(SemSegEvaluator):
    """Scoring with a background class (``evaluator_type`` ``sem_seg_background``; Pascal
    VOC-20b).

    K ground-truth classes whose last (index K - 1; 20 for VOC-20b, named ``background`` in
    the catalog) stands for everything else; the prediction may have any number T >= K of
    channels (``voc20b.json`` has 59 prompts: the 20 VOC classes and 39 background concepts),
    and every predicted index >= K - 1 counts as background.
    """

    def __init__(
        self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None
    ):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        if self._num_classes < 2:
            raise ValueError(
                f"evaluator_type sem_seg_background needs the classes of {dataset_name!r} and a last one, "
                f"the background (every prediction past the others counts as it); got stuff_classes "
                f"{list(self._class_names)}"
            )
        self.background = self._num_classes - 1  # the index of the background class

    def _labels_from_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores ``[T, H, W]`` -> classes ``[H, W]``: the argmax over T, indexes >= K - 1
        mapped to background (K - 1). On ties the lowest index wins, so this is also the argmax
        over the K - 1 classes plus one background channel holding the max of channels K-1..T-1."""
        if scores.dim() != 3 or scores.shape[0] <= self.background:
            raise ValueError(
                f"output['sem_seg'] must have shape [T, H, W] with T > {self.background}, "
                f"got {tuple(scores.shape)}"
            )
        return scores.argmax(dim=0).clamp_(max=self.background)

    def _map_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The model's labels ``[H, W]`` (indexes into its T >= K prompts) -> classes ``[H, W]``,
        indexes >= K - 1 mapped to background (K - 1), as for the scores."""
        self._check_label_range(labels, None)
        return labels.clamp(max=self.background)


class _ArgmaxIs:
    """Stands for ``output["sem_seg"]`` in detectron2's ``SemSegEvaluator.process``, which
    reads the prediction as ``output["sem_seg"].argmax(dim=0)``: hands it labels ``[H, W]``
    already computed, so that detectron2's confusion-matrix update stays the one
    implementation for both the labels and the scores of a model output."""

    def __init__(self, labels: torch.Tensor):
        self.labels = labels

    def argmax(self, dim: int = 0) -> torch.Tensor:
        if dim != 0:
            raise ValueError(f"the class dimension is 0, got argmax(dim={dim})")
        return self.labels


def _json_float(value: float):
    return None if value is None or math.isnan(value) else float(value)


def _csv_float(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


_EVALUATORS = {"sem_seg": SemSegEvaluator, "sem_seg_background": VOCbEvaluator}


def evaluator_type_of(dataset_name: str) -> str:
    """The metadata ``evaluator_type`` of ``dataset_name``; ``sem_seg`` for a dataset registered
    without one (semantic segmentation, what cat-seg evaluates)."""
    return getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None) or "sem_seg"


def metadata_problem(dataset_name: str) -> Optional[str]:
    """What the evaluator's metadata of ``dataset_name`` lacks or has wrong (one line), or None:
    ``stuff_classes`` (a non-empty list of names), ``ignore_label`` (an integer), and where
    given ``seen_classes`` / ``unseen_classes`` (both, lists of class indexes, disjoint)."""
    meta = MetadataCatalog.get(dataset_name)
    where = f"metadata of dataset {dataset_name!r}"
    classes = getattr(meta, "stuff_classes", None)
    if not classes or isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        return (f"{where}: stuff_classes is {classes!r}; expected the list of class names (MetadataCatalog.get(name)"
                ".set(stuff_classes=[...]), or register with cat_seg.data.datasets.register_sem_seg_folder)")
    ignore = getattr(meta, "ignore_label", None)
    if isinstance(ignore, bool) or not isinstance(ignore, numbers.Integral):
        return f"{where}: ignore_label is {ignore!r}; expected the integer label value of ignored pixels (e.g. 255)"
    seen, unseen = getattr(meta, "seen_classes", None), getattr(meta, "unseen_classes", None)
    if (seen is None) != (unseen is None):
        return f"{where}: seen_classes and unseen_classes go together; only one is set"
    if seen is None:
        return None
    for split, indexes in (("seen_classes", seen), ("unseen_classes", unseen)):
        if isinstance(indexes, str) or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool)
                                               and 0 <= i < len(classes) for i in indexes):
            return (f"{where}: {split} is {indexes!r}; expected a list of class indexes 0..{len(classes) - 1} "
                    "(positions in stuff_classes, not names)")
    both = sorted(set(seen) & set(unseen))
    if both:
        return f"{where}: class(es) {both} are in both seen_classes and unseen_classes"
    return None


def evaluator_problem(dataset_name: str) -> Optional[str]:
    """Why cat-seg cannot evaluate ``dataset_name`` (one line), or None: no evaluator for its
    ``evaluator_type``, or its metadata lacks what the evaluator reads
    (:func:`metadata_problem`)."""
    evaluator_type = evaluator_type_of(dataset_name)
    if evaluator_type not in _EVALUATORS:
        return (f"no evaluator for dataset {dataset_name!r} with evaluator_type {evaluator_type!r} "
                f"(supported: {', '.join(sorted(_EVALUATORS))})")
    return metadata_problem(dataset_name)


def build_evaluator(
    cfg, dataset_name: str, output_folder: Optional[str] = None
) -> DatasetEvaluator:
    """
    Evaluator for ``dataset_name`` chosen by its metadata ``evaluator_type``
    (:func:`evaluator_type_of`: ``sem_seg`` -> :class:`SemSegEvaluator`,
    ``sem_seg_background`` -> :class:`VOCbEvaluator`). ``output_folder`` defaults to
    ``cfg.OUTPUT_DIR/inference/<dataset_name>`` (one folder per dataset: each evaluator writes
    ``sem_seg_results.json`` and ``per_class_iou.csv`` there).
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    problem = evaluator_problem(dataset_name)
    if problem:
        raise NotImplementedError(problem)
    return _EVALUATORS[evaluator_type_of(dataset_name)](dataset_name, distributed=True, output_dir=output_folder)
