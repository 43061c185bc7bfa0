"""Transforms of the mappers and the API beyond detectron2's: the photometric augmentation of
the train mapper (SSD-style colour jitter, as in the official MaskFormer / CAT-Seg training)
and a shortest-edge resize that never produces an empty image."""
import random

import cv2
import numpy as np
from detectron2.data.transforms import ResizeShortestEdge, ResizeTransform, Transform

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


class ColorAugSSDTransform(Transform):
    """
    SSD-style colour jitter (as in Mask2Former / CAT-Seg), applied to the image only.

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

    def __init__(
        self,
        img_format: str,
        brightness_delta: int = 32,
        contrast_low: float = 0.5,
        contrast_high: float = 1.5,
        saturation_low: float = 0.5,
        saturation_high: float = 1.5,
        hue_delta: int = 18,
    ):
        """
        Args:
            img_format: channel order of the images it receives, "RGB" or "BGR".
        """
        super().__init__()
        if img_format not in ("RGB", "BGR"):
            raise ValueError(
                f"ColorAugSSDTransform: img_format must be RGB or BGR, got {img_format!r}"
            )
        self.is_rgb = img_format == "RGB"
        del img_format
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp=None) -> np.ndarray:
        """``img``: uint8 ``[H, W, 3]`` -> jittered uint8 ``[H, W, 3]`` (same channel order)."""
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                "ColorAugSSDTransform expects a uint8 [H, W, 3] image, "
                f"got {img.dtype} {img.shape}"
            )
        if self.is_rgb:
            img = img[:, :, [2, 1, 0]]
        img = self.brightness(img)
        if random.randrange(2):
            img = self.contrast(img)
            img = self.saturation(img)
            img = self.hue(img)
        else:
            img = self.saturation(img)
            img = self.hue(img)
            img = self.contrast(img)
        if self.is_rgb:
            img = img[:, :, [2, 1, 0]]
        return np.ascontiguousarray(img)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self):
        raise NotImplementedError("ColorAugSSDTransform is not invertible")

    @staticmethod
    def convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        """``clip(img * alpha + beta, 0, 255)`` computed in float32, truncated to uint8."""
        img = img.astype(np.float32) * alpha + beta
        img = np.clip(img, 0, 255)
        return img.astype(np.uint8)

    def brightness(self, img: np.ndarray) -> np.ndarray:
        if random.randrange(2):
            beta = random.uniform(-self.brightness_delta, self.brightness_delta)
            return self.convert(img, beta=beta)
        return img

    def contrast(self, img: np.ndarray) -> np.ndarray:
        if random.randrange(2):
            return self.convert(img, alpha=random.uniform(self.contrast_low, self.contrast_high))
        return img

    def saturation(self, img: np.ndarray) -> np.ndarray:
        if random.randrange(2):
            img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2HSV)
            alpha = random.uniform(self.saturation_low, self.saturation_high)
            img[:, :, 1] = self.convert(img[:, :, 1], alpha=alpha)
            return cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
        return img

    def hue(self, img: np.ndarray) -> np.ndarray:
        if random.randrange(2):
            img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2HSV)
            shift = random.randint(-self.hue_delta, self.hue_delta)
            img[:, :, 0] = (img[:, :, 0].astype(int) + shift) % 180
            return cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
        return img
