"""Python API: segment your own images with your own class names.

Example::

    from cat_seg import OpenVocabSegmenter

    seg = OpenVocabSegmenter.from_config("configs/vitb_384.yaml", weights="model_final.pth")
    result = seg("photo.jpg", ["cat", "dog", "grass"])
    result.label_map      # np.int32 [H, W]: index into result.classes, -1 = unlabeled
    result.confidence     # np.float32 [H, W]: probability of the winning class
    result.probs          # torch.float32 [T, H, W] per-class probabilities (CPU), computed on first use
    result.overlay()      # np.uint8 [H, W, 3] RGB visualisation with names and a legend

Labels and confidence are computed without holding the ``[T, H, W]`` probability maps (memory
bounded by the image, not by image x classes); the maps are only built when ``probs`` or
:meth:`SegmentationResult.probabilities` is used.

Vocabularies are plain class names; a class name may carry synonyms separated by ``", "``
(the CAT-Seg convention, e.g. ``"person, human"``): only the first synonym is given to the
model, the whole string is kept as the class name. In a single string, ``;`` separates classes
when present, otherwise ``,`` does (see :func:`parse_vocabulary`).

Unlabeled pixels: with ``background="prompts"`` pixels won by one of
:data:`BACKGROUND_PROMPTS` and with ``background=<float>`` pixels whose best probability is
below the threshold get the label :data:`UNLABELED` (-1).
"""
import colorsys
import json
import logging
import numbers
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .data.image_io import read_image_file, rgb_array, scale_16_bit
from .fonts import font_families, missing_glyphs_warning
from .modeling.clip.prompts import primary_name  # first ", "-synonym: the text the model sees
from .modeling.clip.prompts import shared_first_synonym_note
from .modeling.postprocess import ClassMaps, OutputRequest
from .utils import error_line, parse_json_text, read_vocabulary_text, temporary_path

logger = logging.getLogger(__name__)

#: Label of pixels left unlabeled by the background handling (in ``label_map``).
UNLABELED = -1
#: Value of unlabeled pixels in the index PNG of :meth:`SegmentationResult.label_png`, by PNG dtype.
PNG_UNLABELED = {np.uint8: 255, np.uint16: 65535}

#: Generic "stuff" prompts appended to the vocabulary with ``background="prompts"``; pixels
#: won by one of them are left unlabeled. Prompts that name a user class (any of its synonyms,
#: singular or plural, case-insensitive: :meth:`OpenVocabSegmenter.background_prompts_for`)
#: are not added, so e.g. asking for "grass" still labels grass.
BACKGROUND_PROMPTS: Tuple[str, ...] = (
    "background",
    "wall",
    "floor",
    "ceiling",
    "sky",
    "ground",
    "road",
    "building",
    "tree",
    "grass",
    "water",
)

#: File extensions treated as images when a directory or glob is expanded: the photo and bitmap
#: formats among those the installed Pillow opens. Not all of Pillow's: it also registers
#: containers and documents (.h5, .fits, .mpeg, .ps, .ico, ...) that a folder of photos may hold
#: and that are not pictures to segment (a file named explicitly is read whatever its extension).
_PILLOW_EXTENSIONS = Image.registered_extensions()  # extension -> format (loads Pillow's plugins)
IMAGE_EXTENSIONS = tuple(
    extension for extension in (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".dib", ".tif", ".tiff",
                                ".webp", ".avif", ".jp2", ".j2k", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi",
                                ".gif")
    if _PILLOW_EXTENSIONS.get(extension) in Image.OPEN)


def image_file_format(path: str) -> Optional[str]:
    """The Pillow format an image file named ``path`` is written in (``"JPEG"`` for
    ``out.jpg``), or None when its extension is not one of :data:`IMAGE_EXTENSIONS` Pillow
    can write."""
    extension = os.path.splitext(path)[1].lower()
    image_format = _PILLOW_EXTENSIONS.get(extension)
    return image_format if extension in IMAGE_EXTENSIONS and image_format in Image.SAVE else None

ImageInput = Union[str, os.PathLike, np.ndarray, Image.Image]


class CATSegError(Exception):
    """A user error (bad image, vocabulary, config or weights) with a one-line message."""


# ---------------------------------------------------------------------------------- vocabulary
# invisible format characters (zero-width space / joiners, byte-order mark) pasted with names
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"
# the full-width commas: synonyms within one class name, wherever the name comes from
_FULL_WIDTH_COMMAS = str.maketrans({"\uff0c": ",", "\u3001": ","})  # ，、


def _clean_class(name: str) -> str:
    """Normalise whitespace and the synonym separator of one class name (``,``, or the
    full-width ``，`` / ``、`` of CJK input methods); invisible characters around a synonym are
    dropped (a name of only such characters is blank)."""
    name = name.translate(_FULL_WIDTH_COMMAS)
    synonyms = [" ".join(part.split()).strip(_INVISIBLE).strip() for part in name.split(",")]
    return ", ".join(s for s in synonyms if s)


def _check_vocabulary(classes: List[str], source: str) -> List[str]:
    """A class given twice (the same entry, compared without case) is an error. Different
    entries with the same first synonym are allowed (:func:`shared_first_synonym_note`; the
    segmenter warns once per vocabulary it is given)."""
    if not classes:
        raise CATSegError(f"empty vocabulary ({source}): give at least one class name")
    entries = set()
    for name in classes:
        entry = name.lower()
        if entry in entries:
            raise CATSegError(f"class {name!r} appears twice in the vocabulary ({source})")
        entries.add(entry)
    return classes


def _clean_classes(parts: Sequence[str], source: str, trailing_separator: bool = False) -> List[str]:
    """Clean every entry; a blank entry is an error naming its position (label numbers must
    match the caller's list), unless every entry is blank (an empty vocabulary) or it is the
    one left by a trailing separator of a string (``"cat; dog;"``). An entry that is not a
    string is an error naming its position."""
    for position, part in enumerate(parts):
        if not isinstance(part, str):
            raise CATSegError(f"class names must be strings, got {type(part).__name__} {part!r} at position "
                              f"{position} of {source}")
    cleaned = [_clean_class(p) for p in parts]
    if trailing_separator and len(cleaned) > 1 and not cleaned[-1]:
        cleaned = cleaned[:-1]
    if any(cleaned):
        for position, name in enumerate(cleaned):
            if not name:
                raise CATSegError(
                    f"class name at position {position} of {source} is blank: give a name for every class "
                    f"(label i is the i-th class, so blank names are not dropped)"
                )
    return _check_vocabulary([c for c in cleaned if c], source)


FULL_WIDTH_SEPARATORS = str.maketrans({"\uff0c": ", ", "\u3001": ", ", "\uff1b": ";"})  # ，、；


def parse_vocabulary(vocabulary: Union[str, Sequence[str]]) -> List[str]:
    """Turn a user vocabulary into the list of class names (label ``i`` = ``classes[i]``).

    * a list/tuple: one class per element (an element may hold ``", "`` synonyms);
    * a string containing ``;``: classes separated by ``;``, synonyms by ``,``
      (``"person, human; dog"`` -> ``["person, human", "dog"]``);
    * any other string: classes separated by ``,`` (``"cat, dog"`` -> ``["cat", "dog"]``).

    In a string, the full-width ``，`` and ``；`` and the enumeration comma ``、`` of Chinese and
    Japanese input methods count as ``,`` and ``;`` (``"猫，狗"`` and ``"猫、狗"`` ->
    ``["猫", "狗"]``).

    Whitespace is normalised. Raises :class:`CATSegError` for an empty vocabulary, a class
    given twice, or a blank class name among others (its position is named; only a trailing
    separator in a string, ``"cat, dog,"``, is allowed).
    """
    if isinstance(vocabulary, str):
        _refuse_a_file_name(vocabulary)
        return _parse_vocabulary_string(vocabulary, repr(vocabulary))
    if isinstance(vocabulary, (list, tuple)):
        return _clean_classes(list(vocabulary), "the class list")
    if vocabulary is None:
        raise CATSegError("empty vocabulary: give at least one class name")
    raise CATSegError(f"vocabulary must be a string or a list of strings, got {type(vocabulary).__name__}")


#: Endings of a vocabulary string that is a file's name (read_vocabulary_file reads such files).
_VOCABULARY_FILE_ENDINGS = (".json", ".txt", ".csv", ".tsv")


def _refuse_a_file_name(vocabulary: str) -> None:
    """A vocabulary string that names a file (``"data/classes.json"``) would segment every pixel
    as one class of that name; it is an error saying how to read the file instead."""
    text = vocabulary.strip()
    if any(separator in text.translate(FULL_WIDTH_SEPARATORS) for separator in ",;"):  # several classes
        return
    looks_like_a_path = os.sep in text or "/" in text  # "tree" may be a file in the working folder too
    if text.lower().endswith(_VOCABULARY_FILE_ENDINGS) or (looks_like_a_path and os.path.isfile(text)):
        raise CATSegError(f"the vocabulary {text!r} looks like a file name, not class names: read a file of "
                          f"classes with --vocab-file (read_vocabulary_file in Python)")


def _parse_vocabulary_string(vocabulary: str, source: str) -> List[str]:
    """One string of classes (:func:`parse_vocabulary`'s rules); ``source`` names it in errors."""
    vocabulary = vocabulary.translate(FULL_WIDTH_SEPARATORS)
    parts = vocabulary.split(";") if ";" in vocabulary else vocabulary.split(",")
    return _clean_classes(parts, source, trailing_separator=True)


def parse_vocabulary_text(text: str, source: Optional[str] = None) -> List[str]:
    """Classes of a text (a vocabulary file, the web app's box): blank lines and lines starting
    with ``#`` are ignored; several lines are one class per line (each may hold ``", "``
    synonyms), and ``;`` separates classes within a line as it does in a string
    (``"person, human; dog\ncat"``: three classes); a single line is read like
    :func:`parse_vocabulary`'s string (``"cat, dog"``: two classes). ``source`` (e.g.
    ``"file classes.txt"``) names the text in errors."""
    lines = [line for line in (text or "").splitlines() if line.strip() and not line.strip().startswith("#")]
    if len(lines) > 1:
        return _clean_classes([name for line in lines for name in _classes_of_line(line)],
                              source or "the class list")
    line = lines[0] if lines else ""
    if not lines and (text or "").strip():
        source = source or "the text holds only # comments"
    return _parse_vocabulary_string(line, source or repr(line))


def _classes_of_line(line: str) -> List[str]:
    """The classes of one line of a several-line vocabulary: the line, or its ``;``-separated
    parts (a ``;`` at its end, as in a string, ends the line's last class)."""
    parts = line.translate(FULL_WIDTH_SEPARATORS).split(";")
    return parts[:-1] if len(parts) > 1 and not parts[-1].strip() else parts


def read_vocabulary_file(path: str) -> List[str]:
    """Read classes from a file.

    ``path`` is a file, or names a vocabulary shipped with the package (``datasets/ade150.json``,
    ``ade150.json``). ``.json``, or any file whose text starts with ``[``: a JSON array of class
    names (entries may hold ``", "`` synonyms; a blank entry is an error). Anything else: text,
    read by :func:`parse_vocabulary_text` (one class per line, ``", "`` synonyms allowed, ``;``
    between classes on one line, or a single line of classes like ``--vocab``; blank lines and
    ``#`` comments ignored).
    """
    key = "vocabulary file"  # how the errors name the file
    try:
        path, text = read_vocabulary_text(path, key)  # UTF-8, a byte-order mark dropped
        is_json = path.lower().endswith(".json") or text.lstrip().startswith("[")
        data = parse_json_text(text, path, key) if is_json else None
    except (OSError, ValueError) as e:  # the messages name the file
        raise CATSegError(str(e)) from None
    if is_json:
        if not isinstance(data, list):
            raise CATSegError(f"{key} {path!r}: expected a JSON array of class-name strings")
        return _clean_classes(data, f"file {path}")
    return parse_vocabulary_text(text, f"file {path}")


# ---------------------------------------------------------------------------------- images
def load_image(image: ImageInput) -> np.ndarray:
    """Any supported image input -> RGB ``uint8`` ``[H, W, 3]`` array.

    Accepts a file path or a PIL image (EXIF orientation applied, converted to RGB, as
    detectron2's ``read_image`` does), or a numpy array: ``uint8``
    ``[H, W, 3]`` RGB, ``[H, W, 4]`` RGBA (alpha dropped), ``[H, W]`` or ``[H, W, 1]``
    grayscale. 16-bit images (``uint16`` arrays, 16-bit PNG/TIFF files and PIL images) are
    scaled to 8 bits (``value / 257``, rounded: 65535 -> 255); PIL's own conversion would clip
    them to white. Anything else raises :class:`CATSegError` saying what was expected.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if os.path.isdir(path):
            raise CATSegError(f"cannot read image {path!r}: it is a directory (the API takes image files; "
                              "list the files, or use the demo's --input DIR)")
        if not os.path.isfile(path):
            raise CATSegError(f"cannot read image {path!r}: no such file")
        try:
            return read_image_file(path)  # as training and evaluation read it (cat_seg.data.image_io)
        except Exception as e:  # PIL raises several types for corrupt / non-image files
            raise CATSegError(f"cannot read image {path!r}: {error_line(e)}") from None
    if isinstance(image, Image.Image):
        try:
            return rgb_array(image)
        except ValueError as e:  # empty, mode F, or closed
            raise CATSegError(str(e)) from None
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint16:
            image = scale_16_bit(image)  # round(v / 257)
        if image.dtype != np.uint8:
            hint = " (scale floats in [0, 1] with (image * 255).round().astype(np.uint8))" if image.dtype.kind == "f" else ""
            raise CATSegError(f"numpy images must be uint8 RGB [H, W, 3], got dtype {image.dtype}{hint}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            hint = ""
            if image.ndim == 3 and image.shape[0] in (1, 3, 4):
                hint = " (channels first? use image.transpose(1, 2, 0))"
            elif image.ndim == 4:
                hint = " (for a batch, pass a list of [H, W, 3] arrays: list(images))"
            raise CATSegError(f"numpy images must be RGB [H, W, 3], got shape {tuple(image.shape)}{hint}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise CATSegError(f"empty image of shape {tuple(image.shape)}")
        return np.ascontiguousarray(image[:, :, :3])
    if isinstance(image, torch.Tensor):
        raise CATSegError(
            f"torch tensors are not accepted as images (got shape {tuple(image.shape)}): give an RGB uint8 numpy "
            "array [H, W, 3], e.g. tensor.permute(1, 2, 0).cpu().numpy() for a CHW uint8 tensor"
        )
    raise CATSegError(
        f"unsupported image type {type(image).__name__}: give a file path, a PIL image or an RGB uint8 numpy array"
    )


def _load_images(inputs: Sequence[ImageInput]) -> List[np.ndarray]:
    """:func:`load_image` of every input; errors of a list name the position of the bad image."""
    if len(inputs) == 1:
        return [load_image(inputs[0])]
    arrays = []
    for position, image in enumerate(inputs):
        try:
            arrays.append(load_image(image))
        except CATSegError as e:
            raise CATSegError(f"image at position {position} of {len(inputs)}: {e}") from None
    return arrays


def class_colors(num_classes: int) -> List[Tuple[int, int, int]]:
    """Distinct RGB colours for ``num_classes`` labels: detectron2's palette, then golden-ratio hues."""
    from detectron2.utils.colormap import colormap

    palette = [tuple(int(v) for v in c) for c in colormap(rgb=True, maximum=255)]
    colors = palette[:num_classes]
    for i in range(len(colors), num_classes):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.65 + 0.3 * ((i // 7) % 2), 0.95)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


# ---------------------------------------------------------------------------------- results
#: Overlays of images with more pixels are drawn at this many pixels (full HD stays full size).
OVERLAY_MAX_PIXELS = 1 << 21

#: Pixels per block of the per-class statistics (areas, mean probabilities).
_STATS_BLOCK = 1 << 20

#: Smallest letter height (pixels) of the overlay's legend, written smaller on narrow images;
#: an image too narrow for that gets no legend (the class names on the segments remain).
LEGEND_MIN_FONT_PX = 6


def _display_size(height: int, width: int, max_pixels: Optional[int]) -> Tuple[int, int]:
    """``(h, w)`` of at most ``max_pixels`` pixels with the aspect ratio of ``height x width``."""
    if not max_pixels or height * width <= max_pixels:
        return height, width
    scale = (max_pixels / (height * width)) ** 0.5
    return max(1, int(height * scale)), max(1, int(width * scale))


def nearest_indices(out_length: int, in_length: int) -> np.ndarray:
    """For each of ``out_length`` pixels of a resized axis, the pixel of the original
    ``in_length`` axis whose value a nearest-neighbour resize takes (pixel centres, like
    ``cv2.INTER_NEAREST_EXACT``): what :meth:`SegmentationResult.display` draws, and where a
    click on it lies in the image."""
    return np.minimum(((np.arange(out_length) + 0.5) * in_length / out_length).astype(np.int64), in_length - 1)


def _nearest_resize(labels: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map (:func:`nearest_indices` on both axes)."""
    rows, cols = nearest_indices(size[0], labels.shape[0]), nearest_indices(size[1], labels.shape[1])
    return labels[rows[:, None], cols[None, :]]


def _keep_texts_inside(output) -> None:
    """Move the class names detectron2 wrote on the segments of ``output`` (a ``VisImage``) so
    that each lies inside the image: it centres a name on its segment, so a segment at an edge
    had its name cut off there. A name wider or taller than the image is aligned with its left
    or top edge."""
    figure_width, figure_height = output.fig.canvas.get_width_height()
    renderer = output.fig.canvas.get_renderer()
    to_data = output.ax.transData.inverted()
    for text in output.ax.texts:
        box = text.get_window_extent(renderer)  # display pixels, y upwards
        shift_x = -box.x0 if box.x0 < 0 or box.width > figure_width else min(0.0, figure_width - box.x1)
        shift_y = (figure_height - box.y1 if box.y1 > figure_height or box.height > figure_height
                   else max(0.0, -box.y0))
        if shift_x or shift_y:
            anchor = output.ax.transData.transform(text.get_position())
            text.set_position(tuple(to_data.transform((anchor[0] + shift_x, anchor[1] + shift_y))))


@dataclass
class SegmentationResult:
    """Segmentation of one image.

    Attributes:
        image: the input, RGB ``uint8`` ``[H, W, 3]``.
        classes: the vocabulary; ``label_map`` value ``i`` means ``classes[i]``.
        label_map: ``int32`` ``[H, W]``, :data:`UNLABELED` (-1) where the background
            handling left the pixel unlabeled.
        probs: ``float32`` ``[T, H, W]`` (CPU tensor) per-class probabilities of the user
            classes (with ``background="prompts"`` computed together with the prompts, whose
            own probabilities are not returned). For results of :class:`OpenVocabSegmenter`
            they are computed from ``class_maps`` on first access and then kept (``T x H x W``
            floats: use :meth:`probabilities` for another dtype without keeping them).
        background: the background setting used (``None``, ``"prompts"`` or a threshold).
        background_classes: prompts appended for ``background="prompts"`` (else empty).
        source: the file path for path inputs, else ``None``.
        confidence: ``float32`` ``[H, W]``, the highest probability of each pixel over all
            classes (prompts included), i.e. the probability of its class where it is labeled;
            ``None`` when built by hand without it (then taken from ``probs``).
        class_maps: the model-resolution per-class maps the probabilities are computed from
            (:class:`~cat_seg.modeling.postprocess.ClassMaps`, on the CPU), or ``None``.
    """

    image: np.ndarray
    classes: List[str]
    label_map: np.ndarray
    probs: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)  # property below
    background: Union[None, str, float] = None
    background_classes: List[str] = field(default_factory=list)
    source: Optional[str] = None
    confidence: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    class_maps: Optional[ClassMaps] = field(default=None, repr=False, compare=False)

    @property
    def height(self) -> int:
        return int(self.label_map.shape[0])

    @property
    def width(self) -> int:
        return int(self.label_map.shape[1])

    @property
    def colors(self) -> List[Tuple[int, int, int]]:
        """RGB colour of each class in :meth:`overlay`."""
        return class_colors(len(self.classes))

    def probabilities(self, dtype: torch.dtype = torch.float32,
                      classes: Optional[Sequence[Union[str, int]]] = None) -> torch.Tensor:
        """``[T, H, W]`` probabilities of the user classes on the CPU in ``dtype`` (not kept);
        with ``classes`` (names of :attr:`classes` or their indices) only those, ``[len(classes),
        H, W]``: the maps of a few classes of a large image or vocabulary without the memory of
        all (171 classes of a 24-megapixel image are 16 GB in float32)."""
        indices = list(range(len(self.classes))) if classes is None else [self._class_index(c) for c in classes]
        if self.class_maps is None:
            if self._probs is None:
                raise ValueError("this result holds neither probabilities nor the class maps to compute them")
            return self._probs[indices].to(dtype)
        return self.class_maps.probabilities(classes=indices, dtype=dtype, device="cpu")

    def _class_index(self, name_or_index: Union[str, int]) -> int:
        if isinstance(name_or_index, str):
            if name_or_index not in self.classes:
                raise CATSegError(f"class {name_or_index!r} is not in this result's vocabulary "
                                  f"({len(self.classes)} classes, e.g. {self.classes[0]!r})")
            return self.classes.index(name_or_index)
        if not (isinstance(name_or_index, numbers.Integral) and 0 <= name_or_index < len(self.classes)):
            raise CATSegError(f"class index {name_or_index!r}: expected 0..{len(self.classes) - 1}")
        return int(name_or_index)

    def confidence_map(self) -> torch.Tensor:
        """``[H, W]`` float32: :attr:`confidence`, or (for a result built by hand without it)
        the probability of each pixel's label read from :attr:`probs`. Raises ``ValueError``
        for a result that holds neither (a label map only)."""
        if self.confidence is not None:
            return torch.from_numpy(self.confidence)
        if self.probs is None:
            raise ValueError("this result holds neither a confidence map nor probabilities to read it from")
        labels = torch.from_numpy(self.label_map).long()
        return self.probs.gather(0, labels.clamp(min=0)[None])[0]

    def areas(self) -> Dict[str, int]:
        """Pixel count of every class (in vocabulary order, zeros included)."""
        counts, _ = self._class_sums()
        return {name: int(n) for name, n in zip(self.classes, counts)}

    def _class_sums(self, weights: Optional[np.ndarray] = None, label_map: Optional[np.ndarray] = None
                    ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Per class: the number of pixels of ``label_map`` (default :attr:`label_map`) labeled
        with it ``[T]`` and, with ``weights`` (``[H, W]``), the sum of their weights ``[T]``
        (float64); values that are no class's index (a hand-made map's 255) count for none.
        Computed in blocks of :data:`_STATS_BLOCK` pixels: whole-map int64 / float64 copies of a
        24-megapixel label map took about 0.6 GB."""
        labels = (self.label_map if label_map is None else label_map).reshape(-1)
        weights = None if weights is None else weights.reshape(-1)
        slots = len(self.classes) + 1  # slot 0: unlabeled pixels (UNLABELED = -1)
        counts = np.zeros(slots, np.int64)
        sums = None if weights is None else np.zeros(slots, np.float64)
        for start in range(0, labels.size, _STATS_BLOCK):
            block = labels[start:start + _STATS_BLOCK].astype(np.int64) + 1
            block[(block < 0) | (block >= slots)] = 0  # values no class has (a hand-made map's 255): no class's
            counts += np.bincount(block, minlength=slots)
            if sums is not None:
                sums += np.bincount(block, weights=weights[start:start + _STATS_BLOCK], minlength=slots)
        return counts[1:], (None if sums is None else sums[1:])

    @property
    def unlabeled_area(self) -> int:
        """Number of pixels labeled :data:`UNLABELED`."""
        return int((self.label_map == UNLABELED).sum())

    def mean_probabilities(self) -> Dict[str, Optional[float]]:
        """Per class, the mean probability of that class over the pixels labeled with it
        (the confidence of its segment); ``None`` for classes that label no pixel, and for
        every class of a result built from a label map alone."""
        if self.confidence is None and self.probs is None:
            return {name: None for name in self.classes}
        counts, sums = self._class_sums(self.confidence_map().numpy())
        return {
            name: (float(sums[i] / counts[i]) if counts[i] else None) for i, name in enumerate(self.classes)
        }

    def display(self, max_pixels: Optional[int] = OVERLAY_MAX_PIXELS) -> Tuple[np.ndarray, np.ndarray]:
        """``(image, label_map)`` at the display resolution :meth:`overlay` draws at: as they are
        up to ``max_pixels`` pixels, else downscaled to that many (same aspect ratio; the image
        bilinear, the labels nearest at pixel centres)."""
        size = _display_size(self.height, self.width, max_pixels)
        if size == (self.height, self.width):
            return self.image, self.label_map
        image = np.asarray(Image.fromarray(self.image).resize(size[::-1], Image.BILINEAR, reducing_gap=2.0))
        return image, _nearest_resize(self.label_map, size)

    def overlay(self, alpha: float = 0.6, legend: bool = True, area_threshold: Optional[int] = None,
                max_pixels: Optional[int] = OVERLAY_MAX_PIXELS) -> np.ndarray:
        """RGB ``uint8`` visualisation: ``[H, W, 3]`` (the image size) up to ``max_pixels``
        pixels, larger images are drawn at the display resolution of ``max_pixels`` pixels
        (same aspect ratio; ``max_pixels=None`` draws any image at full size, slowly).

        Segments are drawn with detectron2's ``Visualizer.draw_sem_seg`` (class names written
        on the segments; the first synonym of each class, in any script: glyphs the default font
        lacks come from an installed font that has them, :mod:`cat_seg.fonts`, and characters no
        installed font has are drawn as boxes with one warning); unlabeled pixels are left as they
        are. ``legend`` adds a colour legend of the classes present (largest first) in the
        top-right corner. ``area_threshold`` (segments smaller than that many pixels of the
        image are not drawn) is scaled to the drawing size.
        """
        from detectron2.data.catalog import Metadata
        from detectron2.utils.visualizer import ColorMode, Visualizer

        names = [primary_name(c) for c in self.classes]
        colors = self.colors
        # detectron2 draws every segment as polygons at the image resolution (minutes at 24 MP):
        # draw the downscaled image and label map instead
        image, label_map = self.display(max_pixels)
        size = label_map.shape
        # detectron2's GenericMask takes an array two columns wide for a list of polygons (an
        # assertion): such a drawing gets one unlabeled column more, cut off afterwards
        padded = size[1] == 2
        if padded:
            image = np.pad(image, ((0, 0), (0, 1), (0, 0)))
            label_map = np.pad(label_map, ((0, 0), (0, 1)), constant_values=UNLABELED)
        if area_threshold is not None and size != (self.height, self.width):
            area_threshold = area_threshold * size[0] * size[1] / (self.height * self.width)
        metadata = Metadata(stuff_classes=names, stuff_colors=[list(c) for c in colors])
        visualizer = Visualizer(image, metadata, instance_mode=ColorMode.IMAGE)
        # draw_sem_seg skips labels >= len(stuff_classes): map unlabeled pixels there
        sem_seg = np.where(label_map == UNLABELED, len(names), label_map)
        output = visualizer.draw_sem_seg(sem_seg, area_threshold=area_threshold, alpha=alpha)
        families, missing = font_families(names)
        if families:  # names with glyphs the default font lacks (e.g. CJK): fallback fonts
            for text in output.ax.texts:
                text.set_fontfamily(families)
        with warnings.catch_warnings():
            if missing:  # one warning below instead of matplotlib's per glyph and drawing
                warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
            _keep_texts_inside(output)  # (measures the segments' names: a drawing; before the legend's)
            if legend:  # (measures its text: a drawing)
                self._draw_legend(output, names, colors, font_size=visualizer._default_font_size,
                                  label_map=label_map, font_family=families or None)
            image = output.get_image()
        if missing:
            missing_glyphs_warning(missing)
        if padded:
            image = image[:, :2]
        return image

    def _draw_legend(self, output, names: List[str], colors, font_size: float, max_entries: int = 12,
                     label_map: Optional[np.ndarray] = None, font_family: Optional[List[str]] = None):
        """Legend of the classes present in ``label_map`` (default :attr:`label_map`; the drawn,
        possibly downscaled one), largest first, covering at most about half the height, written
        in ``font_family`` (a list of families, :func:`~cat_seg.fonts.font_families`; default
        matplotlib's). On an image too narrow for it the legend is written smaller, down to
        :data:`LEGEND_MIN_FONT_PX` pixels a letter; narrower still, it is left out (it was cut off
        at the image's left edge). Returns the matplotlib legend drawn, or ``None``."""
        from matplotlib.font_manager import FontProperties
        from matplotlib.patches import Patch

        areas, _ = self._class_sums(label_map=label_map)
        present = [i for i in np.argsort(-areas, kind="stable") if areas[i] > 0]
        if not present:
            return None
        font_size = font_size * output.scale * 0.9  # points
        line_height = font_size * output.dpi / 72 * 1.8  # pixels per legend row, spacing included
        max_entries = max(1, min(max_entries, int(0.5 * output.height * output.scale / line_height) - 1))
        handles = [
            Patch(facecolor=np.array(colors[i]) / 255.0, edgecolor="white", label=names[i])
            for i in present[:max_entries]
        ]
        if len(present) > max_entries:
            handles.append(Patch(facecolor="none", edgecolor="none", label=f"+{len(present) - max_entries} more"))

        def draw(size: float):
            legend = output.ax.legend(
                handles=handles,
                loc="upper right",
                prop=FontProperties(family=font_family, size=size),
                framealpha=0.75,
                facecolor="black",
                labelcolor="white",
                edgecolor="none",
                borderaxespad=0.3,
                handlelength=1.0,
            )
            legend.set_zorder(20)  # above the segment names (zorder 10)
            return legend

        # every part of the legend (text, handles, padding) is sized in font units, so its width
        # scales with the font size: one measure gives the size that fits
        legend = draw(font_size)
        available = output.width * output.scale * 0.98  # pixels of the drawing
        width = legend.get_window_extent(output.canvas.get_renderer()).width
        if width <= available:
            return legend
        legend.remove()
        smaller = font_size * available / width * 0.98
        return draw(smaller) if smaller * output.dpi / 72 >= LEGEND_MIN_FONT_PX else None

    def label_png(self) -> np.ndarray:
        """The label map as an index image (what the demo and the web app save as ``*_labels.png``):
        uint8 for fewer than 255 classes, else uint16; unlabeled pixels get :data:`PNG_UNLABELED`
        of that dtype (255 / 65535)."""
        dtype = np.uint8 if len(self.classes) < 255 else np.uint16
        return np.where(self.label_map < 0, PNG_UNLABELED[dtype], self.label_map).astype(dtype)

    def save(self, target: str, info: Optional[Dict[str, Any]] = None, relative_to: Optional[str] = None,
             extra_files: Optional[Dict[str, Tuple[str, Callable[[BinaryIO], Any]]]] = None,
             overlay: Optional[np.ndarray] = None, overlay_file: Optional[str] = None) -> Dict[str, str]:
        """Write the files of the demo and the web app: ``<target>_labels.png`` (:meth:`label_png`),
        ``<target>_overlay.png`` (:meth:`overlay`) and ``<target>.json``.

        The JSON holds ``info`` (e.g. ``input``, ``model``), :meth:`to_json`, the PNG's dtype and
        unlabeled value, and ``outputs``: the files' paths relative to ``relative_to`` (default:
        the folder of ``target``). ``extra_files``: name -> ``(path, writer)``, more files of the
        image written with the others (``writer(binary file)``; the demo's ``_features.npz``).
        Returns the paths (``overlay``, ``labels``, ``json`` and the extra ones). ``overlay``:
        the :meth:`overlay` image when the caller has drawn it already (drawn here otherwise).
        ``overlay_file``: where the overlay goes instead of ``<target>_overlay.png``, in the
        format its extension names (``out.jpg``: JPEG), as the official demo's ``--output FILE``.

        The files are written under temporary names and renamed when all are written: a failure
        (a folder in the way, a full disk, no permission) leaves none of them and raises
        :class:`CATSegError` naming the path.
        """
        folder = os.path.dirname(target) or "."
        try:
            os.makedirs(folder, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise CATSegError(f"cannot create output folder {folder!r}: {e.filename!r} is a file") from None
        except OSError as e:
            raise CATSegError(f"cannot create output folder {folder!r}: {e.strerror or e}") from None
        paths = {name: target + suffix for name, suffix in IMAGE_OUTPUT_SUFFIXES.items()}
        overlay_format = "PNG"
        if overlay_file:
            paths["overlay"] = overlay_file
            overlay_format = image_file_format(overlay_file) or "PNG"
        paths.update({name: path for name, (path, _) in (extra_files or {}).items()})
        png = self.label_png()
        record = dict(info or {})
        record.update(self.to_json())
        del record["unlabeled_value"]  # the label map's -1; the PNG's value is given under label_png
        record["label_png"] = {"dtype": png.dtype.name, "unlabeled_value": PNG_UNLABELED[png.dtype.type]}
        base = relative_to or folder
        record["outputs"] = {name: os.path.relpath(path, base) for name, path in paths.items()}
        writers = {
            paths["overlay"]: lambda f: Image.fromarray(self.overlay() if overlay is None else overlay).save(
                f, format=overlay_format),
            paths["labels"]: lambda f: Image.fromarray(png).save(f, format="PNG"),
            target + ".json": lambda f: f.write(json.dumps(record, indent=2, ensure_ascii=False).encode("utf-8")),
            **{path: writer for path, writer in (extra_files or {}).values()},
        }
        _write_files_together(writers)
        paths["json"] = target + ".json"
        return paths

    def to_json(self) -> Dict[str, Any]:
        """JSON-serialisable summary: vocabulary, image size, per-class area and mean probability."""
        areas = self.areas()
        mean_probs = self.mean_probabilities()
        return {
            "image_size": {"height": self.height, "width": self.width},
            "classes": list(self.classes),
            "background": self.background,
            "background_classes": list(self.background_classes),
            "unlabeled_value": UNLABELED,
            "unlabeled_area": self.unlabeled_area,
            "per_class": [
                {"index": i, "name": name, "area": areas[name], "mean_probability": mean_probs[name]}
                for i, name in enumerate(self.classes)
            ],
        }


#: Image files :meth:`SegmentationResult.save` writes per input: ``<target><suffix>``.
IMAGE_OUTPUT_SUFFIXES = {"overlay": "_overlay.png", "labels": "_labels.png"}


def _write_files_together(writers: Dict[str, Any]) -> None:
    """Write each ``path`` with ``writer(binary file)`` under a temporary name beside it, then
    rename them all. A failure while writing (a full disk, no permission, or a writer's own
    error) leaves none of the files and no temporary one; an ``OSError`` becomes a one-line
    :class:`CATSegError` naming the path, anything else is raised as it is. (The renames come
    last, all in one folder; one that fails after another succeeded would leave the files
    renamed before it.)"""
    for path in writers:
        if os.path.isdir(path):
            raise CATSegError(f"cannot write {path!r}: a folder of that name is in the way")
    temporaries = {path: temporary_path(path) for path in writers}
    path = None
    try:
        for path, writer in writers.items():
            with open(temporaries[path], "wb") as f:
                writer(f)
        for path, temporary in temporaries.items():
            os.replace(temporary, path)
    except BaseException as e:
        for temporary in temporaries.values():
            if os.path.exists(temporary):
                os.remove(temporary)
        if isinstance(e, OSError):
            raise CATSegError(f"cannot write {path!r}: {e.strerror or e}") from None
        raise


def _get_probs(self: SegmentationResult) -> Optional[torch.Tensor]:
    if self._probs is None and self.class_maps is not None:
        self._probs = self.probabilities()
    return self._probs


def _set_probs(self: SegmentationResult, value: Optional[torch.Tensor]):
    self._probs = value


# ``probs`` is a dataclass field (constructor argument) computed on first access
SegmentationResult.probs = property(_get_probs, _set_probs, doc="``[T, H, W]`` float32 probabilities (CPU).")


@dataclass
class DenseFeatures:
    """Per-pixel CLIP-aligned embeddings of one image (and optionally its cost volume).

    The image is resized as for segmentation (``ResizeShortestEdge`` to ``resized_size``),
    padded at the bottom/right to ``padded_size`` (multiple of the model's size
    divisibility) and the padded image is resized to the CLIP input ``input_size``; grid cell
    ``(i, j)`` of the ``[h, w]`` maps covers that patch of the padded image.

    Attributes:
        embeddings: ``float32`` ``[C, h, w]``, the backbone's ``dense_embeddings`` (not
            normalised).
        classes: the vocabulary (empty without one).
        text_embeddings: ``[T, P, C]`` L2-normalised class embeddings (``P`` prompt
            templates), or ``None``.
        cost_volume: ``[T, h, w]`` cosine similarity of each pixel embedding with each class
            embedding (mean over the ``P`` templates; exact cosine for the released single
            template), or ``None``.
        image_size, resized_size, padded_size, input_size: ``(H, W)`` sizes described above.
    """

    embeddings: torch.Tensor
    classes: List[str]
    text_embeddings: Optional[torch.Tensor]
    cost_volume: Optional[torch.Tensor]
    image_size: Tuple[int, int]
    resized_size: Tuple[int, int]
    padded_size: Tuple[int, int]
    input_size: Tuple[int, int]

    def to_numpy(self) -> Dict[str, np.ndarray]:
        """Arrays for ``np.savez`` (sizes as int arrays, classes as a string array)."""
        out = {
            "embeddings": self.embeddings.numpy(),
            "classes": np.array(self.classes, dtype=str),
            "image_size": np.array(self.image_size),
            "resized_size": np.array(self.resized_size),
            "padded_size": np.array(self.padded_size),
            "input_size": np.array(self.input_size),
        }
        if self.cost_volume is not None:
            out["cost_volume"] = self.cost_volume.numpy()
            out["text_embeddings"] = self.text_embeddings.numpy()
        return out


# ---------------------------------------------------------------------------------- config
def available_devices() -> List[str]:
    """Devices this machine can run the model on: ``cpu``, then ``cuda``, ``cuda:0``, ... when
    CUDA is available, and ``mps`` on Apple GPUs."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def check_device(device: Union[str, torch.device]) -> str:
    """The validated device string; :class:`CATSegError` naming the value and the devices that
    exist here for an unknown type (``"tpu"``), CUDA without CUDA, or ``"cuda:3"`` on a machine
    with fewer GPUs."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise CATSegError(f"device must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__} {device!r}")
    available = available_devices()
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise CATSegError(f"unknown device {device!r}: available here: {', '.join(available)}") from None
    if parsed.type == "cpu":
        return device
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise CATSegError(f"device {device!r} requested but CUDA is not available here (available: cpu)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise CATSegError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(available: {', '.join(available)})"
            )
        return device
    if parsed.type == "mps" and "mps" in available:
        return device
    raise CATSegError(f"device {device!r} is not available: available here: {', '.join(available)}")


def _check_batch_size(batch_size) -> Optional[int]:
    """``None`` (the config's ``TEST.IMS_PER_BATCH``, 0 = auto) or a positive int."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise CATSegError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return int(batch_size)


# ------------------------------------------------------------------------- offline checks
#: Seconds to wait for the weights host before reporting that it cannot be reached.
CONNECT_TIMEOUT_S = 3.0


def _host_reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds. Behind an
    HTTP(S) proxy the direct connection says nothing, so the answer is then ``True`` (the
    download itself decides)."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _pretrained_cached(pretrained_cfg: Dict[str, Any]) -> bool:
    """Whether open_clip would find this pretrained entry without downloading (same order of
    sources as ``open_clip.download_pretrained``: local file, Hugging Face hub, URL cache).

    It asks what open_clip's own download would use: huggingface_hub's cache as that package
    read it at import (not :func:`cat_seg.hub.hub_cache_dir`, which reads the environment now),
    open_clip's safetensors alternatives (a private helper, absent in older releases: then
    only the file name itself) and open_clip's URL cache ``~/.cache/clip``."""
    from open_clip import pretrained as oc_pretrained

    if pretrained_cfg.get("file"):
        return os.path.isfile(pretrained_cfg["file"])
    hub = pretrained_cfg.get("hf_hub", "")
    if hub and oc_pretrained.has_hf_hub():
        from huggingface_hub import try_to_load_from_cache

        model_id, filename = os.path.split(hub)
        filename = filename or oc_pretrained.HF_WEIGHTS_NAME
        alternatives = getattr(oc_pretrained, "_get_safe_alternatives", lambda name: [])
        return any(isinstance(try_to_load_from_cache(model_id, name), str)
                   for name in [*alternatives(filename), filename])
    url = pretrained_cfg.get("url", "")
    return bool(url) and os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)))


def check_weights_available(cfg, options: str = "api") -> None:
    """Fail in seconds, before the model is built, when CLIP weights would have to be
    downloaded but cannot be (``HF_HUB_OFFLINE`` set, or the hub not reachable within
    :data:`CONNECT_TIMEOUT_S`): a :class:`CATSegError` saying what to pass instead. Without
    this check open_clip retries the download for about a minute and raises a traceback.

    ``MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS`` ``none`` / a file / a cached download need no network,
    and neither does any CLIP tag when ``MODEL.WEIGHTS`` is set (the checkpoint holds CLIP:
    :class:`OpenVocabSegmenter` then does not fetch it).

    ``options``: how the message names the settings: ``"api"`` (``weights=`` and ``opts=``
    of :meth:`OpenVocabSegmenter.from_config`), ``"demo"`` (``--weights FILE``, ``--opts KEY
    VALUE``) or ``"config"`` (``KEY VALUE`` pairs, as train_net.py takes them).
    """
    from .hub import hub_offline
    from .modeling.clip.builder import CLIPLoadError, clip_weights_source, fetch_command
    from .modeling.clip.model_configs import resolve_clip_arch

    if options not in ("api", "demo", "config"):
        raise ValueError(f"check_weights_available(options={options!r}): expected 'api', 'demo' or 'config'")
    head = cfg.MODEL.SEM_SEG_HEAD
    weights = str(head.CLIP_WEIGHTS)
    if cfg.MODEL.WEIGHTS:
        return
    try:
        resolved = resolve_clip_arch(head.CLIP_PRETRAINED)
        kind, source, pretrained_cfg = clip_weights_source(resolved, weights)
    except (ValueError, CLIPLoadError) as e:  # a CLIP file not found, an unknown tag or architecture
        raise CATSegError(error_line(e, with_type=False)) from None
    if kind != "pretrained" or _pretrained_cached(pretrained_cfg):
        return
    import open_clip

    tag = source.split("/", 1)[1]
    if pretrained_cfg.get("hf_hub") and open_clip.pretrained.has_hf_hub():
        from huggingface_hub import constants

        host = constants.ENDPOINT  # what open_clip's hf_hub_download uses (read at import)
    else:
        host = pretrained_cfg.get("url", "")
    if hub_offline() and pretrained_cfg.get("hf_hub"):
        reason = "HF_HUB_OFFLINE is set"
    elif not _host_reachable(host):
        reason = f"{host} cannot be reached"
    else:
        return
    fetch = fetch_command(source)
    key = "MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS"
    checkpoint, clip_file, no_clip = {
        "api": ("weights=FILE", f'opts=["{key}", FILE]', f'opts=["{key}", "none"]'),
        "demo": ("--weights FILE / MODEL.WEIGHTS", f"--opts {key} FILE", f"--opts {key} none"),
        "config": ("MODEL.WEIGHTS FILE", f"{key} FILE", f"{key} none"),
    }[options]
    raise CATSegError(
        f"CLIP weights {resolved.name}/{tag} ({key} {weights}) are not downloaded and {reason}: pass a CAT-Seg "
        f"checkpoint ({checkpoint}, it holds the CLIP weights too), a local CLIP file ({clip_file}), {no_clip} "
        f"(random CLIP, for testing only), or fetch them once with internet: {fetch}"
    )


def build_config(config_file: Optional[str] = None, weights: Optional[str] = None, device: Optional[str] = None,
                 opts: Optional[Sequence[str]] = None, opts_source: str = "the opts argument"):
    """A frozen detectron2 config for inference, with clear errors for user mistakes.

    ``weights`` overrides ``MODEL.WEIGHTS`` (after ``opts``): a checkpoint file, a URL or a
    released name (``catseg-vitb``, ``catseg-vitl``: :mod:`cat_seg.hub`, downloaded when the
    model loads); without ``config_file`` a released name brings its own config. ``device``
    (default: cuda when available, else cpu; validated with :func:`check_device`) sets
    ``MODEL.DEVICE``. Checks that the config file and a local weights file exist.
    ``MODEL.COMPILE`` auto becomes False here (interactive use; set True explicitly to compile).
    ``opts_source`` names ``opts`` in errors (the programs pass ``"the command line"``).
    """
    from detectron2.config import get_cfg

    from .cli.errors import UserError, merge_config  # the command lines' config merge (pure Python)
    from .config import add_cat_seg_config, check_config_values
    from .hub import (check_released_config, clip_weights_from_checkpoint, get_released, released_name_suggestion,
                      weights_file_missing)
    released = get_released(weights) if weights is not None else None
    if not config_file and released is not None:
        config_file = released.config_file
    if not config_file:
        raise CATSegError("no config file given: pass a YAML config (e.g. configs/vitb_384.yaml) or released weights")
    opts = list(opts or [])
    try:  # a missing file, YAML errors, unknown keys (naming the closest one), bad values: one line
        cfg = merge_config(add_cat_seg_config(get_cfg()), config_file, opts, opts_source)
    except UserError as e:
        raise CATSegError(str(e)) from None
    if weights is not None:
        cfg.MODEL.WEIGHTS = os.fspath(weights)
    check_released_config(cfg)
    weights = cfg.MODEL.WEIGHTS
    if weights_file_missing(weights):
        what = ("is a directory; expected a checkpoint file" if os.path.isdir(weights) else
                "not found" + released_name_suggestion(weights))
        raise CATSegError(f"weights file {weights!r} {what}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.MODEL.DEVICE = check_device(device)
    clip_weights_from_checkpoint(cfg)  # MODEL.WEIGHTS set: CLIP comes from it, no download
    try:  # the values the model would reject once built, as one line
        check_config_values(cfg)
    except ValueError as e:
        raise CATSegError(str(e)) from None
    _eager_unless_asked(cfg)
    cfg.freeze()
    return cfg


def _eager_unless_asked(cfg) -> None:
    """``MODEL.COMPILE`` auto -> False in ``cfg`` (unfrozen). Interactive use (demo, web app,
    this API) stays eager unless MODEL.COMPILE True is asked for: the first compiled call takes
    over a minute (82 s for ViT-B on an H200, docs/benchmarks.md) and a handful of images
    never repays it; training and evaluation keep the auto default (compiled on CUDA)."""
    from .modeling.meta_arch.cat_seg import compile_is_auto

    if compile_is_auto(cfg.MODEL.COMPILE):
        cfg.MODEL.COMPILE = False


# ---------------------------------------------------------------------------------- segmenter
def _clip_from_checkpoint(cfg):
    """An unfrozen copy of ``cfg`` for building the segmenter's model, with
    :func:`~cat_seg.hub.clip_weights_from_checkpoint` applied."""
    from .hub import clip_weights_from_checkpoint

    cfg = cfg.clone()
    cfg.defrost()
    clip_weights_from_checkpoint(cfg)
    return cfg


class OpenVocabSegmenter:
    """CAT-Seg inference on arbitrary images with an arbitrary vocabulary.

    Args:
        cfg: a detectron2 config with the cat-seg keys (see :func:`build_config`);
            ``MODEL.WEIGHTS`` is loaded with :class:`~cat_seg.checkpoint.CATSegCheckpointer`
            when set (otherwise the CAT-Seg head keeps its random initialisation).

    Use :meth:`from_config` to build one from a config file. Preprocessing is detectron2's
    test-time ``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)`` (no side below one
    pixel); probabilities
    are returned at the original image size.

    One segmenter serves one call at a time: its text-embedding cache and CUDA graphs are not
    locked, so threads that segment at once need a segmenter each, or a lock around the calls
    (the web app's queue runs one segmentation at a time).
    """

    def __init__(self, cfg):
        from detectron2.data import transforms as T
        from detectron2.modeling import build_model

        from . import modeling  # noqa: F401  (registers the model)
        from .checkpoint import CATSegCheckpointer, CheckpointError
        from .data.dataset_mappers.semantic_mapper import InferenceDatasetMapper
        from .modeling.clip.builder import CLIPLoadError

        self.cfg = _clip_from_checkpoint(cfg)
        self._noted_vocabularies = set()  # vocabularies warned about (_note_shared_synonyms)
        self.cfg.MODEL.DEVICE = check_device(self.cfg.MODEL.DEVICE)
        _eager_unless_asked(self.cfg)  # also for a config not made by build_config
        self.cfg.freeze()
        check_weights_available(self.cfg)
        try:
            self.model = build_model(self.cfg)
        except CLIPLoadError as e:  # a CLIP weights file or tag that does not fit: a user error
            raise CATSegError(error_line(e, with_type=False)) from None
        self.model.eval()
        self.weights = self.cfg.MODEL.WEIGHTS or None
        if self.weights:
            try:
                CATSegCheckpointer(self.model).load(self.weights)
            except CheckpointError as e:  # its message names the file and what is wrong
                raise CATSegError(f"cannot load weights: {error_line(e, with_type=False)}") from None
        else:
            logger.warning("no MODEL.WEIGHTS given: the CAT-Seg model is randomly initialised apart from CLIP")
        # the evaluation's test augmentations (the resize), so that API results are benchmark results
        self.augmentations = T.AugmentationList(InferenceDatasetMapper.from_config(self.cfg)["augmentations"])

    @classmethod
    def from_config(cls, config_file: Optional[str] = None, weights: Optional[str] = None,
                    device: Optional[str] = None, opts: Optional[Sequence[str]] = None) -> "OpenVocabSegmenter":
        """Build from a config file (``configs/vitb_384.yaml``, ...) and/or released weights.

        Args:
            config_file: YAML config (optional with a released name as ``weights``).
            weights: checkpoint path or released name (``catseg-vitb``, ``catseg-vitl``; default:
                the config's ``MODEL.WEIGHTS``).
            device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; default cuda if available, else cpu.
            opts: extra ``["KEY", "VALUE", ...]`` config overrides.
        """
        return cls(build_config(config_file, weights=weights, device=device, opts=opts))

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def precision(self) -> str:
        """The precision inference computes in on :attr:`device`: ``"fp32"``, ``"bf16"`` or
        ``"fp16"`` (``MODEL.PRECISION`` resolved; ``auto`` is bf16 where the device computes it
        natively). ``MODEL.PRECISION fp32`` computes as the official code."""
        from .modeling.precision import precision_name

        return precision_name(self.model.inference_dtype())

    def model_info(self, config_file: Optional[str] = None, opts: Sequence[str] = ()) -> Dict[str, Any]:
        """What ran, for the ``"model"`` entry of a result's JSON (the demo's and the web app's):
        the config file and ``opts`` it was built from (as the caller gave them), the weights,
        device, CLIP weights, whether the sliding window ran and the precision that ran."""
        return {
            "config_file": config_file,
            "weights": self.weights,
            "device": str(self.device),
            "opts": list(opts),
            "clip": self.cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED,
            "sliding_window": bool(self.cfg.TEST.SLIDING_WINDOW),
            "precision": self.precision,  # MODEL.PRECISION auto resolved
        }

    # ------------------------------------------------------------------ preprocessing
    def _prepare(self, image: np.ndarray) -> Dict[str, Any]:
        """RGB ``[H, W, 3]`` -> model input dict (resized CHW uint8 tensor, original size)."""
        from detectron2.data.transforms import AugInput

        height, width = image.shape[:2]
        transformed = AugInput(image)
        self.augmentations(transformed)
        resized = transformed.image
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width}

    @staticmethod
    def _check_background(background) -> Union[None, str, float]:
        if background is None or background == "prompts":
            return background
        if isinstance(background, numbers.Real) and not isinstance(background, (bool, np.bool_)):  # np.float32 too
            if not 0.0 <= float(background) <= 1.0:
                raise CATSegError(f"background threshold must be in [0, 1], got {background}")
            return float(background)
        raise CATSegError(f"background must be None, 'prompts' or a probability threshold, got {background!r}")

    @staticmethod
    def background_prompts_for(classes: Sequence[str]) -> List[str]:
        """:data:`BACKGROUND_PROMPTS` minus those naming a user class: any of its synonyms, in
        the singular or with a plural ``s`` (``"lawn, grass"`` and ``"trees"`` remove the
        prompts ``grass`` and ``tree``)."""
        def forms(name: str) -> set:
            name = " ".join(name.lower().split())
            return {name, name[:-1] if name.endswith("s") else name + "s"}

        taken = set().union(*(forms(synonym) for c in classes for synonym in c.split(",") if synonym.strip()))
        return [p for p in BACKGROUND_PROMPTS if p.lower() not in taken]

    def _note_shared_synonyms(self, names: List[str]) -> None:
        """The warning of :func:`shared_first_synonym_note`, once per vocabulary this
        segmenter is given (a folder segmented in batches, or a page's repeated requests, would
        repeat it with every call)."""
        key = tuple(names)
        if key in self._noted_vocabularies:
            return
        self._noted_vocabularies.add(key)
        note = shared_first_synonym_note(names, "the class list")
        if note:
            logger.warning(note)

    # ------------------------------------------------------------------ segmentation
    def __call__(self, images: Union[ImageInput, Sequence[ImageInput]], classes: Union[str, Sequence[str]],
                 background: Union[None, str, float] = None, batch_size: Optional[int] = None):
        """Segment one image or a list of images.

        Args:
            images: a path, numpy RGB array or PIL image, or a list of those.
            classes: the vocabulary (list of names or a string, see :func:`parse_vocabulary`).
            background: ``None`` (every pixel gets a class), ``"prompts"`` (add
                :data:`BACKGROUND_PROMPTS`; their pixels become unlabeled) or a float
                threshold (pixels whose best probability is below it become unlabeled).
            batch_size: images per forward, a positive int (default ``None``: the config's
                ``TEST.IMS_PER_BATCH``, whose 0 means 8 on CUDA and 1 on CPU; each image in a
                forward holds about 100 MB of working memory for ViT-B at 171 classes). Images
                of any sizes share a forward: each is padded and resized on its own, so batching
                changes results only by float rounding (probabilities within about 1e-6; a
                pixel where two classes are that close may change label).
        Returns:
            a :class:`SegmentationResult`, or a list of them for a list input (an empty
            list for an empty list).
        """
        single = not isinstance(images, (list, tuple))
        inputs = [images] if single else list(images)
        names = parse_vocabulary(classes)
        self._note_shared_synonyms(names)
        background = self._check_background(background)
        batch_size = _check_batch_size(batch_size)
        if batch_size is None:  # the working memory grows with the batch: bounded by default
            from .engine.trainer import resolve_test_batch_size

            batch_size = resolve_test_batch_size(self.cfg)
        if not inputs:
            return []
        extra = self.background_prompts_for(names) if background == "prompts" else []
        arrays = _load_images(inputs)
        sources = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else None for x in inputs]
        probs = self._predict([self._prepare(a) for a in arrays], names + extra, batch_size)
        results = [
            self._result(a, p, names, extra, background, s) for a, p, s in zip(arrays, probs, sources)
        ]
        return results[0] if single else results

    @staticmethod
    def _forward_groups(prepared: List[Dict], batch_size: int) -> List[List[int]]:
        """Indexes of the inputs that go through one forward together: ``batch_size`` at a time
        in input order (the model prepares each image of a batch on its own, any size)."""
        return [list(range(start, min(start + batch_size, len(prepared))))
                for start in range(0, len(prepared), batch_size)]

    def _predict(self, prepared: List[Dict], names: List[str], batch_size: int) -> List[ClassMaps]:
        """Model-resolution per-class maps (:class:`~cat_seg.modeling.postprocess.ClassMaps`)
        of every prepared input, from which labels, confidence and (on demand) probabilities
        are computed at the original image size."""
        out: List[Optional[ClassMaps]] = [None] * len(prepared)
        request = OutputRequest(probabilities=False, maps=True)  # per input: the model is not modified
        with torch.no_grad():
            for group in self._forward_groups(prepared, batch_size):
                results = self.model([dict(prepared[i], output_request=request) for i in group], class_names=names)
                for i, r in zip(group, results):
                    out[i] = r["sem_seg_maps"]
        return out

    @staticmethod
    def _result(image, maps: ClassMaps, names, extra, background, source) -> SegmentationResult:
        """Labels and confidence streamed over the classes of ``maps`` (no ``[T, H, W]`` maps);
        the maps are moved to the CPU and kept for the probabilities, computed on demand."""
        num = len(names)
        labels, scores = maps.labels_and_confidence()
        labels = labels.to(torch.int32)
        if background == "prompts":
            labels[labels >= num] = UNLABELED
        elif background is not None:
            labels[scores < background] = UNLABELED
        return SegmentationResult(
            image=image,
            classes=list(names),
            label_map=labels.cpu().numpy(),
            background=background,
            background_classes=list(extra),
            source=source,
            confidence=scores.float().cpu().numpy(),
            class_maps=maps.to("cpu"),
        )

    # ------------------------------------------------------------------ dense features
    def dense_features(self, image: ImageInput, class_names: Union[None, str, Sequence[str]] = None) -> DenseFeatures:
        """Per-pixel CLIP-aligned embeddings of ``image`` and, with a vocabulary, its cost volume.

        The whole (resized, padded) image is encoded once, as in the whole-image inference
        (its inputs, :meth:`~cat_seg.modeling.CATSeg.whole_image_inputs`, and the model's
        precision: under bf16 the embeddings are the bf16 ones the segmentation used, returned
        as fp32); see :class:`DenseFeatures` for the geometry. The cost volume is the model's
        (its aggregator's :meth:`~cat_seg.modeling.Aggregator.compute_cost_volume`, the
        cosine :func:`~cat_seg.modeling.cosine_cost_volume` for CAT-Seg's) of the returned
        embeddings with the class text embeddings.
        """
        from .modeling import cosine_cost_volume
        from .modeling.precision import autocast

        names = parse_vocabulary(class_names) if class_names is not None else []
        array = load_image(image)
        resized = self._prepare(array)["image"]
        model = self.model
        with torch.no_grad(), autocast(model.inference_dtype(), model.device):
            clip_input, (padded_size,) = model.whole_image_inputs([resized.to(model.device)])
            embeddings = model.backbone(clip_input)["dense_embeddings"].float()
            text = cost = None
            if names:
                text = model.text_embeddings(names).float()
        if names:  # the cost the model aggregates (an Aggregator subclass may make another)
            aggregator = getattr(model.sem_seg_head, "aggregator", None)
            compute = getattr(aggregator, "compute_cost_volume", cosine_cost_volume)
            cost = compute(embeddings, text)[0].mean(dim=0).cpu()
            text = text.to("cpu", copy=True)  # a copy: the model's text-embedding cache stays its own
        return DenseFeatures(
            embeddings=embeddings[0].cpu(),
            classes=names,
            text_embeddings=text,
            cost_volume=cost,
            image_size=tuple(array.shape[:2]),
            resized_size=tuple(resized.shape[-2:]),
            padded_size=tuple(padded_size),
            input_size=tuple(model.backbone.resolution),
        )

