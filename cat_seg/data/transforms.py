"""Transforms of the mappers and the API beyond detectron2's: the photometric augmentation of
the train mapper (SSD-style colour jitter, as in the official MaskFormer / CAT-Seg training)
and a shortest-edge resize that never produces an empty image."""
import numpy as np
from detectron2.data.transforms import ResizeShortestEdge, ResizeTransform
from detectron2.projects.point_rend import ColorAugSSDTransform as PointRendColorAugSSDTransform

__all__ = ["ColorAugSSDTransform", "ResizeShortestEdgeNonEmpty"]


class ResizeShortestEdgeNonEmpty(ResizeShortestEdge):
    """detectron2's ``ResizeShortestEdge`` (same sizes, sampling and interpolation), except that
    neither side is rounded down to 0 pixels: a very elongated image (a 2 x 3000 strip: its long
    side capped at ``max_size`` makes the short side 0.4 pixels) becomes at least one pixel
    thick, where detectron2's resize fails with "height and width must be > 0"."""

    def get_transform(self, image):
        transform = super().get_transform(image)
        if isinstance(transform, ResizeTransform) and min(transform.new_h, transform.new_w) < 1:
            return ResizeTransform(transform.h, transform.w, max(transform.new_h, 1), max(transform.new_w, 1),
                                   transform.interp)
        return transform


class ColorAugSSDTransform(PointRendColorAugSSDTransform):
    """
    SSD-style colour jitter (as in Mask2Former / CAT-Seg), applied to the image only:
    detectron2's own (``detectron2.projects.point_rend``, which Mask2Former and the official
    CAT-Seg import), with a one-line ``ValueError`` for an ``img_format`` or an image it cannot
    take (detectron2's asserts, or fails inside OpenCV), and a contiguous output array (a
    flipped view given and no op drawn is returned as it came).

    Working in BGR order: brightness (p=0.5, additive U(-32, 32)); then with p=0.5 the order
    [contrast, saturation, hue], else [saturation, hue, contrast]. Contrast and saturation
    multiply by U(0.5, 1.5) (saturation on the OpenCV HSV S channel), each with p=0.5; hue
    adds randint(-18, 18) modulo 180 to the HSV H channel with p=0.5. Every op computes in
    float32, clips to 0..255 and truncates back to uint8.

    The random draws happen in ``apply_image`` with Python's ``random`` module (in cat-seg
    training seeded per sample by :func:`cat_seg.engine.data.seeded_global_rngs`, which makes
    ``--resume`` exact), so one instance can sit in the augmentation list.
    Segmentation maps and coordinates are returned unchanged.
    """

    def __init__(self, img_format: str, **ranges):
        """
        Args:
            img_format: channel order of the images it receives, "RGB" or "BGR".
            ranges: detectron2's ``brightness_delta`` (32), ``contrast_low`` / ``contrast_high``
                (0.5 / 1.5), ``saturation_low`` / ``saturation_high`` (0.5 / 1.5), ``hue_delta`` (18).
        """
        if img_format not in ("RGB", "BGR"):
            raise ValueError(
                f"ColorAugSSDTransform: img_format must be RGB or BGR, got {img_format!r}"
            )
        super().__init__(img_format, **ranges)

    def apply_image(self, img: np.ndarray, interp=None) -> np.ndarray:
        """``img``: uint8 ``[H, W, 3]`` -> jittered uint8 ``[H, W, 3]`` (same channel order)."""
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                "ColorAugSSDTransform expects a uint8 [H, W, 3] image, "
                f"got {img.dtype} {img.shape}"
            )
        return np.ascontiguousarray(super().apply_image(img))
