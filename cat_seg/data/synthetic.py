"""Embedded toy open-vocabulary benchmark: patterned, coloured shapes on textured backgrounds.

16 classes = 4 colours x 4 fill patterns, named like ``"red striped"`` (the vocabularies
``synthetic_val`` and ``synthetic_train`` of :mod:`cat_seg.data.catalog`); the outline of each
object (circle, square, triangle or star) is random and not part of its class. The train split
uses the 12 *seen* combinations only; 4 *unseen* combinations (one per colour and one per
pattern, so every colour word and every pattern word is still seen in training) appear only in
the val split, which contains all 16 classes. A model that learns colour and pattern from the
class names can segment unseen combinations: the open-vocabulary setting in miniature.

Why patterns and not outlines as the second attribute: the toy run trains a 4-block CLIP from
scratch on a CPU in minutes. Colour and fill pattern are visible inside every CLIP patch;
telling a circle from a square needs the whole outline, which such a model does not learn in
that budget (measured with the same tiny CLIP and 1500 steps of its dense pre-training: 16.5
val mIoU over the 16 colour x outline classes, 38.2 over colour x pattern classes).

On-disk format is the one of the real benchmarks (same loader, same evaluator):
``<root>/synthetic/images/{train,val}/<id>.jpg`` and
``<root>/synthetic/annotations/{train,val}/<id>.png`` (uint8). Train labels index the 12
seen classes (``synthetic_train.json``), val labels the 16 classes (``synthetic_val.json``);
both class lists are also written to ``<root>/synthetic_{train,val}.json`` (with the default
root: ``datasets/synthetic_val.json``, the file the demo commands pass as ``--vocab-file``).
The background is not a class: its pixels carry the ignore value 255, so only shape pixels are
scored. ``<root>/synthetic/synthetic_info.json`` records the generation parameters and is
written last (its presence marks a complete benchmark).

Generation is deterministic from the seed (each image has its own random stream derived from
``(seed, split, index)``) and takes a few seconds for the default 400 + 100 images of 256x256.
"""
import functools
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..cli.errors import ArgumentParser
from .catalog import class_names, dataset_root, get_layout
from .prepare.io import atomic_write_bytes

COLOURS = {  # RGB
    "red": (210, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 70, 215),
    "yellow": (235, 205, 30),
}
PATTERNS = ("striped", "dotted", "speckled", "plain")
# outlines are drawn at random; they are not part of the class
SHAPES = ("circle", "square", "triangle", "star")
TRAIN = get_layout("synthetic_train_sem_seg")
VAL = get_layout("synthetic_val_sem_seg")
IGNORE_LABEL = VAL.ignore_label
INFO_FILE = "synthetic/synthetic_info.json"
FORMAT_VERSION = 2


def val_class_names() -> List[str]:
    """All 16 classes (val label order): colour-major, ``"red striped", "red dotted", ...``.

    Each name is ``"<colour> <pattern>"`` with a colour of :data:`COLOURS` and a pattern of
    :data:`PATTERNS`."""
    return class_names(VAL.class_key)


def train_class_names() -> List[str]:
    """The 12 seen classes (train label order), in the order of :func:`val_class_names`.

    The 4 unseen ones are one per colour and one per pattern (a diagonal of the colour x
    pattern grid), so every colour word and every pattern word is seen in training."""
    return class_names(TRAIN.class_key)


def seen_class_indices() -> List[int]:
    """Indices into :func:`val_class_names` of the classes seen in training."""
    seen = set(train_class_names())
    return [i for i, name in enumerate(val_class_names()) if name in seen]


def unseen_class_indices() -> List[int]:
    """Indices into :func:`val_class_names` of the classes never seen in training."""
    seen = set(train_class_names())
    return [i for i, name in enumerate(val_class_names()) if name not in seen]


@dataclass(frozen=True)
class SyntheticConfig:
    """Generation parameters (stored in ``synthetic_info.json``)."""

    num_train: int = 400
    num_val: int = 100
    image_size: int = 256
    seed: int = 0


# ----------------------------------------------------------------------------- rendering


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel row and column coordinates (float32) of a ``size`` x ``size`` image."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-saturation texture: smooth noise, an optional stripe/checker pattern, grain."""
    base = (rng.uniform(80, 175) + rng.uniform(-12, 12, size=3)).astype(np.float32)
    cells = int(rng.integers(3, 9))
    # one smooth field for the luminance (channel 0) and a faint colour tint (channels 1..3)
    noise = rng.standard_normal((cells, cells, 4), dtype=np.float32)
    noise *= np.array([rng.uniform(12, 30), 6, 6, 6], np.float32)
    smooth = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    kind = rng.integers(3)
    if kind == 0:  # stripes
        yy, xx = _grid(size)
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(8, 28)
        pattern = np.sin((xx * np.float32(np.cos(angle)) + yy * np.float32(np.sin(angle)))
                         * np.float32(2 * np.pi / period))
    elif kind == 1:  # checker
        cell = rng.uniform(10, 32)
        parity = (np.arange(size) // cell).astype(np.int32) % 2
        pattern = (parity[:, None] ^ parity[None, :]).astype(np.float32) * 2 - 1
    else:  # plain
        pattern = np.zeros((size, size), np.float32)
    luminance = smooth[:, :, 0] + pattern * np.float32(rng.uniform(6, 18))
    image = smooth[:, :, 1:] + luminance[:, :, None] + base
    grain = np.empty((size, size, 3), np.float32)
    cv2.setRNGSeed(int(rng.integers(2**31)))
    cv2.randn(grain, 0.0, 4.0)
    return image + grain


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if shape == "square":
        k = np.arange(4)
        radii = np.full(4, r)
        angles = angle + k * np.pi / 2
    elif shape == "triangle":
        k = np.arange(3)
        radii = np.full(3, r * 1.15)
        angles = angle + k * 2 * np.pi / 3
    elif shape == "star":
        k = np.arange(10)
        radii = np.where(k % 2 == 0, r * 1.2, r * 0.55)
        angles = angle + k * np.pi / 5
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return np.round(points).astype(np.int32)


def _draw(canvas: np.ndarray, shape: str, cx, cy, r, angle, value) -> None:
    """Draw a filled shape (no anti-aliasing, so image and label agree pixel for pixel)."""
    if shape == "circle":
        cv2.circle(canvas, (int(round(cx)), int(round(cy))), int(round(r * 0.95)), value,
                   thickness=-1, lineType=cv2.LINE_8)
    else:
        cv2.fillPoly(canvas, [_polygon(shape, cx, cy, r, angle)], value, lineType=cv2.LINE_8)


def _fill(pattern: str, rng: np.random.Generator, size: int, rgb: np.ndarray) -> np.ndarray:
    """``size`` x ``size`` x 3 float32 fill of one object: ``rgb`` with a darker pattern.

    Stripe and dot periods are 15-22 pixels at 256x256 (8-11 at the toy run's 128x128 input):
    coarse enough to survive the downscaling, fine enough that each 16x16 CLIP patch sees one
    or two; specks are 3x3 pixel cells darkened at random."""
    yy, xx = _grid(size)
    if pattern == "striped":
        angle, period = rng.uniform(0, np.pi), rng.uniform(16, 22)
        lit = np.sin((xx * np.float32(np.cos(angle)) + yy * np.float32(np.sin(angle)))
                     * np.float32(2 * np.pi / period)) > 0
    elif pattern == "dotted":
        spacing = rng.uniform(15, 19)
        ox, oy = rng.uniform(0, spacing, size=2)
        lit = ((xx + ox) % spacing - spacing / 2) ** 2 + ((yy + oy) % spacing - spacing / 2) ** 2 \
            >= (0.3 * spacing) ** 2
    elif pattern == "speckled":  # random dark 3x3 specks, no period and no orientation
        cells = rng.random((size // 3 + 1, size // 3 + 1)) < 0.4
        lit = ~np.kron(cells, np.ones((3, 3), bool))[:size, :size]
    elif pattern == "plain":
        lit = np.ones((size, size), bool)
    else:
        raise ValueError(f"unknown fill pattern {pattern!r}; expected one of {PATTERNS}")
    return np.where(lit[..., None], rgb.astype(np.float32), (0.35 * rgb).astype(np.float32))


def render_sample(rng: np.random.Generator, size: int, classes: Sequence[int],
                  names: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """One image (RGB uint8) and its label map (index into ``names``, background 255) with
    a shape for each entry of ``classes`` that fits (at least the first one)."""
    image = _background(rng, size)
    label = np.full((size, size), IGNORE_LABEL, np.uint8)
    placed: List[Tuple[float, float, float]] = []
    for n, class_index in enumerate(classes):
        colour, pattern = names[class_index].split(" ")
        for _ in range(30):
            r = rng.uniform(0.12, 0.21) * size
            cx, cy = rng.uniform(r * 1.1, size - r * 1.1, size=2)
            if all(np.hypot(cx - x, cy - y) > 0.75 * (r + q) for x, y, q in placed):
                break
        else:
            if n:
                continue  # no room left: fewer shapes in this image
        placed.append((cx, cy, r))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        angle = rng.uniform(0, 2 * np.pi)
        mask = np.zeros((size, size), np.uint8)
        _draw(mask, shape, cx, cy, r, angle, 1)
        rgb = np.clip(np.array(COLOURS[colour]) * rng.uniform(0.85, 1.1)
                      + rng.uniform(-18, 18, size=3), 0, 255)
        inside = mask.astype(bool)
        shading = (_grid(size)[0][inside] - cy) / size * rng.uniform(-30, 30)
        image[inside] = (_fill(pattern, rng, size, rgb)[inside] + shading[:, None]
                         + rng.normal(0, 5, (int(inside.sum()), 3)))
        label[inside] = class_index
    image = cv2.GaussianBlur(np.clip(image, 0, 255).astype(np.uint8), (3, 3), 0.6)
    return image, label


def _split_samples(split: str, count: int, config: SyntheticConfig):
    """Yield ``(index, image, label)`` for one split."""
    names = train_class_names() if split == "train" else val_class_names()
    split_code = 0 if split == "train" else 1
    for i in range(count):
        rng = np.random.default_rng([config.seed, split_code, i])
        num_shapes = int(rng.integers(1, 4))
        # the first shape cycles through the classes so every class occurs
        classes = [i % len(names)] + [int(c) for c in rng.integers(len(names), size=num_shapes - 1)]
        image, label = render_sample(rng, config.image_size, classes, names)
        yield i, image, label


# ----------------------------------------------------------------------------- generation


def synthetic_root(root=None) -> Path:
    """Folder of the toy benchmark: ``<dataset root>/synthetic``."""
    return dataset_root(root) / Path(INFO_FILE).parent


def _info(config: SyntheticConfig) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        **asdict(config),
        "train_classes": train_class_names(),
        "val_classes": val_class_names(),
        "seen_classes": seen_class_indices(),
        "unseen_classes": unseen_class_indices(),
        "background": f"not a class, label {IGNORE_LABEL} (ignored)",
    }


def _complete(root: Path, config: SyntheticConfig) -> bool:
    info_path = root / INFO_FILE
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return False
    if info != _info(config):
        return False
    for layout, count in ((TRAIN, config.num_train), (VAL, config.num_val)):
        for folder, ext in ((layout.image_dir, layout.image_ext),
                            (layout.label_dir, layout.label_ext)):
            if len(list((root / folder).glob(f"*.{ext}"))) != count:
                return False
    return True


def split_metadata(layout) -> dict:
    """The seen / unseen class indices of the split ``layout`` (:data:`TRAIN`: all seen;
    :data:`VAL`: the training classes are seen), as the evaluator's metadata."""
    if layout is TRAIN:
        return {"seen_classes": list(range(layout.num_classes)), "unseen_classes": []}
    return {"seen_classes": seen_class_indices(), "unseen_classes": unseen_class_indices()}


def generated_split_size(layout, root=None, given_root: Optional[str] = None) -> int:
    """Images of the split ``layout`` (:data:`TRAIN` or :data:`VAL`) that the generation in
    ``root`` made, from its record (written last, removed first by :func:`generate_synthetic`).

    Raises :class:`~cat_seg.data.datasets.errors.DatasetNotFoundError` when there is no
    readable record: the generation did not finish (or the folders were made otherwise), so
    the splits may come from two runs. ``given_root``: the root given at registration (for
    the message)."""
    from .datasets.loader import _not_found

    info_path = dataset_root(root) / INFO_FILE
    try:
        info = json.loads(info_path.read_text())
        return int(info["num_train" if layout is TRAIN else "num_val"])
    except (OSError, ValueError, TypeError, KeyError) as e:
        if not info_path.parent.is_dir():  # never generated here
            raise _not_found(layout.name, f"folder {info_path.parent} not found", layout.prepare_command,
                             given_root) from None
        problem = "not found" if isinstance(e, FileNotFoundError) else f"unreadable ({type(e).__name__}: {e})"
        raise _not_found(layout.name, f"the toy benchmark's record {info_path} is {problem}: its generation did not "
                         "finish", layout.prepare_command, given_root) from None


def generate_synthetic(root=None, num_train: int = 400, num_val: int = 100,
                       image_size: int = 256, seed: int = 0, force: bool = False,
                       verbose: bool = True) -> Path:
    """Generate the toy benchmark under ``<root>/synthetic`` (``root`` defaults to
    ``$DETECTRON2_DATASETS``, else ``datasets``); returns that folder.

    Nothing is done when a complete benchmark with the same parameters is there (unless
    ``force``); otherwise the previous files are removed and everything is regenerated."""
    config = SyntheticConfig(num_train, num_val, image_size, seed)
    for name, value, least in (("num_train", num_train, 0), ("num_val", num_val, 1), ("image_size", image_size, 64),
                              ("seed", seed, 0)):
        if value < least:
            raise ValueError(f"{name}={value} (--{name.replace('_', '-')}): expected at least {least}")
    root = dataset_root(root)
    if root.exists() and not root.is_dir():  # the command line says so first (prepare.cli.checked_root)
        raise ValueError(f"dataset root {root} is a file; expected a folder (the toy benchmark goes to "
                         f"<root>/synthetic)")
    out = synthetic_root(root)
    for layout in (TRAIN, VAL):  # the class lists beside the data, for --vocab-file
        names = json.dumps(class_names(layout.class_key), indent=1, ensure_ascii=False) + "\n"
        atomic_write_bytes(root / f"{layout.class_key}.json", names.encode())
    if not force and _complete(root, config):
        if verbose:
            print(f"synthetic benchmark already complete in {out} (use --force to regenerate)")
        return out
    start = time.time()
    (root / INFO_FILE).unlink(missing_ok=True)
    for layout, count in ((TRAIN, num_train), (VAL, num_val)):
        for folder in (root / layout.image_dir, root / layout.label_dir):
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
        split = "train" if layout is TRAIN else "val"
        for i, image, label in _split_samples(split, count, config):
            ok_img, jpg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_JPEG_QUALITY, 95])
            ok_lab, png = cv2.imencode(".png", label)
            assert ok_img and ok_lab
            atomic_write_bytes(root / layout.image_dir / f"{i:06d}.jpg", jpg.tobytes())
            atomic_write_bytes(root / layout.label_dir / f"{i:06d}.png", png.tobytes())
    atomic_write_bytes(root / INFO_FILE, (json.dumps(_info(config), indent=1) + "\n").encode())
    if verbose:
        print(f"synthetic benchmark: {num_train} train + {num_val} val images of "
              f"{image_size}x{image_size}, {len(val_class_names())} classes "
              f"({len(unseen_class_indices())} unseen in training), written to {out} in "
              f"{time.time() - start:.1f} s")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI of ``datasets/prepare_synthetic.py``."""
    parser = ArgumentParser(
        description="Generate the synthetic open-vocabulary toy benchmark (coloured, patterned shapes).")
    parser.add_argument("--root", default=None,
                        help="dataset root (default: $DETECTRON2_DATASETS, else ./datasets); "
                             "files go to <root>/synthetic")
    parser.add_argument("--num-train", type=int, default=SyntheticConfig.num_train)
    parser.add_argument("--num-val", type=int, default=SyntheticConfig.num_val)
    parser.add_argument("--image-size", type=int, default=SyntheticConfig.image_size)
    parser.add_argument("--seed", type=int, default=SyntheticConfig.seed)
    parser.add_argument("--force", action="store_true", help="regenerate even if complete")
    args = parser.parse_args(argv)
    from .datasets.errors import DatasetError
    from .prepare.cli import checked_root

    try:
        # a regular file as the root is one line naming it (it was the OS's "File exists");
        # a missing root is made: the generator writes the data, it reads none
        root = checked_root(args.root, create=True)
        generate_synthetic(root, args.num_train, args.num_val, args.image_size, args.seed,
                           force=args.force)
    except (ValueError, DatasetError) as exc:
        from ..cli.errors import print_user_error

        return print_user_error(exc)
    return 0
