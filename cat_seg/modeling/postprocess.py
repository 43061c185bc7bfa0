"""Output stage of inference: per-class maps at the model resolution -> what the caller asked for.

The model predicts per-class maps at a low resolution (the cost-map stride / 4, or one such
map per sliding-window view). Bringing them to the output size is per class and linear up to
the sigmoid, so :class:`ClassMaps` keeps them at the model resolution and expands chunks of
classes on demand:

* :meth:`ClassMaps.labels_and_confidence`: ``argmax`` and ``max`` over classes of the
  full-resolution probabilities, streamed over class chunks with a running max. Every class
  goes through exactly the same float operations as in the all-classes computation (the
  resizes treat each class map on its own), so the labels and the confidence are
  bit-identical to ``probs.max(dim=0)`` of the full ``[T, H, W]`` tensor, ties included (the
  lowest class index wins), while memory stays ``O(chunk * H * W)``.
* :meth:`ClassMaps.probabilities`: the full ``[T, H, W]`` maps, only when asked for, in the
  dtype and on the device the caller chose (e.g. float16 on the CPU for a GPU model),
  filled chunk by chunk.

Classes dropped by the top-k pruning of large vocabularies have the constant logit
:data:`~cat_seg.modeling.cost_volume.PRUNED_CLASS_LOGIT` in every view, hence identical maps:
only the first of them is expanded and stands for all of them (it is also the one an argmax
over the full tensor would pick among them).

:class:`OutputRequest` says which of these a forward returns (``sem_seg`` probabilities for
detectron2's evaluator by default).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..utils import same_device
from .aggregator import resolve_class_chunk_size
from .cost_volume import PRUNED_CLASS_LOGIT
from .sliding_window import merge_views, resize_maps, sigmoid_maps

# At most this many float32 elements (256 MB) per class chunk at the output resolution:
# whatever the chunk setting, a 6000x4000 output is expanded 2 classes at a time.
MAX_CHUNK_ELEMENTS = 1 << 26
# Bound on the float rounding of a bilinear resize of probabilities (values in [0, 1]; a few
# float32 ulps): a class is only left out of the output-size argmax when it loses by more.
ROUNDING_MARGIN = 1e-5
# A request for classes in an order with more runs of consecutive rows than this is written
# with one gather per chunk instead of one write per run.
MAX_WRITE_RUNS = 8


def _runs(values: torch.Tensor) -> List[Tuple[int, int]]:
    """``(first, end)`` index ranges of the maximal runs of consecutive integers in ``values``
    (a CPU int64 vector): ``values[first:end]`` is ``v, v + 1, ...``."""
    if values.numel() == 0:
        return []
    breaks = ((values[1:] - values[:-1]) != 1).nonzero().squeeze(1).add(1).tolist()
    bounds = [0, *breaks, values.numel()]
    return list(zip(bounds[:-1], bounds[1:]))


def _block_reduce(maps: torch.Tensor, op) -> torch.Tensor:
    """``op`` (``torch.minimum`` or ``torch.maximum``) over every 2x2 block (stride 1) of
    ``maps [R, h, w]``: ``[R, h - 1, w - 1]`` (a side of length 1 is not reduced over)."""
    for dim in (1, 2):
        pairs = maps.shape[dim] - 1
        if pairs:
            maps = op(maps.narrow(dim, 0, pairs), maps.narrow(dim, 1, pairs))
    return maps


def _merges_row_by_row(device: torch.device) -> bool:
    """How :meth:`ClassMaps.labels_and_confidence` merges the output-size maps into the
    running best: each class on its own (compare, maximum, fill the label where it won) on a
    CPU, or one max/argmax per chunk of classes and one select on a GPU.

    Measured on a 2-core AMD EPYC (AVX512, native bf16; torch 2.14.1), per class: 0.16 ms at
    512x683 and 14 ms at 6000x4000 row by row, against 0.4-1 ms and 36-250 ms per chunk of 16
    to 1 classes (the max over a short class axis, its int64 indices, their gather and the
    select cost more than three elementwise passes). On a GPU the per-class passes are tiny kernels whose launches
    dominate: three per chunk instead of three per class.
    """
    return device.type == "cpu"


class ClassMaps:
    """Per-class maps of one image at the model resolution, expandable to the output size.

    Subclasses store ``data`` with classes on dimension ``class_dim`` and implement
    :meth:`_source` (the exact output-stage computation for some classes up to the last step,
    a bilinear resize to the output size, done by :meth:`_expand`). Only the distinct
    maps are kept ("rows", in class order): all live classes and the first pruned class,
    which stands for every pruned class.

    Args:
        data: the model output of this image, classes on ``class_dim``.
        class_dim: the class dimension of ``data``.
        out_size: ``(H, W)`` output size.
        chunk_setting: the model's class-chunk setting (see :func:`~cat_seg.modeling.aggregator.resolve_class_chunk_size`).
    """

    class_dim = 0

    def __init__(self, data: torch.Tensor, out_size: Sequence[int], chunk_setting: int = -1):
        self.num_classes = data.shape[self.class_dim]
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.chunk_setting = chunk_setting
        other_dims = tuple(d for d in range(data.dim()) if d != self.class_dim)
        pruned = (data == PRUNED_CLASS_LOGIT).all(dim=other_dims)  # [T]
        keep = ~pruned
        if pruned.any():
            keep[pruned.nonzero()[0, 0]] = True
        #: class index of each kept row ``[R]`` (ascending)
        self.row_classes = keep.nonzero().squeeze(1)
        #: row of each class ``[T]`` (the representative row for pruned classes)
        self.class_rows = torch.cumsum(keep.long(), 0) - 1
        if pruned.any():
            self.class_rows[pruned] = int(self.class_rows[pruned.nonzero()[0, 0]])
        self.data = data.index_select(self.class_dim, self.row_classes) if pruned.any() else data

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def num_rows(self) -> int:
        return int(self.row_classes.numel())

    def _source(self, rows: Union[slice, torch.Tensor]) -> torch.Tensor:
        """float32 ``[len(rows), h', w']`` maps of the stored rows ``rows`` just before the last
        step, the bilinear resize to the output size."""
        raise NotImplementedError

    def _source_size(self) -> Tuple[int, int]:
        raise NotImplementedError

    def _elements_per_class(self) -> int:
        """Elements allocated per class by :meth:`_source` (intermediate sizes included)."""
        raise NotImplementedError

    def _expand(self, rows: Union[slice, torch.Tensor], out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """float32 ``[len(rows), H, W]`` output-size probabilities of the stored rows ``rows``
        (written into ``out``, a contiguous float32 ``[len(rows), H, W]``, if given)."""
        return resize_maps(self._source(rows), self.out_size, out)

    def chunk_size(self, per_class: Optional[int] = None) -> int:
        """Rows expanded at once: the chunk setting, capped by :data:`MAX_CHUNK_ELEMENTS`
        (``per_class`` elements per row, default those of :meth:`_expand`)."""
        if per_class is None:
            per_class = self._elements_per_class() + self.out_size[0] * self.out_size[1]
        chunk = resolve_class_chunk_size(self.chunk_setting, self.device) or self.num_rows
        return max(1, min(chunk, MAX_CHUNK_ELEMENTS // max(per_class, 1)))

    def _chunks(self, rows: Optional[torch.Tensor] = None, expand: bool = True, out: Optional[torch.Tensor] = None):
        """``(start, maps)`` for chunks of ``rows`` (default all; ``maps`` of ``rows[start:...]``),
        at the output size (``expand``) or before the last resize. With ``out`` (``[num_rows,
        H, W]`` float32, all rows), each chunk is expanded into its slice of ``out``."""
        if out is not None and (rows is not None or not expand):
            raise ValueError("ClassMaps._chunks: out= takes every row, expanded")
        per_class = None if expand else 3 * self._elements_per_class()
        step = self.chunk_size(per_class)
        count = self.num_rows if rows is None else len(rows)
        with torch.autocast(self.device.type, enabled=False), torch.no_grad():
            for start in range(0, count, step):
                index = slice(start, min(start + step, count)) if rows is None else rows[start:start + step]
                if not expand:
                    yield start, self._source(index)
                else:
                    yield start, self._expand(index, None if out is None else out[index])

    def _candidate_sources(self):
        """``(rows, maps)`` chunks of the rows that can be the highest at some output pixel
        (``rows [r]`` ascending within and across chunks; ``maps [r, h', w']`` their maps
        before the last resize).

        Every output pixel of the last bilinear resize (align_corners False, any scale) is a
        convex combination of a 2x2 block of the source maps. A row whose maximum over every
        2x2 block is below (by :data:`ROUNDING_MARGIN`) the best minimum of another row over
        the same block can therefore never win nor tie; it is left out, which changes neither
        the labels nor the confidence.

        One pass computes the maps: a row already below the best minimum of the rows seen so
        far is dropped at once (the bound only rises), the others' maps are kept (up to
        :data:`MAX_CHUNK_ELEMENTS` elements; beyond that only their indices, and their maps
        are computed again) and checked against the final bound.
        """
        lower = None
        kept, kept_elements, survivors = [], 0, []
        for start, maps in self._chunks(expand=False):
            block_max = _block_reduce(maps, torch.maximum)
            best_min = _block_reduce(maps, torch.minimum).amax(dim=0)
            lower = best_min if lower is None else torch.maximum(lower, best_min)
            alive = (block_max > lower - ROUNDING_MARGIN).flatten(1).any(dim=1)
            rows = alive.nonzero().squeeze(1)
            survivors.append(rows + start)
            if kept is not None and len(rows):
                kept_elements += len(rows) * maps[0].numel()
                if kept_elements <= MAX_CHUNK_ELEMENTS:
                    kept.append((rows + start, maps[rows]))
                else:
                    kept = None
            del maps, block_max
        threshold = lower - ROUNDING_MARGIN
        if kept is None:  # too many to keep: their maps again, in chunks
            survivors = torch.cat(survivors)
            kept = ((survivors[start:start + len(maps)], maps)
                    for start, maps in self._chunks(survivors, expand=False))
        for rows, maps in kept:
            wins = (_block_reduce(maps, torch.maximum) > threshold).flatten(1).any(dim=1)
            if wins.all():
                yield rows, maps
            elif wins.any():
                yield rows[wins], maps[wins]

    def candidate_rows(self) -> torch.Tensor:
        """Rows that can be the highest at some output pixel ``[R']`` (ascending; see
        :meth:`_candidate_sources`)."""
        return torch.cat([rows for rows, _ in self._candidate_sources()])

    def _output_chunks(self):
        """``(rows, probs)``: output-size probabilities ``probs [r, H, W]`` of chunks of rows
        ``rows [r]`` (ascending within and across chunks), of every row that can be the
        highest at some output pixel: all rows when the output is no larger than the maps
        before the last resize, else the :meth:`_candidate_sources`."""
        source = self._source_size()
        if self.num_rows > 1 and self.out_size[0] * self.out_size[1] > source[0] * source[1]:
            step = self.chunk_size()
            with torch.autocast(self.device.type, enabled=False), torch.no_grad():
                for rows, maps in self._candidate_sources():
                    for first in range(0, len(rows), step):
                        yield rows[first:first + step], resize_maps(maps[first:first + step], self.out_size)
            return
        for start, probs in self._chunks():
            yield torch.arange(start, start + len(probs), device=self.device), probs

    def labels_and_confidence(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(labels [H, W] int64, confidence [H, W] float32)``: argmax and max over classes
        of the output-size probabilities (identical to ``probabilities().max(dim=0)``).

        When the output is larger than the maps before the last resize, only the
        :meth:`candidate_rows` are expanded to the output size.
        """
        best = labels = None
        row_by_row = _merges_row_by_row(self.device)
        for rows, probs in self._output_chunks():
            if row_by_row:  # strict comparisons: on ties the earlier (lower) row keeps the pixel
                for row, row_probs in zip(rows.tolist(), probs):
                    if best is None:
                        best, labels = row_probs.clone(), torch.full_like(row_probs, row, dtype=torch.long)
                        continue
                    better = torch.gt(row_probs, best)
                    torch.maximum(best, row_probs, out=best)
                    labels.masked_fill_(better, row)
                continue
            # the chunk's max and argmax in one pass (ties: the first maximal, i.e. lowest, row)
            chunk_best, chunk_labels = probs.max(dim=0)
            del probs
            chunk_labels = rows[chunk_labels]  # position in the chunk -> row
            if best is None:
                best, labels = chunk_best, chunk_labels
                continue
            better = torch.gt(chunk_best, best)  # strict: on ties the earlier (lower) chunk keeps the pixel
            torch.maximum(best, chunk_best, out=best)
            labels = torch.where(better, chunk_labels, labels)
        if self.num_rows != self.num_classes:  # row -> class index
            labels = self.row_classes[labels]
        return labels, best

    def probabilities(self, classes: Optional[Sequence[int]] = None, dtype: torch.dtype = torch.float32,
                      device: Union[None, str, torch.device] = None) -> torch.Tensor:
        """Output-size probabilities ``[len(classes), H, W]`` (default all ``T`` classes) in
        ``dtype`` on ``device`` (default: where the maps are), filled chunk by chunk."""
        device = self.device if device is None else torch.device(device)
        if classes is None and self.num_rows == self.num_classes:  # every class, no pruned class
            out = torch.empty((self.num_classes, *self.out_size), dtype=dtype, device=device)
            if dtype == torch.float32 and same_device(device, self.device):  # resized straight into ``out``
                for _ in self._chunks(out=out):  # each chunk is resized into its slice of ``out``
                    pass
                return out
            for start, probs in self._chunks():
                out[start:start + len(probs)] = probs.to(device=device, dtype=dtype)
            return out
        classes = torch.arange(self.num_classes) if classes is None else torch.as_tensor(classes, dtype=torch.long)
        out = torch.empty((len(classes), *self.out_size), dtype=dtype, device=device)
        wanted_rows = self.class_rows.cpu()[classes.cpu()]
        rows, inverse, counts = wanted_rows.unique(return_inverse=True, return_counts=True)  # rows sorted
        single = counts[inverse] == 1  # classes that are the only ones of their row
        every_row = len(rows) == self.num_rows  # then the chunks are slices of the stored rows
        for start, probs in self._chunks(None if every_row else rows.to(self.device)):
            probs = probs.to(device=device, dtype=dtype)
            in_chunk = (inverse >= start) & (inverse < start + len(probs))
            # every class that has a row of its own: one indexed write per run of consecutive
            # rows of the chunk (a slice of it, not a gathered copy), or one gather for many runs
            positions = (in_chunk & single).nonzero().squeeze(1)
            local = inverse[positions] - start  # row of each such class in the chunk
            runs = _runs(local)
            if len(runs) > MAX_WRITE_RUNS:
                out[positions.to(device)] = probs[local.to(device)]
            else:
                for first, end in runs:
                    row = int(local[first])
                    out[positions[first:end].to(device)] = probs[row:row + end - first]
            # a row shared by several classes (the pruned classes' representative): broadcast
            for offset in (counts[start:start + len(probs)] > 1).nonzero().squeeze(1).tolist():
                positions = (inverse == start + offset).nonzero().squeeze(1)
                out[positions.to(device)] = probs[offset]
        return out

    def to(self, device: Union[str, torch.device]) -> "ClassMaps":
        """Move the stored maps to ``device`` (in place; returns ``self``)."""
        self.data = self.data.to(device)
        self.row_classes = self.row_classes.to(device)
        self.class_rows = self.class_rows.to(device)
        return self


class WholeImageMaps(ClassMaps):
    """Whole-image inference output of one image.

    ``logits`` ``[T, h, w]`` were predicted for the image padded to ``padded_size`` and squashed
    to the CLIP resolution: sigmoid, resize to ``padded_size``, crop the ``image_size``
    (``[:H', :W']``, the padding removed), resize to ``out_size``. Without padding
    (``padded_size == image_size``) the maps are resized once, ``[h, w]`` to ``out_size``, as
    in the official code (two bilinear resizes are not one).
    """

    class_dim = 0

    def __init__(self, logits: torch.Tensor, padded_size: Sequence[int], image_size: Sequence[int],
                 out_size: Sequence[int], chunk_setting: int = -1):
        super().__init__(logits, out_size, chunk_setting)
        self.padded_size = tuple(int(s) for s in padded_size)
        self.image_size = tuple(int(s) for s in image_size)

    @property
    def _padded(self) -> bool:
        return self.padded_size != self.image_size

    def _elements_per_class(self) -> int:
        return self.data[0].numel() + (self.padded_size[0] * self.padded_size[1] if self._padded else 0)

    def _source_size(self) -> Tuple[int, int]:
        return self.image_size if self._padded else (int(self.data.shape[-2]), int(self.data.shape[-1]))

    def _source(self, rows: Union[slice, torch.Tensor]) -> torch.Tensor:
        logits = self.data[rows].float()
        probs = sigmoid_maps(logits, out=torch.empty_like(logits, memory_format=torch.contiguous_format))
        if not self._padded:
            return probs
        return resize_maps(probs, self.padded_size)[:, :self.image_size[0], :self.image_size[1]]


class SlidingWindowMaps(ClassMaps):
    """Sliding-window inference output of one image.

    ``logits`` ``[n + 1, T, h, w]``: the crops at ``boxes`` of the ``canvas``, then the global
    view; merged on the canvas by :func:`~cat_seg.modeling.sliding_window.merge_views`, then
    resized to ``out_size``.
    """

    class_dim = 1

    def __init__(self, logits: torch.Tensor, boxes: List[Tuple[int, int]], crop: int, canvas: Sequence[int],
                 out_size: Sequence[int], chunk_setting: int = -1):
        super().__init__(logits, out_size, chunk_setting)
        self.boxes = boxes
        self.crop = crop
        self.canvas = tuple(int(s) for s in canvas)

    def _elements_per_class(self) -> int:
        return self.data.shape[0] * self.crop * self.crop + 3 * self.canvas[0] * self.canvas[1]

    def _source_size(self) -> Tuple[int, int]:
        return self.canvas

    def _source(self, rows: Union[slice, torch.Tensor]) -> torch.Tensor:
        return merge_views(self.data[:, rows], self.boxes, self.crop, self.canvas)


@dataclass(frozen=True)
class OutputRequest:
    """What an inference forward returns per image (keys of its result dict).

    Attributes:
        probabilities: ``"sem_seg"``: ``[T, H, W]`` probabilities (what detectron2's
            ``SemSegEvaluator`` reads), in ``dtype`` on ``device`` (default: the model's).
        labels: ``"sem_seg_labels"`` ``[H, W]`` int64 (argmax over classes) and
            ``"sem_seg_confidence"`` ``[H, W]`` float32 (max probability), without
            materialising the ``[T, H, W]`` maps.
        maps: ``"sem_seg_maps"``: the :class:`ClassMaps` themselves (model resolution), to
            expand later.
    """

    probabilities: bool = True
    labels: bool = False
    maps: bool = False
    dtype: torch.dtype = torch.float32
    device: Optional[str] = None

    def outputs(self, maps: ClassMaps) -> Dict[str, object]:
        """The result dict of one image."""
        out: Dict[str, object] = {}
        if self.probabilities:
            out["sem_seg"] = maps.probabilities(dtype=self.dtype, device=self.device)
        if self.labels:
            if self.probabilities and self.dtype == torch.float32:
                confidence, labels = out["sem_seg"].max(dim=0)  # same values as streaming
            else:
                labels, confidence = maps.labels_and_confidence()
            out["sem_seg_labels"], out["sem_seg_confidence"] = labels, confidence
        if self.maps:
            out["sem_seg_maps"] = maps
        return out


#: The default request: ``sem_seg`` probabilities only (detectron2 convention).
PROBABILITIES = OutputRequest()
