"""Sliding-window geometry of the evaluation protocol and the merge of the views on the canvas.

The official protocol resizes each test image to a square canvas (640x640), cuts crops of
384 with stride ``int(384 * (1 - 0.333)) = 256`` (4 crops), adds a global view, averages the
overlapping crop predictions (coverage counts 1/2/4) and averages that 50/50 with the global
prediction.
"""
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def resize_maps(maps: torch.Tensor, size: Sequence[int], out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bilinear resize (align_corners False) of every map of ``maps [..., h, w]`` to ``size``.

    Returns ``[..., H, W]``, written into ``out`` (contiguous, that shape) if given. Each map
    is resized as an image of its own (``[maps, 1, h, w]``): torch's CPU kernel picks its
    vectorisation by the number of channels and the output size, with results that differ in
    the last bit, so only this way does resizing the classes a chunk at a time give the same
    bits as all at once (at up to about 10% more time for the resizes on a CPU;
    docs/benchmarks.md, "Large images").
    """
    size = (int(size[0]), int(size[1]))
    planes = maps.reshape(-1, 1, *maps.shape[-2:])
    if out is None:
        resized = F.interpolate(planes, size=size, mode="bilinear", align_corners=False)
        return resized.view(*maps.shape[:-2], *size)
    # F.interpolate has no ``out``; its aten op (the same kernel) writes into the caller's tensor
    torch.ops.aten.upsample_bilinear2d.out(planes, size, False, None, None, out=out.view(-1, 1, *size))
    return out


def sigmoid_maps(maps: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sigmoid of every map of ``maps [..., h, w]``, into ``out`` (contiguous, that shape;
    default: in place, ``maps`` contiguous), each map's bits independent of the other maps in
    the call.

    torch's CPU kernel computes runs of 32 elements with a vectorised exp and the rest (the
    end of the tensor, the ends of each thread's range) with a scalar one, which rounds
    differently in the last bit; so in one call over a chunk of classes, where a class map
    falls decides some of its bits: chunking would change them, and two classes with equal
    logits could get different probabilities (the lowest-class tie rule would not hold). On a
    CPU each map is therefore its own call (the same positions for every map); on other
    devices (CUDA computes every element alike) it is one call.
    """
    if out is None:
        if not maps.is_contiguous():
            raise ValueError("sigmoid_maps in place needs contiguous maps; pass out=")
        out = maps
    if maps.device.type != "cpu":
        return torch.sigmoid(maps, out=out)
    for source, target in zip(maps.reshape(-1, *maps.shape[-2:]), out.view(-1, *out.shape[-2:])):
        torch.sigmoid(source, out=target)
    return out


def window_stride(crop: int, overlap: float) -> int:
    """Stride between crops: ``int(crop * (1 - overlap))`` (256 for 384 / 0.333)."""
    stride = int(crop * (1 - overlap))
    if stride <= 0:
        raise ValueError(f"TEST.SLIDING_WINDOW_OVERLAP={overlap} leaves no stride between crops of "
                         f"TEST.SLIDING_WINDOW_CROP={crop}: expected an overlap below 1")
    return stride


def check_window_geometry(canvas: int, crop: int, stride: int) -> None:
    """Raise a ``ValueError`` naming the ``TEST.SLIDING_WINDOW_*`` keys when ``crop``-sized
    crops every ``stride`` pixels do not tile a ``canvas``-sized square (checked when the
    model is built; the crops would leave a band of the canvas uncovered)."""
    keys = (f"TEST.SLIDING_WINDOW_CROP={crop}, SLIDING_WINDOW_CANVAS={canvas}, "
            f"SLIDING_WINDOW_OVERLAP (stride {stride})")
    if crop > canvas:
        raise ValueError(f"sliding-window crop larger than the canvas: {keys}")
    last = (canvas - crop) // stride * stride
    if last + crop < canvas:
        raise ValueError(f"sliding-window crops leave the last {canvas - last - crop} pixels of the canvas uncovered: "
                         f"{keys}; expected (canvas - crop) to be a multiple of the stride")


def window_offsets(size: int, crop: int, stride: int) -> List[int]:
    """Crop start offsets along one axis, like ``torch.nn.Unfold``: ``(size - crop) // stride + 1`` crops."""
    if crop > size:
        raise ValueError(f"sliding-window crop {crop} is larger than the canvas {size}")
    return list(range(0, size - crop + 1, stride))


def window_boxes(canvas: Tuple[int, int], crop: int, stride: int) -> List[Tuple[int, int]]:
    """``(y, x)`` top-left corners of every crop, row-major (like unfold)."""
    return [(y, x) for y in window_offsets(canvas[0], crop, stride) for x in window_offsets(canvas[1], crop, stride)]


def crop_windows(image: torch.Tensor, boxes: List[Tuple[int, int]], crop: int) -> torch.Tensor:
    """``[C, H, W]`` -> ``[n, C, crop, crop]`` crops at ``boxes``."""
    return torch.stack([image[:, y:y + crop, x:x + crop] for y, x in boxes])


def coverage(canvas: Tuple[int, int], boxes: List[Tuple[int, int]], crop: int, device=None) -> torch.Tensor:
    """How many crops cover each canvas pixel ``[H, W]`` (1, 2 or 4 in the official geometry)."""
    counts = torch.zeros(canvas, device=device)
    for y, x in boxes:
        counts[y:y + crop, x:x + crop] += 1
    return counts


@lru_cache(maxsize=32)
def _cached_weights(canvas: Tuple[int, int], boxes: Tuple[Tuple[int, int], ...], crop: int, scale: float,
                    device: str, dtype) -> torch.Tensor:
    counts = coverage(canvas, list(boxes), crop, device=device)
    if (counts == 0).any():
        raise ValueError("sliding windows do not cover the whole canvas")
    return (scale / counts).to(dtype)


def clear_weight_cache() -> None:
    """Drop the cached per-pixel weights of :func:`merge_windows` (tensors on the devices that
    merged windows: :meth:`CATSeg.release_inference_caches` calls it)."""
    _cached_weights.cache_clear()


def merge_windows(windows: torch.Tensor, boxes: List[Tuple[int, int]], canvas: Tuple[int, int],
                  out: Optional[torch.Tensor] = None, scale: float = 1.0) -> torch.Tensor:
    """Average overlapping crop maps ``[n, T, crop, crop]`` into ``[T, H, W]`` (sum / coverage).

    With ``out`` (``[T, H, W]``), ``scale`` times the average is added to it in place and
    ``out`` is returned: each crop is added once, weighted by ``scale / coverage`` where it
    lies, so neither the sum nor the canvas is written or read more than that.
    """
    crop = windows.shape[-1]
    weights = _cached_weights(tuple(canvas), tuple(map(tuple, boxes)), crop, float(scale), str(windows.device),
                              windows.dtype)
    if out is None:
        out = windows.new_zeros((windows.shape[1], *canvas))
    for window, (y, x) in zip(windows, boxes):
        # in place on the view (``out[...] += ...`` would also dispatch a copy of the region onto itself)
        out[:, y:y + crop, x:x + crop].addcmul_(window, weights[y:y + crop, x:x + crop])
    return out


def merge_views(logits: torch.Tensor, boxes: List[Tuple[int, int]], crop: int, canvas: Tuple[int, int]) -> torch.Tensor:
    """Per-view logits ``[n + 1, T, h, w]`` (crops at ``boxes``, then the global view) -> ``[T, *canvas]``.

    Every view's logits are upsampled to the crop size, then sigmoid; crops are averaged over
    their coverage of the canvas (:func:`merge_windows`) and the result averaged 50/50 with the
    global view upsampled to the canvas. Each class is computed on its own (float32), so the
    classes may be merged in chunks with identical results.

    Written for the bytes it moves (one pass per step): the global view is halved at the crop
    size, where it is smallest (a bilinear resize commutes with a power-of-two scale, bit for
    bit), and upsampled straight into the canvas; each crop is then added to it once, weighted
    by ``0.5 / coverage``. With the official geometry (coverage 1, 2 or 4) every weight is a
    power of two, so this differs from ``(sum / coverage + global) / 2`` only in the order of
    the additions (float32 rounding).
    """
    probs = sigmoid_maps(resize_maps(logits.float(), (crop, crop)))
    merged = resize_maps(probs[-1].mul_(0.5), canvas)
    return merge_windows(probs[:-1], boxes, canvas, out=merged, scale=0.5)
