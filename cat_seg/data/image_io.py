"""Decoding image and label files: one implementation for the Python API (and so the demo and
the web app), training and evaluation, so that a file gives the same pixels everywhere.

Images (:func:`read_image_file`, :func:`rgb_array`) become RGB ``uint8`` ``[H, W, 3]``: EXIF
orientation applied once (Pillow's TIFF decoder applies the tag itself, which detectron2's
``read_image`` then applied a second time), 16-bit samples scaled to 8 bits (``value / 257``,
rounded: PIL's own conversion clips them to white), any other mode converted by PIL. Label maps
(:func:`read_label_file`) keep their values and dtype (8-bit, 16-bit, 32-bit, palette indices)
and get the same orientation as their image, from the same tag.

Pillow is used directly rather than detectron2's ``read_image`` for those two reasons; the
errors are ``ValueError`` (bad contents) and ``OSError`` (unreadable file) with Pillow's
messages, which callers turn into their own one-line errors naming the file.
"""
import threading

import numpy as np
from PIL import Image, ImageOps, features

#: EXIF / TIFF tag of the orientation.
ORIENTATION_TAG = 0x0112

_LIBTIFF_SWITCH = threading.Lock()


def open_image(path: str) -> Image.Image:
    """``Image.open``, except for uncompressed TIFFs whose orientation tag turns them by 90
    degrees (5 to 8): Pillow's own TIFF decoder applies the tag and returns wrong pixels for
    those of one band (8- and 16-bit grey) and RGBA (Pillow 12), where the libtiff decoder it
    uses for compressed TIFFs is right; such a file is opened with libtiff.

    An image over Pillow's size limit (``PIL.Image.MAX_IMAGE_PIXELS``, about 179 megapixels: a
    guard against decompression bombs) is a ``ValueError`` that says how to lift it."""
    try:
        opened = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ValueError(f"{str(e).rstrip('.')}; for an image you trust, lift the limit in Python with "
                         "PIL.Image.MAX_IMAGE_PIXELS = None before segmenting it") from None
    rotated = opened.format == "TIFF" and opened.tag_v2.get(ORIENTATION_TAG) in (5, 6, 7, 8)
    if not rotated or opened.use_load_libtiff or not features.check("libtiff"):
        return opened
    opened.close()
    from PIL import TiffImagePlugin

    with _LIBTIFF_SWITCH:  # Pillow's switch is a module global, read while the file is opened
        default, TiffImagePlugin.READ_LIBTIFF = TiffImagePlugin.READ_LIBTIFF, True
        try:
            return Image.open(path)
        finally:
            TiffImagePlugin.READ_LIBTIFF = default


def is_16_bit(image: Image.Image) -> bool:
    """A PIL image of 16-bit integer samples (``I;16*`` modes; ``I`` holding 16-bit values,
    as some Pillow versions open 16-bit PNGs)."""
    if image.mode.startswith("I;16"):
        return True
    if image.mode != "I":
        return False
    low, high = image.getextrema()
    return 0 <= low and 255 < high <= 65535


def scale_16_bit(array: np.ndarray) -> np.ndarray:
    """``uint16`` samples -> ``uint8``: ``round(value / 257)`` (65535 -> 255, 257 -> 1)."""
    return ((array.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)


def rgb_array(image: Image.Image) -> np.ndarray:
    """A PIL image -> RGB ``uint8`` ``[H, W, 3]`` (EXIF orientation applied, 16-bit samples
    scaled, other modes converted by PIL). ``ValueError`` for an empty image, floating-point
    samples (mode F: converting would truncate them) or a closed image."""
    if image.width == 0 or image.height == 0:
        raise ValueError(f"empty image of size {image.size}")
    if image.mode == "F":
        raise ValueError("PIL images of floating-point samples (mode F) are not accepted: give 8-bit samples, e.g. "
                         "Image.fromarray((array * 255).round().astype(np.uint8))")
    try:
        image = ImageOps.exif_transpose(image)
        if is_16_bit(image):
            grey = scale_16_bit(np.asarray(image).astype(np.uint16))  # PIL's 16-bit modes are one band
            return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
        return np.asarray(image.convert("RGB")).copy()
    except ValueError as e:  # e.g. "Operation on closed image"
        raise ValueError(f"cannot read the PIL image: {e}") from None


def read_image_file(path: str) -> np.ndarray:
    """The image file ``path`` as RGB ``uint8`` ``[H, W, 3]`` (:func:`rgb_array`)."""
    with open_image(path) as opened:
        opened.load()
        return rgb_array(opened)


def read_label_file(path: str) -> np.ndarray:
    """The label map file ``path`` as an array of its own values and dtype (``[H, W]`` for a
    label map; the caller checks that), turned by its EXIF orientation tag like an image (a
    label saved with its photo's metadata stays aligned with the photo; without the tag it is
    read as stored). A label map saved as RGB(A) with three equal colour channels (grey values
    written by a tool that saves RGB) is read as those values; a colour-coded mask stays
    ``[H, W, C]``."""
    with open_image(path) as opened:
        opened.load()
        label = np.array(ImageOps.exif_transpose(opened))
    if label.ndim == 3 and label.shape[2] in (3, 4) and (label[..., 1:3] == label[..., :1]).all():
        return np.ascontiguousarray(label[..., 0])
    return label


def lossy_label_hint(path: str) -> str:
    """``" (a JPEG label: ...)"`` for a label map saved in a lossy format, whose compression
    makes values no class has; "" otherwise. For the errors about a label's values."""
    if path.lower().endswith((".jpg", ".jpeg", ".jpe", ".jfif")):
        return " (a JPEG label: JPEG compression changes values; save label maps as PNG)"
    return ""
