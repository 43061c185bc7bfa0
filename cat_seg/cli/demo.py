"""CAT-Seg demo (console command ``cat-seg-demo``; ``python demo/demo.py`` is a wrapper):
segment your own images, videos or webcam stream with your own class names.

Examples::

    cat-seg-demo --config-file configs/vitb_384.yaml --weights model_final.pth \\
        --input photos/ --output out/ --vocab "cat, dog, grass"
    cat-seg-demo --config-file configs/vitb_384.yaml --input "photos/*.jpg" \\
        --output out/ --vocab-file classes.txt --background prompts --opts MODEL.WEIGHTS model_final.pth

Vocabulary: ``--vocab "cat, dog"`` gives two classes. To give synonyms of one class, separate
classes with ``;`` instead: ``--vocab "person, human; dog"`` gives the classes ``person, human``
and ``dog`` (CAT-Seg convention: only the first synonym is fed to the model).
``--vocab-file`` reads a JSON array of class names or a text file with one class per line.
Without either, the config's ``MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON`` is the vocabulary (the one
the config evaluates with; COCO-Stuff's 171 classes with the released configs), said on stderr.

Outputs per image in ``--output`` (the input folder layout is mirrored, so files with the same
name in different folders do not collide):

* ``<stem>_overlay.png``: the image with coloured segments, class names and a legend;
* ``<stem>_labels.png``: the label map as an index PNG, value ``i`` = ``i``-th class of the
  vocabulary; uint8 when there are fewer than 255 classes (unlabeled = 255), else uint16
  (unlabeled = 65535);
* ``<stem>.json``: vocabulary, image size, per-class pixel area and mean probability, config,
  weights and device;
* ``<stem>_features.npz`` with ``--dense-features``: per-pixel CLIP embeddings and cost volume.

Videos (``--video-input``) and the webcam (``--webcam``) are processed frame by frame; with
``--output`` the overlays are written to ``<stem>_overlay.mp4``, otherwise shown in a window.
Exit status: 0 when every input was processed; 1 when some images could not be read or
segmented (they are skipped, the others processed and written, and a summary lists the
skipped files on stderr; an image that the model fails on, a bug or too little memory, has
its traceback logged once); 2 for a user error (bad option, config, weights, vocabulary, device, no readable
image, weights that would need a download without internet), reported as one ``error: ...``
line with nothing written; 130 when interrupted. The guide is ``docs/segment_your_images.md``.
"""
import argparse
import glob
import json
import logging
import os
import re
import sys
import warnings
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..api import (
    IMAGE_EXTENSIONS,
    IMAGE_OUTPUT_SUFFIXES,
    CATSegError,
    OpenVocabSegmenter,
    SegmentationResult,
    build_config,
    check_weights_available,
    image_file_format,
    load_image,
    parse_vocabulary,
    read_vocabulary_file,
)
from ..utils import atomic_write, error_line, resolve_path
from .errors import ArgumentParser, print_user_error

logger = logging.getLogger(__name__)

WINDOW_NAME = "CAT-Seg"
#: Exit status when some images could not be read or segmented (skipped; the others were written).
EXIT_SOME_FAILED = 1
#: Images the model failed on (an unexpected error) before any succeeded that end the run with
#: the error itself: then nothing works (a broken set-up), not one odd image.
FAILURES_BEFORE_ANY_SUCCESS = 3
#: Exit status of a user error (one ``error: ...`` line).
EXIT_USER_ERROR = 2


def default_config(weights: Optional[str] = None) -> str:
    """The config used without ``--config-file``: a released checkpoint's own config for
    ``--weights catseg-vitb``/``catseg-vitl``, else ``configs/vitb_384.yaml``; both resolved
    against the checkout this package is installed from, so the command works from any directory."""
    from ..hub import get_released

    released = get_released(weights) if weights else None
    return resolve_path(released.config_file if released else os.path.join("configs", "vitb_384.yaml"))


def get_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="cat-seg-demo",
        description="CAT-Seg open-vocabulary segmentation demo (guide: docs/segment_your_images.md)",
        epilog="exit status: 0 all inputs processed, 1 some images unreadable or failed (skipped, listed on "
               "stderr), "
               "2 user error (one 'error:' line)",
    )
    parser.add_argument("--config-file", default=None, metavar="FILE",
                        help="path to config file (default: the config of a released --weights name, "
                             "else configs/vitb_384.yaml)")
    parser.add_argument("--weights", default=None,
                        help="checkpoint file, or a released name: catseg-vitb, catseg-vitl (downloaded once; "
                             "without --config-file a released name also picks its config, which --opts "
                             "MODEL.WEIGHTS does not)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, globs (quote them) or directories (searched recursively)")
    source.add_argument("--video-input", help="a video file")
    source.add_argument("--webcam", action="store_true", help="take frames from the webcam")
    parser.add_argument("--output", help="output directory (default: show the results in a window); as in the "
                                         "official demo, an image file name (out.jpg) takes the overlay of one input "
                                         "image, with <name>_labels.png and <name>.json beside it, and a video file "
                                         "name (out.mp4) the overlay of --video-input / --webcam")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--vocab", help='class names, "cat, dog, grass"; use ";" between classes to give ", " synonyms '
                                       "(default: the config's MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON)")
    vocab.add_argument("--vocab-file", help="JSON array of class names or text file with one class per line")
    parser.add_argument(
        "--background", default=None, metavar="prompts|THRESH",
        help='"prompts": add generic background prompts whose pixels stay unlabeled; '
             "a number in [0, 1]: leave pixels whose best probability is below it unlabeled",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    parser.add_argument("--dense-features", action="store_true", help="also write <stem>_features.npz")
    parser.add_argument("--batch-size", type=int, default=1, help="images (or video frames) per forward")
    parser.add_argument("--max-megapixels", type=float, default=None, metavar="N",
                        help="largest image read, in megapixels (default: Pillow's guard against decompression "
                             "bombs, about 179); 0: no limit, for images you trust")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    # the option of detectron2's demo script (instance scores), which the official demo keeps
    # and ignores: accepted with a warning that it does nothing here
    parser.add_argument("--confidence-threshold", default=None, help=argparse.SUPPRESS)
    return parser


def config_vocabulary(cfg) -> List[str]:
    """The vocabulary of ``MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON`` (the demo's default without
    ``--vocab``/``--vocab-file``), said on stderr so that nobody mistakes it for their own."""
    path = cfg.MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON
    try:
        names = read_vocabulary_file(path)
    except CATSegError as e:
        raise CATSegError(f"no --vocab or --vocab-file given, and the config's MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON "
                          f"cannot be used: {e}") from None
    print(f"vocabulary: {len(names)} classes of the config's MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON ({path}); "
          "--vocab or --vocab-file for your own", file=sys.stderr)
    return names


def parse_background(value: Optional[str]):
    """``None`` | ``"prompts"`` (any case) | a float threshold in ``[0, 1]``."""
    if value is None:
        return value
    if value.strip().lower() == "prompts":
        return "prompts"
    try:
        threshold = float(value) + 0.0  # + 0.0: "-0" is 0.0
    except ValueError:
        raise CATSegError(f"--background must be 'prompts' or a number in [0, 1], got {value!r}") from None
    if not 0.0 <= threshold <= 1.0:
        raise CATSegError(f"--background threshold must be in [0, 1], got {value}")
    return threshold


def expand_inputs(patterns: Sequence[str], exclude: Optional[str] = None) -> List[str]:
    """Files, globs and directories (searched recursively for image extensions) -> sorted files.

    The demo's own outputs (``*_overlay.png``, ``*_labels.png``) under ``exclude`` (the output
    directory) are skipped when directories and globs are expanded, so that a rerun does not
    segment the previous run's results. Raises :class:`CATSegError` for a pattern that matches
    nothing.
    """
    exclude_prefix = os.path.abspath(exclude) + os.sep if exclude else None
    output_suffixes = tuple(IMAGE_OUTPUT_SUFFIXES.values())

    def image(path: str) -> bool:
        return path.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(path)

    def outside(path: str) -> bool:
        return (exclude_prefix is None or not path.endswith(output_suffixes)
                or not os.path.abspath(path).startswith(exclude_prefix))

    def none_found(what: str, images: List[str]) -> CATSegError:
        if images:  # all of them outputs of an earlier run
            return CATSegError(f"{what}: its {len(images)} image(s) are outputs of an earlier run in the output "
                               f"directory {exclude!r} ({', '.join('*' + s for s in output_suffixes)}), which are "
                               "not segmented again")
        return CATSegError(what)

    files = {}  # real path -> the first name it was given by (one file named twice is read once)
    for pattern in patterns:
        if os.path.isdir(pattern):
            images = [m for m in (os.path.join(d, f) for d, _, names in os.walk(pattern) for f in names) if image(m)]
            matches = [m for m in images if outside(m)]
            if not matches:
                raise none_found(f"no images found in directory {pattern!r}", images)
        elif os.path.isfile(pattern):
            matches = [pattern]  # an explicitly named file is taken whatever its extension
        elif glob.has_magic(pattern):
            images = [m for m in glob.glob(pattern, recursive=True) if image(m)]
            matches = [m for m in images if outside(m)]
            if not matches:
                raise none_found(f"no images match {pattern!r}", images)
        else:
            raise CATSegError(f"cannot read image {pattern!r}: no such file or directory")
        for match in matches:
            files.setdefault(os.path.realpath(match), os.path.normpath(match))
    return sorted(files.values())


def output_stems(files: Sequence[str]) -> Dict[str, str]:
    """Output name (without suffix) of each input, relative to the output directory.

    The path relative to the deepest folder containing all inputs is mirrored, so
    ``a/x.jpg`` and ``b/x.jpg`` give ``a/x`` and ``b/x``; inputs that still share a name
    (``x.jpg``, ``x.png``) get their extension appended (``x_jpg``, ``x_png``). Names are
    unique without regard to case (case-insensitive file systems): a name still taken
    (``x_png.jpg`` beside ``x.png``, ``x.JPG`` beside ``x.jpg``) gets ``_2``, ``_3``, ... in
    input order.
    """
    absolute = {f: os.path.abspath(f) for f in files}
    base = os.path.commonpath([os.path.dirname(p) for p in absolute.values()])
    stems = {f: os.path.splitext(os.path.relpath(p, base))[0] for f, p in absolute.items()}
    counts = Counter(stem.lower() for stem in stems.values())
    for f, stem in stems.items():
        if counts[stem.lower()] > 1:
            stems[f] = f"{stem}_{os.path.splitext(f)[1].lstrip('.').lower()}"
    return dict(zip(stems, unique_names(list(stems.values()))))


def unique_names(names: Sequence[str]) -> List[str]:
    """``names`` in order, each one still taken (without regard to case: case-insensitive file
    systems) by an earlier one suffixed ``_2``, ``_3``, ... until it is not: ``[x, x_2, x]``
    gives ``[x, x_2, x_3]``."""
    taken, unique_list = set(), []
    for name in names:
        unique, number = name, 2
        while unique.lower() in taken:
            unique, number = f"{name}_{number}", number + 1
        taken.add(unique.lower())
        unique_list.append(unique)
    return unique_list


def check_readable(files: Sequence[str]) -> Tuple[List[str], Dict[str, str]]:
    """Split ``files`` into those whose image header can be read and the others.

    Cheap (the pixels are not decoded), so it runs before the model is built. Returns
    ``(readable, skipped)``, ``skipped`` mapping each unreadable file to the reason. Raises
    :class:`CATSegError` when no file is readable (nothing to do: a user error).
    """
    readable, skipped = [], {}
    for path in files:
        try:
            with Image.open(path) as image:
                image.size
            readable.append(path)
        except Image.DecompressionBombError as e:
            skipped[path] = f"{str(e).rstrip('.')}; for an image you trust: --max-megapixels 0 (no limit)"
        except Exception as e:
            skipped[path] = error_line(e)
    if not readable:
        raise unreadable_error(skipped)
    return readable, skipped


def unreadable_error(skipped: Dict[str, str]) -> CATSegError:
    """The error of a run none of whose images could be read (``skipped``: path -> reason)."""
    if len(skipped) == 1:
        path, reason = next(iter(skipped.items()))
        return CATSegError(f"cannot read image {path!r}: {reason}")
    return CATSegError(f"none of the {len(skipped)} input images can be read: "
                       + "; ".join(f"{p!r} ({r})" for p, r in skipped.items()))


def report_skipped(skipped: Dict[str, str], total: int, failed: Optional[Dict[str, str]] = None):
    """The summary of the images that could not be read, and of those the model failed on (stderr)."""
    if skipped:
        print(f"skipped {len(skipped)} of {total} images that could not be read:", file=sys.stderr)
        for path, reason in skipped.items():
            print(f"  {path}: {reason}", file=sys.stderr)
    if failed:
        print(f"skipped {len(failed)} of {total} images that could not be segmented (the first one's traceback "
              "is above):", file=sys.stderr)
        for path, reason in failed.items():
            print(f"  {path}: {reason}", file=sys.stderr)


def display_problem() -> Optional[str]:
    """Why an OpenCV window cannot be shown here, or ``None`` when it can."""
    try:
        import cv2
    except ImportError:
        return "OpenCV (cv2) is not installed"
    gui = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    if gui and gui.group(1).upper() == "NONE":
        return "this OpenCV build has no GUI support (opencv-python-headless)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display ($DISPLAY is not set)"
    return None


def output_image_file(output: Optional[str]) -> Optional[str]:
    """``--output`` when it names an image file (``out.jpg``, not an existing folder): the
    official demo's way of saving one input's visualisation; else None (a folder)."""
    if output and not os.path.isdir(output) and image_file_format(output):
        return output
    return None


#: Extensions of an ``--output`` that names the video file of ``--video-input`` / ``--webcam``.
VIDEO_OUTPUT_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv")


def output_video_file(output: Optional[str]) -> Optional[str]:
    """``--output`` when it names a video file (``out.mp4``, not an existing folder): where the
    official demo writes a video's visualisation; else None (a folder)."""
    if output and not os.path.isdir(output) and output.lower().endswith(VIDEO_OUTPUT_EXTENSIONS):
        return output
    return None


def without_output_files(inputs: List[str], output: str, explicit: Sequence[str]) -> List[str]:
    """The inputs other than the files ``--output FILE`` writes (the overlay, ``<name>_labels.png``,
    ``<name>.json``): a rerun into a folder of inputs does not take them as images. Naming
    the output file itself as an input is an error (its overlay would replace it)."""
    stem = os.path.splitext(output)[0]
    written = {os.path.realpath(path) for path in (output, stem + "_labels.png", stem + ".json")}
    if os.path.realpath(output) in {os.path.realpath(path) for path in explicit}:
        raise CATSegError(f"--output {output!r} is an input image: its overlay would replace it; give another file "
                          "name or a folder")
    return [path for path in inputs if os.path.realpath(path) not in written]


def output_folder(output: str) -> str:
    """The folder ``--output`` writes into: itself, or the folder of the file it names."""
    if output_image_file(output) or output_video_file(output):
        return os.path.dirname(output) or "."
    return output


def save_image_outputs(result: SegmentationResult, path: str, stem: str, args, seg: OpenVocabSegmenter, names):
    """Write overlay, index PNG, JSON (and features) of one image: ``<output>/<stem>_*``, or
    with ``--output FILE`` the overlay to FILE and the others beside it."""
    overlay_file = output_image_file(args.output)
    folder = output_folder(args.output)
    target = os.path.splitext(overlay_file)[0] if overlay_file else os.path.join(args.output, stem)
    extra = {}
    if args.dense_features:
        arrays = seg.dense_features(result.image, names).to_numpy()
        extra["features"] = (target + "_features.npz", lambda f: np.savez(f, **arrays))
    # all of the image's files or none (renamed into place together: a kill leaves no partial file)
    result.save(target, info={"input": path, "model": seg.model_info(args.config_file, args.opts)}, relative_to=folder,
                extra_files=extra, overlay_file=overlay_file)


def show(window_image_rgb: np.ndarray, wait: int) -> bool:
    """Show an RGB image in the demo window; False when the user pressed ESC or q."""
    import cv2

    cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
    cv2.imshow(WINDOW_NAME, window_image_rgb[:, :, ::-1])
    return cv2.waitKey(wait) not in (27, ord("q"))


def segment_each(seg: OpenVocabSegmenter, files: List[str], arrays: List[np.ndarray], names: List[str],
                 background, failed: Dict[str, str], counts: Counter) -> List[Tuple[str, SegmentationResult]]:
    """``(file, result)`` of the images ``arrays`` (read from ``files``), segmented as one batch.

    An unexpected error of the model (a bug, too little memory for one large image) costs only
    the images it happens on: the batch is segmented again one image at a time, and an image
    that fails alone is added to ``failed`` (file -> reason), the first one's traceback logged.
    A user error (:class:`CATSegError`) ends the run as before, and so does the error itself
    when the first :data:`FAILURES_BEFORE_ANY_SUCCESS` images of the run all fail.
    ``counts["segmented"]`` counts the images segmented so far."""
    try:
        results = seg(arrays, names, background=background, batch_size=len(arrays))
    except CATSegError:
        raise
    except Exception as error:
        if len(files) > 1:
            return [pair for file, array in zip(files, arrays)
                    for pair in segment_each(seg, [file], [array], names, background, failed, counts)]
        if not counts["segmented"] and len(failed) + 1 >= FAILURES_BEFORE_ANY_SUCCESS:
            raise
        if not failed:
            logger.error(f"cannot segment {files[0]}; the demo goes on with the other images", exc_info=error)
        failed[files[0]] = error_line(error)
        return []
    counts["segmented"] += len(files)
    return list(zip(files, results))


def run_images(seg: OpenVocabSegmenter, args, files: List[str], names: List[str], background,
               skipped: Dict[str, str], failed: Optional[Dict[str, str]] = None) -> None:
    """Segment ``files`` in batches of ``--batch-size``; files that fail to decode are added to
    ``skipped`` (path -> reason), those the model fails on to ``failed`` (:func:`segment_each`),
    and the others processed; :class:`CATSegError` when none decodes (a user error, as when
    no header can be read)."""
    from tqdm import tqdm

    failed = {} if failed is None else failed
    counts: Counter = Counter()
    stems = output_stems(files)
    step = max(args.batch_size, 1)
    decoded = saved = 0
    with tqdm(total=len(files), unit="img", disable=True if len(files) < 2 else None) as bar:
        for start in range(0, len(files), step):
            chunk, arrays = [], []
            for path in files[start:start + step]:
                try:
                    arrays.append(load_image(path))
                    chunk.append(path)
                except CATSegError as e:  # truncated / corrupt pixel data behind a valid header
                    skipped[path] = str(e).split(f"{path!r}: ", 1)[-1]
                    bar.update(1)
            if not chunk:
                continue
            decoded += len(chunk)
            results = segment_each(seg, chunk, arrays, names, background, failed, counts)
            bar.update(len(chunk) - len(results))  # the images that failed
            for path, result in results:
                if args.output:
                    save_image_outputs(result, path, stems[path], args, seg, names)
                    saved += 1
                elif not show(result.overlay(), 0):
                    return
                bar.update(1)
    if not decoded:
        raise unreadable_error(skipped)
    if saved:  # also where no progress bar is shown (output not to a terminal)
        print(f"wrote the results of {saved} image(s) to {output_folder(args.output)}", flush=True)


def run_video(seg: OpenVocabSegmenter, args, names: List[str], background):
    """Segment a video file or the webcam frame by frame (optionally writing an mp4)."""
    import cv2
    from tqdm import tqdm

    source = args.video_input if args.video_input else 0
    if args.video_input and not os.path.isfile(args.video_input):
        raise CATSegError(f"cannot read video {args.video_input!r}: no such file")
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise CATSegError(f"cannot open video {args.video_input!r}" if args.video_input else "cannot open the webcam")
    fps = capture.get(cv2.CAP_PROP_FPS) or 15.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if args.video_input else 0
    stem = os.path.splitext(os.path.basename(args.video_input))[0] if args.video_input else "webcam"
    video_file = output_video_file(args.output)  # --output out.mp4: the official demo's video file
    path = (video_file or os.path.join(args.output, stem + "_overlay.mp4")) if args.output else None
    # written under a hidden name with the same extension (OpenCV picks the container by it) and
    # renamed when the frames are done or Ctrl-C stops them: an error midway leaves no video
    partial = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.partial"
                           f"{os.path.splitext(path)[1]}") if path else None
    writer, frames, size = None, 0, None
    step = max(args.batch_size, 1)

    def emit(batch) -> bool:
        nonlocal writer, frames
        for result in seg(batch, names, background=background, batch_size=step):
            overlay = result.overlay()
            frames += 1
            bar.update(1)
            if path:
                if writer is None:
                    writer = cv2.VideoWriter(partial, cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                             (overlay.shape[1], overlay.shape[0]))
                    if not writer.isOpened():
                        raise CATSegError(f"cannot write video {path!r} (no mp4v encoder in this OpenCV build)")
                writer.write(np.ascontiguousarray(overlay[:, :, ::-1]))
            elif not show(overlay, 1):
                return False
        return True

    interrupted, finished = False, False
    with tqdm(total=total or None, unit="frame", disable=None) as bar:
        try:
            batch = []
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                size = frame.shape[:2]
                batch.append(np.ascontiguousarray(frame[:, :, ::-1]))
                if len(batch) == step:
                    if not emit(batch):
                        break
                    batch = []
            if batch:
                emit(batch)
            finished = True
        except KeyboardInterrupt:  # what was written is kept (a webcam stream is stopped this way)
            interrupted = finished = True
        finally:
            capture.release()
            if writer is not None:
                writer.release()
                if finished:
                    os.replace(partial, path)
                elif os.path.exists(partial):
                    os.remove(partial)
    if frames == 0:
        raise CATSegError(f"no frames could be read from {args.video_input!r}" if args.video_input else "no webcam frames")
    if args.output:
        info = {
            "input": args.video_input or "webcam",
            "classes": names,
            "background": background,
            "frames": frames,
            "fps": fps,
            "frame_size": {"height": size[0], "width": size[1]},
            "model": seg.model_info(args.config_file, args.opts),
            "outputs": {"overlay": os.path.basename(path)},
        }
        if interrupted and args.video_input:  # the frames before Ctrl-C, not the whole video
            info["interrupted"] = True
        json_path = os.path.splitext(video_file)[0] + ".json" if video_file else os.path.join(args.output, stem + ".json")
        atomic_write(json_path, lambda f: json.dump(info, f, indent=2), mode="w", durable=False)
    if interrupted and args.video_input:  # a video file was not finished: exit status 130, as for images
        raise KeyboardInterrupt


def make_output_dir(path: str) -> List[str]:
    """Create the output directory and any missing parents; returns the folders it created,
    deepest first (what :func:`remove_empty_dirs` removes after a run that wrote nothing).
    One-line :class:`CATSegError` when it cannot be created or written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CATSegError(f"--output {path!r} is a file, not a folder; give a folder (or, for one image or a video, "
                          "a new file name with an image or video extension)")
    created, folder = [], os.path.abspath(path)
    while not os.path.exists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        remove_empty_dirs(created)
        raise CATSegError(f"cannot create output directory {path!r}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CATSegError(f"output directory {path!r} is not writable")
    return created


def remove_empty_dirs(folders: Sequence[str]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:  # not empty (or already gone): keep it and its parents
            return


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit status (0 ok, 1 some images skipped or failed, 2 user error)."""
    try:
        args = get_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed)
        return e.code if isinstance(e.code, int) else EXIT_USER_ERROR
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    created_dirs: List[str] = []
    skipped: Dict[str, str] = {}
    failed: Dict[str, str] = {}
    inputs: List[str] = []
    try:
        names = read_vocabulary_file(args.vocab_file) if args.vocab_file else (
            parse_vocabulary(args.vocab) if args.vocab is not None else None)
        if args.confidence_threshold is not None:  # the official demo's option: accepted, as it is there
            print(f"warning: --confidence-threshold {args.confidence_threshold} is ignored: it is detectron2's "
                  "threshold on instance scores, which semantic segmentation has none of (the official demo ignores "
                  "it too); to leave pixels whose best class probability is below a threshold unlabeled, use "
                  "--background THRESH", file=sys.stderr, flush=True)
        background = parse_background(args.background)
        if args.batch_size < 1:
            raise CATSegError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.max_megapixels is not None:
            if not args.max_megapixels >= 0:  # NaN too
                raise CATSegError(f"--max-megapixels must be >= 0 (0: no limit), got {args.max_megapixels}")
            # this program's images: Pillow's limit (a process-wide setting) is the user's to set
            # here; Pillow refuses images over twice MAX_IMAGE_PIXELS (and warns above it)
            Image.MAX_IMAGE_PIXELS = int(args.max_megapixels * 1e6 / 2) or None
        # Pillow warns (a raw two-line warning, per read) between half its limit and the limit,
        # where it refuses: the limit is the guard, and the user's to raise
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if args.dense_features and not args.input:
            raise CATSegError("--dense-features writes one file per image: use it with --input, "
                              "not with --video-input or --webcam")
        args.config_file = args.config_file or default_config(args.weights)
        cfg = build_config(args.config_file, weights=args.weights, device=args.device, opts=args.opts,
                           opts_source="the command line")
        if names is None:
            names = config_vocabulary(cfg)
        if args.input:
            inputs = expand_inputs(args.input, exclude=args.output)
            if output_image_file(args.output):
                inputs = without_output_files(inputs, args.output, explicit=args.input)
            files, skipped = check_readable(inputs)
        if output_image_file(args.output):
            if not args.input:
                raise CATSegError(f"--output {args.output!r} names an image file: use it with one --input image "
                                  "(a video's goes to a video file, --output out.mp4, or a folder)")
            if len(inputs) != 1:
                raise CATSegError(f"--output {args.output!r} names an image file, which takes one input; "
                                  f"{len(inputs)} inputs need a folder: --output DIR")
        if output_video_file(args.output) and args.input:
            raise CATSegError(f"--output {args.output!r} names a video file, which --video-input and --webcam "
                              "write; images go to a folder (--output DIR) or, one image, to an image file")
        if not args.output:
            problem = display_problem()
            if problem:
                raise CATSegError(f"cannot show the results in a window: {problem}; pass --output DIR to save them")
        check_weights_available(cfg, options="demo")  # before anything is written: fails in seconds offline
        if args.output:
            created_dirs = make_output_dir(output_folder(args.output))
        seg = OpenVocabSegmenter(cfg)
        if args.input:
            run_images(seg, args, files, names, background, skipped, failed)
        else:
            run_video(seg, args, names, background)
    except CATSegError as e:
        remove_empty_dirs(created_dirs)  # leave nothing behind for a run that wrote nothing
        return print_user_error(e)
    except KeyboardInterrupt:
        remove_empty_dirs(created_dirs)  # folders made for a run stopped before its first result
        print("interrupted", file=sys.stderr)
        return 130
    if skipped or failed:
        report_skipped(skipped, len(inputs), failed)
        return EXIT_SOME_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
