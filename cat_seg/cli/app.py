"""CAT-Seg web app: segment your own images with your own words, in the browser.

    cat-seg-app                                   # http://127.0.0.1:7860
    cat-seg-app --model catseg-vitb               # released CAT-Seg (B), downloaded once
    cat-seg-app --config-file configs/vitb_384.yaml --weights model_final.pth --port 8080
    python demo/app.py --help                     # the same program from a checkout

The page (Gradio) takes one or several images (or an example), a vocabulary (typed:
comma-separated, ``;`` between classes that carry ``", "`` synonyms, or one class per line;
or a benchmark vocabulary: ADE20K-150, PASCAL Context-59, COCO-Stuff, ...), a model (released ViT-B / ViT-L
by name, the toy model of ``make demo``, or a local config + checkpoint) and a background
threshold. It shows the overlay with a legend, the segments as an annotated image (hover or
click a class, or click the overlay to read the class under the cursor), a table of classes
with area and mean confidence, and offers the label PNG, the overlay and the JSON for
download (the same files as ``cat-seg-demo --output``).

Inputs are validated by the library (:func:`cat_seg.api.parse_vocabulary_text`,
:func:`cat_seg.api.load_image`, :func:`cat_seg.api.build_config`): a bad input gives the same
one-line message as the command line. Segmenters are cached per (config, weights, device,
overrides) and keep their text features cached per vocabulary, so a second request with the
same model and words only runs the image through the model.
"""
import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

# third-party deprecation noise (fvcore uses torch.jit.script) would clutter the console
warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

import numpy as np  # noqa: E402

from ..api import (  # noqa: E402
    CATSegError,
    OpenVocabSegmenter,
    SegmentationResult,
    build_config,
    check_weights_available,
    load_image,
    nearest_indices,
    parse_vocabulary_text,
    shared_first_synonym_note,
)
from ..hub import RELEASED_WEIGHTS  # noqa: E402
from ..utils import read_class_json, resolve_path  # noqa: E402
from .demo import unique_names  # noqa: E402  (output names as the demo makes them)
from .errors import ArgumentParser, print_user_error  # noqa: E402
from .ports import listen_problem  # noqa: E402

logger = logging.getLogger(__name__)


def _benchmark_vocabularies() -> "OrderedDict[str, str]":
    """Benchmark vocabularies offered in the page: title -> class json (``read_class_json``
    name), from the dataset catalog: the evaluation benchmarks (their eval.sh titles) and the
    training set's COCO-Stuff classes. Not VOC-20b: its last 39 entries are background concepts
    that its evaluator scores as one background class, and the page would label them as classes
    of their own (VOC-20 with "Generic background prompts" is the page's equivalent); not the
    toy's, which has its own entry."""
    from ..data.catalog import BENCHMARKS, get_layout
    from ..data.synthetic import VAL

    entries = OrderedDict((layout.title, layout.class_json) for key, layout in BENCHMARKS.items()
                          if key != "voc20b" and layout.name != VAL.name)
    coco = get_layout("coco_2017_test_stuff_all_sem_seg")
    entries[f"COCO-Stuff-{coco.num_classes} (the training classes)"] = coco.class_json
    return entries


BENCHMARK_VOCABULARIES = _benchmark_vocabularies()
TOY_VOCABULARY = "synthetic toy: its 16 colour + pattern classes"
CUSTOM_VOCABULARY = "your own words"

#: The toy model that ``make demo`` trains.
TOY_CONFIG = "configs/quick_schedules/toy_synthetic.yaml"
TOY_WEIGHTS = "output/toy/model_final.pth"
LOCAL_MODEL = "local config + checkpoint"
TOY_MODEL = "toy model (make demo)"
EXAMPLES_DIR = os.path.join("demo", "examples")


# ---------------------------------------------------------------------------------- models
def model_choices() -> List[str]:
    """Model dropdown entries: released names, the toy model, a local config + checkpoint."""
    return [f"{name}: {entry.description}" for name, entry in RELEASED_WEIGHTS.items()] + [TOY_MODEL, LOCAL_MODEL]


def model_spec(choice: str, config_file: str, weights: str) -> Tuple[str, Optional[str]]:
    """Dropdown entry (+ the local config / weights boxes) -> ``(config file, weights)``."""
    name = choice.split(":", 1)[0]
    if name in RELEASED_WEIGHTS:
        entry = RELEASED_WEIGHTS[name]
        return resolve_path(entry.config_file), name
    if choice == TOY_MODEL:
        weights = resolve_path(TOY_WEIGHTS)
        if not os.path.isfile(weights):
            raise CATSegError(f"toy model {TOY_WEIGHTS!r} not found: run `make demo` first (trains it on CPU)")
        return resolve_path(TOY_CONFIG), weights
    if choice != LOCAL_MODEL:
        raise CATSegError(f"unknown model choice {choice!r}")
    weights = (weights or "").strip()
    if weights.lower() == "none":
        weights = ""
    return (config_file or "").strip(), (weights or None)


class SegmenterCache:
    """The last ``size`` segmenters, keyed by (config file, weights, device, overrides) and by
    the modification times of the config and weights files: a checkpoint retrained or a config
    edited while the app runs is loaded again, replacing the earlier one (``make demo``
    rewrites the toy model's). The files a config names (its ``_BASE_`` files, class jsons)
    are not watched.

    Thread-safe (a model is built once), although the page runs one segmentation at a time.
    """

    def __init__(self, size: int = 2):
        self.size = size
        self._items: "OrderedDict[tuple, OpenVocabSegmenter]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, config_file: str, weights: Optional[str], device: Optional[str], opts: Sequence[str]):
        # the library validates config, overrides, device and a local weights file (CLI messages);
        # a released name is resolved (downloaded once) by the checkpointer when the model loads
        cfg = build_config(config_file, weights=weights, device=device, opts=list(opts), opts_source="the command line")
        files = (resolve_path(config_file), cfg.MODEL.WEIGHTS)
        versions = tuple(os.stat(path).st_mtime_ns if path and os.path.isfile(path) else None for path in files)
        key = (os.path.abspath(files[0]), cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE, tuple(opts), versions)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            for stale in [k for k in self._items if k[:4] == key[:4]]:  # an earlier version of the files
                del self._items[stale]
            check_weights_available(cfg, options="demo")  # in the app's terms (--weights, --opts), not the API's
            segmenter = OpenVocabSegmenter(cfg)
            self._items[key] = segmenter
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return segmenter

    def __len__(self):
        return len(self._items)


# ---------------------------------------------------------------------------------- inputs
def vocabulary_from_text(text: str) -> List[str]:
    """The vocabulary box -> class names, with the rules of a ``--vocab-file`` text
    (:func:`cat_seg.api.parse_vocabulary_text`): several non-empty lines are one class per line
    (each may hold ``", "`` synonyms; ``;`` separates classes on a line); a single line is read
    like ``--vocab`` (``,`` between classes, or ``;`` when classes carry synonyms)."""
    return parse_vocabulary_text(text)


def benchmark_vocabulary(choice: str) -> Optional[List[str]]:
    """Class names of a benchmark vocabulary entry (``None`` for the custom entry)."""
    if choice == TOY_VOCABULARY:
        from ..data.synthetic import val_class_names

        return val_class_names()
    if choice in BENCHMARK_VOCABULARIES:
        try:
            return read_class_json(BENCHMARK_VOCABULARIES[choice])
        except (OSError, ValueError) as e:
            raise CATSegError(str(e)) from None
    return None


def parse_threshold(value) -> Optional[float]:
    """Slider value -> background threshold (0 = off: every pixel gets a class)."""
    if value is None or float(value) <= 0:
        return None
    return float(value)


def _upload_paths(files) -> List[str]:
    """Gradio's File value (path strings or file objects) -> paths."""
    if files is None:
        return []
    files = files if isinstance(files, (list, tuple)) else [files]
    return [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in files]


# ---------------------------------------------------------------------------------- outputs
def hex_color(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def class_table(result: SegmentationResult) -> List[List]:
    """Rows ``[class, area px, area %, mean confidence]`` of the classes present, largest first,
    then the unlabeled pixels (if any)."""
    areas = result.areas()
    confidence = result.mean_probabilities()
    total = result.height * result.width
    rows = [[name, areas[name], round(100.0 * areas[name] / total, 2), round(confidence[name], 4)]
            for name in sorted(result.classes, key=lambda n: -areas[n]) if areas[name] > 0]
    if result.unlabeled_area:
        rows.append(["(unlabeled)", result.unlabeled_area, round(100.0 * result.unlabeled_area / total, 2), None])
    return rows


def annotations(result: SegmentationResult):
    """``gr.AnnotatedImage`` value and colour map: one mask per class present, overlay colours,
    at the overlay's display resolution (full-size float masks of a 24-megapixel photo were
    1.5 GB, encoded as PNGs and sent to the browser)."""
    image, label_map = result.display()
    masks = [((label_map == i).astype(np.float32), name)
             for i, name in enumerate(result.classes) if (label_map == i).any()]
    colors = {name: hex_color(c) for name, c in zip(result.classes, result.colors)}
    return (image, masks), colors


#: classes the status line lists (each with its synonyms), the rest counted
CLASSES_SHOWN = 12


def save_outputs(result: SegmentationResult, folder: str, stem: str, model: Dict,
                 overlay: Optional[np.ndarray] = None, input_name: Optional[str] = None) -> Dict[str, str]:
    """Write ``<stem>_labels.png``, ``<stem>_overlay.png`` and ``<stem>.json`` (the demo's files);
    the JSON's ``input`` is ``input_name`` (the upload's file name), else ``stem``."""
    return result.save(os.path.join(folder, stem), info={"input": input_name or stem, "model": model},
                       overlay=overlay)


def _stems(paths: Sequence[str]) -> List[str]:
    """Output names of the uploads: their file stems (each upload sits in its own temporary
    folder, so no folder is mirrored; a name such as ``.png`` gives ``image``, not a hidden
    file), made unique as the demo's are."""
    stems = []
    for path in paths:
        name = os.path.basename(path)
        stem, extension = os.path.splitext(name)
        if not extension and name.startswith("."):  # ".png": an extension without a name
            stem = ""
        stems.append(stem.lstrip(".") or "image")
    return unique_names(stems)


#: Request folders the app keeps in its output folder (the oldest are deleted beyond that).
KEPT_REQUESTS = 20


# ---------------------------------------------------------------------------------- the page
class App:
    """The app's state and request handlers (independent of Gradio, apart from progress)."""

    def __init__(self, device: Optional[str] = None, opts: Sequence[str] = (), cache_size: int = 2,
                 output_root: Optional[str] = None):
        self.device = device
        self.opts = list(opts)
        self.segmenters = SegmenterCache(cache_size)
        # a folder of its own unless given: removed by close() (the server's end)
        self._own_output_root = output_root is None
        self.output_root = output_root or tempfile.mkdtemp(prefix="cat-seg-app-")
        os.makedirs(self.output_root, exist_ok=True)

    def close(self):
        """Remove the output folder the app made for itself (results of the requests; a folder
        given to the app is kept)."""
        if self._own_output_root:
            shutil.rmtree(self.output_root, ignore_errors=True)

    def segment(self, files, vocabulary_text: str, model_choice: str, config_file: str, weights: str,
                threshold, background_prompts: bool, progress=None):
        """Run one request. Returns ``(results, stems, file paths, status, overlays)``; raises
        :class:`CATSegError` for user errors. An unreadable upload among readable ones is skipped
        and named in the status, as are classes that share their first synonym. The request's
        files go to a new folder of the output folder, which keeps the last
        :data:`KEPT_REQUESTS` requests."""
        progress = progress or (lambda *args, **kwargs: None)
        paths = _upload_paths(files)
        if not paths:
            raise CATSegError("no image given: upload one or several images, or pick an example")
        names = vocabulary_from_text(vocabulary_text)
        background = "prompts" if background_prompts else parse_threshold(threshold)
        notes = []
        shared = shared_first_synonym_note(names, "the class list")
        if shared:  # on the page: the server's log is not where a user of the page looks
            notes.append(shared)
        images, readable, unreadable = [], [], []
        for path in paths:  # same checks as the CLI and the API, before the model
            try:
                images.append(load_image(path))
                readable.append(path)
            except CATSegError as e:  # named as uploaded, not by Gradio's cache path
                unreadable.append(str(e).replace(path, os.path.basename(path)))
        if not images:
            raise CATSegError(unreadable[0] if len(unreadable) == 1 else
                              f"none of the {len(unreadable)} uploads is a readable image: {'; '.join(unreadable)}")
        # one bad upload among several: the others are segmented and the bad one is named
        notes += [f"skipped: {message}" for message in unreadable]
        paths = readable
        config, model_weights = model_spec(model_choice, config_file, weights)
        progress(0.05, desc=f"loading the model ({os.path.basename(config)}"
                            + (f", {model_weights})" if model_weights else ")"))
        segmenter = self.segmenters.get(config, model_weights, self.device, self.opts)
        self._prune_requests()
        folder = tempfile.mkdtemp(dir=self.output_root)
        stems = _stems(paths)
        results, files_out, overlays = [], [], []
        model_info = segmenter.model_info(config, self.opts)  # the demo's JSON entry
        for i, (image, stem, path) in enumerate(zip(images, stems, paths)):
            progress((i, len(images)), desc=f"segmenting {stem} ({i + 1}/{len(images)})", unit="images")
            result = segmenter(image, names, background=background)
            overlays.append(result.overlay())  # drawn once: saved and shown
            written = save_outputs(result, folder, stem, model_info, overlays[-1], os.path.basename(path))
            results.append(result)
            files_out += [written["labels"], written["overlay"], written["json"]]
        status = (f"{len(images)} image(s), {len(names)} class(es), model `{os.path.basename(config)}`"
                  + (f" + `{model_weights}`" if model_weights else " (random head: no weights)")
                  + f" on {segmenter.device}")
        # the classes as read, one per "; " (the vocabulary rules' result, shown rather than guessed)
        shown = "; ".join(names[:CLASSES_SHOWN]) + (f" (+{len(names) - CLASSES_SHOWN} more)"
                                                     if len(names) > CLASSES_SHOWN else "")
        status += f"\n\nClasses as read: {shown}"
        status += "".join(f"\n\n**Note:** {note}" for note in notes)
        return results, stems, files_out, status, overlays

    def _prune_requests(self) -> None:
        """Delete the oldest request folders beyond :data:`KEPT_REQUESTS` (a server left running
        wrote a folder per request without end)."""
        import shutil

        folders = sorted((entry for entry in os.scandir(self.output_root) if entry.is_dir()),
                         key=lambda entry: entry.stat().st_mtime)
        for entry in folders[:max(0, len(folders) - KEPT_REQUESTS + 1)]:
            shutil.rmtree(entry.path, ignore_errors=True)


def _view(result: SegmentationResult, overlay: np.ndarray):
    """Page values shown for one result (``overlay``: its :meth:`~SegmentationResult.overlay`,
    drawn once per request): overlay, annotated image, colour map, table, click state."""
    annotated, colors = annotations(result)
    # the winning class's probability per pixel, without the [T, H, W] probability maps
    click = {"label_map": result.label_map, "confidence": result.confidence_map().numpy(),
             "classes": list(result.classes), "overlay_size": overlay.shape[:2]}
    return overlay, annotated, colors, class_table(result), click


def describe_pixel(click: Optional[Dict], x: int, y: int) -> str:
    """``"(x, y): class (confidence 0.87)"`` for a click at pixel ``(x, y)`` of the overlay,
    which is smaller than the image for large images: the click is scaled to the image, whose
    pixel coordinates the text gives."""
    if not click:
        return "run a segmentation first"
    label_map = click["label_map"]
    overlay_height, overlay_width = click.get("overlay_size", label_map.shape)
    if not (0 <= y < overlay_height and 0 <= x < overlay_width):
        return f"({x}, {y}) is outside the image"
    # the image pixel the display resize drew there
    x = int(nearest_indices(overlay_width, label_map.shape[1])[x])
    y = int(nearest_indices(overlay_height, label_map.shape[0])[y])
    label = int(label_map[y, x])
    if label < 0:
        return f"({x}, {y}): unlabeled"
    return f"({x}, {y}): {click['classes'][label]} (confidence {float(click['confidence'][y, x]):.2f})"


def build_app(app: App, default_model: str, config_file: str = "", weights: str = ""):
    """The Gradio Blocks page around ``app``."""
    import gradio as gr

    def fail(error: CATSegError):
        # duration None: the message stays until closed (a 10 s toast vanished before it was read)
        return gr.Error(str(error), duration=None, print_exception=False)

    def run(files, vocab_text, model_choice, config_box, weights_box, threshold, prompts,
            progress=gr.Progress(track_tqdm=True)):  # tqdm: a first download of released weights
        try:
            results, stems, files_out, status, overlays = app.segment(
                files, vocab_text, model_choice, config_box, weights_box, threshold, prompts, progress)
        except CATSegError as e:
            raise fail(e) from None
        overlay, annotated, colors, table, click = _view(results[0], overlays[0])
        state = {"results": results, "stems": stems, "overlays": overlays}
        return (
            status,
            gr.Dropdown(choices=stems, value=stems[0], visible=len(stems) > 1),
            overlay,
            gr.AnnotatedImage(value=annotated, color_map=colors),
            table,
            files_out,
            state,
            click,
            "click the overlay to read the class under the cursor",
        )

    def show(stem, state):
        if not state or stem not in state["stems"]:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        index = state["stems"].index(stem)
        overlay, annotated, colors, table, click = _view(state["results"][index], state["overlays"][index])
        return overlay, gr.AnnotatedImage(value=annotated, color_map=colors), table, click

    def pick_vocabulary(choice):
        try:
            names = benchmark_vocabulary(choice)
        except CATSegError as e:
            raise fail(e) from None
        return gr.skip() if names is None else "\n".join(names)

    def clicked(click, evt: gr.SelectData):
        x, y = (int(v) for v in evt.index)
        return describe_pixel(click, x, y)

    def clicked_class(evt: gr.SelectData):
        return f"selected: {evt.value}"

    # analytics off: a local research tool sends nothing anywhere
    # delete_cache: Gradio's copies of uploads and downloads older than a day, checked hourly
    with gr.Blocks(title="CAT-Seg: open-vocabulary segmentation", analytics_enabled=False,
                   delete_cache=(3600, 86400)) as page:
        gr.Markdown("## CAT-Seg: open-vocabulary semantic segmentation\n"
                    "Upload images, name the classes you want, press **Segment**.")
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Images", file_count="multiple", file_types=image_file_types(), elem_id="images")
                vocab_choice = gr.Dropdown(
                    [CUSTOM_VOCABULARY, TOY_VOCABULARY] + list(BENCHMARK_VOCABULARIES), value=CUSTOM_VOCABULARY,
                    label="Vocabulary", elem_id="vocab-choice")
                vocab_text = gr.Textbox(
                    label="Classes", lines=4, elem_id="vocab",
                    placeholder="cat, dog, grass  (or one class per line; use ';' between classes to give "
                                "', ' synonyms: person, human; dog)")
                model_choice = gr.Dropdown(model_choices(), value=default_model, label="Model", elem_id="model")
                with gr.Row():
                    config_box = gr.Textbox(config_file, label="Config file (local model)", elem_id="config")
                    weights_box = gr.Textbox(weights, label="Checkpoint (local model; empty = none)",
                                             elem_id="weights")
                threshold = gr.Slider(0.0, 1.0, value=0.0, step=0.01, elem_id="threshold",
                                      label="Background threshold (pixels below it stay unlabeled; 0 = off)")
                prompts = gr.Checkbox(False, label="Generic background prompts (sky, wall, ... stay unlabeled)",
                                      elem_id="prompts")
                button = gr.Button("Segment", variant="primary", elem_id="run")
                examples_dir = resolve_path(EXAMPLES_DIR)
                if os.path.isdir(examples_dir):
                    from ..data.synthetic import val_class_names

                    toy_words = ", ".join(val_class_names())
                    gr.Examples(
                        [[[os.path.join(examples_dir, f)], toy_words] for f in sorted(os.listdir(examples_dir))
                         if f.endswith(".png")],
                        inputs=[files, vocab_text], label="Examples (synthetic toy shapes; use the toy model)")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                which = gr.Dropdown([], label="Result shown", visible=False, elem_id="which")
                with gr.Row():
                    overlay = gr.Image(label="Overlay (click to read a class)", format="png", interactive=False,
                                       height=420, elem_id="overlay")
                    annotated = gr.AnnotatedImage(label="Segments (hover or click a class)", format="png",
                                                  height=420, elem_id="segments")
                pixel = gr.Textbox(label="Class under the cursor", interactive=False, elem_id="pixel")
                table = gr.Dataframe(headers=["class", "area (px)", "area (%)", "mean confidence"],
                                     datatype=["str", "number", "number", "number"], interactive=False,
                                     label="Classes", elem_id="table")
                downloads = gr.File(label="Downloads: label PNG, overlay, JSON", file_count="multiple",
                                    interactive=False, elem_id="downloads")
        results = gr.State()
        click_state = gr.State()

        # .input: the user's choices only (.change also fired when a run set the dropdown, which
        # rendered its first result a second time)
        vocab_choice.input(pick_vocabulary, vocab_choice, vocab_text)
        # an edited class list is no longer the benchmark's: picking that benchmark again refills it
        vocab_text.input(lambda: CUSTOM_VOCABULARY, None, vocab_choice)
        # one segmentation at a time, whatever GRADIO_DEFAULT_CONCURRENCY_LIMIT says: a segmenter
        # serves one call at a time (OpenVocabSegmenter), and one call already uses the device
        button.click(run, [files, vocab_text, model_choice, config_box, weights_box, threshold, prompts],
                     [status, which, overlay, annotated, table, downloads, results, click_state, pixel],
                     concurrency_limit=1)
        which.input(show, [which, results], [overlay, annotated, table, click_state])
        overlay.select(clicked, click_state, pixel)
        annotated.select(clicked_class, None, pixel)
    return page


# ---------------------------------------------------------------------------------- command line
def get_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="cat-seg-app", description="CAT-Seg web app: open-vocabulary segmentation in the browser")
    parser.add_argument("--model", default=None,
                        help=f"model selected at start: {', '.join(RELEASED_WEIGHTS)} (released, downloaded once), "
                             "'toy' (after make demo) or 'local' (--config-file/--weights); default: local when "
                             "--config-file is given, else toy when trained, else catseg-vitb")
    parser.add_argument("--config-file", default="", metavar="FILE", help="config of the local model")
    parser.add_argument("--weights", default="", help="checkpoint of the local model (path or released name)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: the whole network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also publish a temporary public gradio.live link")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return parser


def image_file_types() -> List[str]:
    """The upload box's file types: image MIME types and every extension PIL reads (``.tga``,
    ``.qoi``, ...), as the demo and the API read them; Gradio's ``"image"`` alone goes by MIME
    types, which refused several of them."""
    from PIL import Image

    return ["image", *sorted(Image.registered_extensions())]


def default_model_choice(args) -> str:
    choices = model_choices()
    by_name = {c.split(":", 1)[0]: c for c in choices}
    model = (args.model or "").strip()
    if model in by_name:
        return by_name[model]
    if model == "toy":
        return TOY_MODEL
    if model == "local" or (not model and args.config_file):
        if not args.config_file:
            raise CATSegError("--model local needs --config-file, the config of the model (and --weights, its "
                              "checkpoint)")
        return LOCAL_MODEL
    if model:
        raise CATSegError(f"--model must be one of {', '.join(list(RELEASED_WEIGHTS) + ['toy', 'local'])}, got {model!r}")
    weights = (args.weights or "").strip()
    if weights in by_name:  # a released name is a whole model: its own config (as in the demo)
        return by_name[weights]
    if weights:
        raise CATSegError(f"--weights {weights!r} needs --config-file, the config of the model it holds (or give a "
                          f"released name: {', '.join(RELEASED_WEIGHTS)})")
    return TOY_MODEL if os.path.isfile(resolve_path(TOY_WEIGHTS)) else choices[0]


def check_startup_options(device: Optional[str], opts: Sequence[str]) -> None:
    """``--device`` and the ``--opts`` keys and values, checked before the server starts (each
    segmentation checks them again with its model's config, as the library does)."""
    from detectron2.config import get_cfg

    from ..api import check_device
    from ..config import add_cat_seg_config
    from .errors import UserError, merge_config

    if device is not None:
        check_device(device)
    try:
        merge_config(add_cat_seg_config(get_cfg()), None, list(opts))
    except UserError as e:
        raise CATSegError(str(e)) from None


def check_startup_model(choice: str, config_file: Optional[str], weights: Optional[str], device: Optional[str],
                        opts: Sequence[str]) -> None:
    """The model the page starts with, checked before the server starts as the demo checks it:
    a released model is in the hub cache or can be downloaded (one line in seconds offline),
    the toy model is trained, a local one's config (keys, values) and weights file (exists, not
    cut short) are right. Without this a mistake showed only in the browser, at the first
    segmentation."""
    from ..api import build_config
    from ..checkpoint.official import checkpoint_file_problem

    name = choice.split(":", 1)[0]
    if name in RELEASED_WEIGHTS:  # in the hub cache, or the hub answers (nothing is downloaded now)
        from ..hub import check_released_weights

        check_released_weights(name)  # WeightsUnavailableError: a CATSegError, one line
        return
    if choice == TOY_MODEL:
        model_spec(choice, config_file, weights)  # the toy checkpoint exists
        return
    if choice != LOCAL_MODEL or not config_file:
        return
    config, model_weights = model_spec(choice, config_file, weights)
    cfg = build_config(resolve_path(config), weights=model_weights, device=device, opts=list(opts),
                       opts_source="the command line")
    if os.path.isfile(cfg.MODEL.WEIGHTS):
        problem = checkpoint_file_problem(cfg.MODEL.WEIGHTS)
        if problem:
            raise CATSegError(f"--weights: {problem}")


def check_listen_address(host: str, port: int) -> None:
    """``--host``/``--port`` the server can listen at, checked before the model is loaded
    (Gradio's own error comes after, with a traceback)."""
    import socket

    if not 0 < port < 65536:
        raise CATSegError(f"--port {port}: expected a port in 1..65535")
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise CATSegError(f"--host {host!r}: cannot resolve it ({exc.strerror})") from None
    problem = listen_problem(family, address)
    if problem:
        raise CATSegError(f"--host {host} --port {port}: {problem}")


# The page uses Gradio 6's API (``launch(footer_links=...)``, which replaced ``show_api``).
GRADIO_MAJOR = 6


def check_gradio(version: Optional[str] = None) -> None:
    """Raise :class:`CATSegError` unless Gradio ``GRADIO_MAJOR`` or later is installed
    (``version``: the installed one, read from the package when None)."""
    if version is None:
        try:
            import gradio
        except ImportError:
            raise CATSegError(f"the web app needs Gradio {GRADIO_MAJOR} or later: pip install 'cat-seg[app]' "
                              f"(or: pip install 'gradio>={GRADIO_MAJOR}')") from None
        version = gradio.__version__
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        return  # a version string of a development build: let it run
    if major < GRADIO_MAJOR:
        raise CATSegError(f"the web app needs Gradio {GRADIO_MAJOR} or later, this environment has {version}: "
                          f"pip install -U 'gradio>={GRADIO_MAJOR}'")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM (kill, docker stop, systemd) ends the app as Ctrl-C does: Gradio closes the server
    # and the app's output folder is removed (Python's default for SIGTERM exits at once, and
    # every stop left a /tmp/cat-seg-app-* folder behind)
    # (main thread only: Python's rule for signal handlers; a program embedding main() in a
    # thread keeps its own handling)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        return _serve(args)
    except KeyboardInterrupt:  # before the server started (loading, checking the model)
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _serve(args) -> int:
    try:
        check_gradio()
        check_listen_address(args.host, args.port)
        default = default_model_choice(args)
        if args.config_file and not os.path.isfile(resolve_path(args.config_file)):  # configs/...: any folder
            raise CATSegError(f"config file {args.config_file!r} not found")
        check_startup_options(args.device, args.opts)
        check_startup_model(default, args.config_file, args.weights, args.device, args.opts)
    except CATSegError as e:
        return print_user_error(e)
    app = App(device=args.device, opts=args.opts)
    try:  # the app's own output folder is removed however this ends (an error, Ctrl-C, SIGTERM)
        try:
            page = build_app(app, default, args.config_file, args.weights)
        except CATSegError as e:
            return print_user_error(e)
        print(f"cat-seg-app: http://{args.host}:{args.port}", flush=True)
        # launch returns when the server stops (Ctrl-C)
        page.queue().launch(server_name=args.host, server_port=args.port, share=args.share,
                            allowed_paths=[app.output_root], footer_links=["gradio"])
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
