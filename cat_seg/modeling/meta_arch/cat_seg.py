"""``CATSeg`` meta-architecture: preprocessing, training loss, (sliding-window) inference."""
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY, build_backbone
from detectron2.structures import ImageList
from torch import nn

from ...utils import read_class_json, resolve_vocabulary_path
from ..aggregator import resolve_class_chunk_size
from ..clip import TextEncoder
from ..cuda_graphs import GraphedForward
from ..losses import sem_seg_bce_loss
from ..postprocess import PROBABILITIES, SlidingWindowMaps, WholeImageMaps
from ..precision import PRECISIONS, autocast, resolve_precision
from ..sliding_window import check_window_geometry, clear_weight_cache, crop_windows, window_boxes, window_stride

logger = logging.getLogger(__name__)


COMPILE_SETTINGS = (None, "auto", True, False)


def check_input(inputs: Dict, position: int, with_label: bool) -> None:
    """One input dict of :meth:`CATSeg.forward`: ``image`` a ``[3, H, W]`` tensor (uint8, or
    float on the 0-255 scale), in training ``sem_seg`` an ``[H, W]`` integer tensor of the same
    size. Raises a one-line ``ValueError`` naming the input's position (a ``[H, W, 3]``
    image failed inside the normalisation, a label of another size trained without a word)."""
    image = inputs.get("image") if isinstance(inputs, dict) else None
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3 or image.is_complex() \
            or image.dtype == torch.bool:
        what = f"a {type(image).__name__}" if not isinstance(image, torch.Tensor) else \
            f"{image.dtype} {tuple(image.shape)}"
        raise ValueError(f"input {position}: 'image' must be an RGB tensor [3, H, W] (uint8, or float on the 0-255 "
                         f"scale), got {what}" + (" (channels last? use image.permute(2, 0, 1))"
                                                 if isinstance(image, torch.Tensor) and image.dim() == 3
                                                 and image.shape[-1] == 3 else ""))
    if with_label:
        label = inputs.get("sem_seg")
        if not isinstance(label, torch.Tensor) or label.shape != image.shape[1:] or label.is_floating_point():
            what = f"{label.dtype} {tuple(label.shape)}" if isinstance(label, torch.Tensor) else type(label).__name__
            raise ValueError(f"input {position}: training needs 'sem_seg', an integer label map of the image's size "
                             f"{tuple(image.shape[1:])}, got {what}")


def compile_is_auto(setting: Optional[Union[bool, str]]) -> bool:
    """Whether ``MODEL.COMPILE`` is the auto setting (None, the default, or ``"auto"``; also
    ``"null"`` / ``"none"``, how a command line writes the YAML default)."""
    return setting is None or (isinstance(setting, str) and setting.lower() in ("auto", "null", "none"))


def resolve_compile(setting: Optional[Union[bool, str]], device) -> bool:
    """``MODEL.COMPILE`` for ``device``: whether the aggregator is compiled.

    True / False as set. None or ``"auto"`` (the default): compile on CUDA devices, where the
    compiled aggregator is measured faster and leaner (docs/benchmarks.md: ViT-B, 150
    classes on an H200, 61 -> 39 ms and 4.1 -> 2.3 GiB); eager elsewhere (on a CPU the first
    call would build C++ kernels for minutes). ``device`` None: only an explicit True is on.
    Raises ``ValueError`` (one line) for another value.
    """
    if compile_is_auto(setting):
        return device is not None and torch.device(device).type == "cuda"
    if isinstance(setting, str):
        setting = {"true": True, "false": False}.get(setting.lower(), setting)
    if setting not in COMPILE_SETTINGS:
        raise ValueError(f"MODEL.COMPILE={setting!r}: expected True, False or auto")
    return bool(setting)


@META_ARCH_REGISTRY.register()
class CATSeg(nn.Module):
    """CAT-Seg: CLIP image tower + text encoder -> cosine cost volume -> aggregation -> per-class logits.

    See ``docs/architecture.md`` for the data flow.

    Args:
        backbone: :class:`~cat_seg.modeling.backbone.CLIPVisionBackbone` (the image tower).
        text_encoder: :class:`~cat_seg.modeling.clip.TextEncoder` (the text tower, with its cache).
        sem_seg_head: :class:`~cat_seg.modeling.heads.CATSegHead`.
        train_class_json, test_class_json: class-name jsons (read on first use).
        clip_pixel_mean, clip_pixel_std: CLIP normalisation on 0..255 RGB.
        size_divisibility: model-side padding of the batch (32).
        ignore_value: label ignored by the loss (255).
        train_pooling, test_pooling: class-aggregation pooling in training / inference
            ((2, 2) / (1, 1), the released models' and the evaluation protocol's).
        sliding_window: use the sliding-window protocol at inference.
        window_crop, window_overlap, window_canvas: its geometry (384, 0.333, 640).
        precision: ``MODEL.PRECISION`` (``auto`` | ``fp32`` | ``bf16`` | ``fp16``): the
            autocast dtype of inference, resolved for the model's device on every call
            (:func:`~cat_seg.modeling.precision.resolve_precision`). Training precision is
            the trainer's (same key). The constructor's default is ``fp32`` (the official
            computation, the same on every device); configs default to ``auto``.
        class_chunk_size: ``TEST.CLASS_CHUNK_SIZE`` (-1 = auto, see
            :func:`~cat_seg.modeling.aggregator.resolve_class_chunk_size`).
        compile: ``MODEL.COMPILE``: ``torch.compile`` the aggregator (cost volume,
            aggregation layers and decoder) in place: True, False, or None / ``"auto"``
            (compile when the model runs on a CUDA device; see :func:`resolve_compile`).
        cuda_graphs: ``TEST.CUDA_GRAPHS``: at inference on CUDA, replay :meth:`views_to_logits`
            as CUDA graphs (:class:`~cat_seg.modeling.cuda_graphs.GraphedForward`).

    Attributes:
        new_modules: state-dict key prefixes (``"sem_seg_head.adapter"``) of modules a subclass
            adds, which checkpoints of cat-seg or the official code lack: loading such a
            checkpoint (``MODEL.WEIGHTS``) leaves them as initialised, with a log line, where
            any other missing key is an error. Empty here.
    """

    new_modules: Sequence[str] = ()

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        text_encoder: nn.Module,
        sem_seg_head: nn.Module,
        train_class_json: str = "",
        test_class_json: str = "",
        clip_pixel_mean: Sequence[float],
        clip_pixel_std: Sequence[float],
        size_divisibility: int = 32,
        ignore_value: int = 255,
        train_pooling: Sequence[int] = (2, 2),
        test_pooling: Sequence[int] = (1, 1),
        sliding_window: bool = False,
        window_crop: int = 384,
        window_overlap: float = 0.333,
        window_canvas: int = 640,
        precision: str = "fp32",
        class_chunk_size: int = -1,
        compile: Optional[Union[bool, str]] = None,
        cuda_graphs: bool = False,
    ):
        super().__init__()
        text_clip = getattr(text_encoder, "clip", None)
        if text_clip is not None and text_clip is not getattr(backbone, "clip", text_clip):
            # the text encoder holds a reference, not a submodule: another CLIP's text tower would
            # be neither trained, nor saved, nor moved by .to()
            raise ValueError("text_encoder must encode with the backbone's CLIP model (TextEncoder(backbone.clip, "
                             "...)); another CLIP's text tower is not part of this model")
        self.backbone = backbone
        self.text_encoder = text_encoder
        self.sem_seg_head = sem_seg_head
        self.train_class_json = train_class_json
        self.test_class_json = test_class_json
        # class json path -> ((modification time, size) when read, its names)
        self._class_names: Dict[str, Tuple[Optional[Tuple[int, int]], List[str]]] = {}
        self.register_buffer("clip_pixel_mean", torch.tensor(clip_pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("clip_pixel_std", torch.tensor(clip_pixel_std).view(-1, 1, 1), persistent=False)
        self.size_divisibility = size_divisibility
        self.ignore_value = ignore_value
        self.train_pooling = tuple(train_pooling)
        self.test_pooling = tuple(test_pooling)
        self.sliding_window = sliding_window
        self.window_crop = window_crop
        self.window_stride = window_stride(window_crop, window_overlap)
        if sliding_window:
            check_window_geometry(window_canvas, window_crop, self.window_stride)
        self.window_canvas = (window_canvas, window_canvas)
        if str(precision).lower() not in PRECISIONS:
            raise ValueError(f"MODEL.PRECISION={precision!r}: expected one of {', '.join(PRECISIONS)}")
        self.precision = str(precision).lower()
        self.class_chunk_size = int(class_chunk_size)
        # what inference returns per image unless an input dict has "output_request"
        # (cat_seg.modeling.postprocess: probabilities by default; evaluation asks for labels)
        self.output_request = PROBABILITIES
        self.compile_setting = compile
        self._aggregator_compiled = False
        # view counts the compiled aggregator has run inference with (see _padded_view_count)
        self._compiled_view_counts = set()
        if resolve_compile(compile, None):  # explicitly on: compile now (auto waits for the device)
            self._compile_aggregator()
        # inference on CUDA: the per-view forward replayed as CUDA graphs (eager on CPU, in
        # training and with gradients), captured again when a submodule or tensor is replaced
        self._graphed_views = GraphedForward(self.views_to_logits, enabled=bool(cuda_graphs), module=self)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        text_encoder = TextEncoder(backbone.clip, cfg.MODEL.PROMPT_ENSEMBLE_TYPE)
        # the head needs the number of prompt templates (cost-embedding channels) besides the shapes
        sem_seg_head = SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.NAME)(
            cfg, backbone.output_shape(), num_templates=text_encoder.num_templates
        )
        # a registered head of a user may have no aggregator, or one of its own under that name
        check_grid = getattr(getattr(sem_seg_head, "aggregator", None), "check_grid", None)
        if callable(check_grid):
            check_grid(backbone.grid_size)  # now, not at the first forward
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "backbone": backbone,
            "text_encoder": text_encoder,
            "sem_seg_head": sem_seg_head,
            "train_class_json": head.TRAIN_CLASS_JSON,
            "test_class_json": head.TEST_CLASS_JSON,
            "clip_pixel_mean": cfg.MODEL.CLIP_PIXEL_MEAN,
            "clip_pixel_std": cfg.MODEL.CLIP_PIXEL_STD,
            "size_divisibility": cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            "ignore_value": head.IGNORE_VALUE,
            "train_pooling": head.POOLING_SIZES,
            "test_pooling": head.TEST_POOLING_SIZES or head.POOLING_SIZES,
            "sliding_window": cfg.TEST.SLIDING_WINDOW,
            "window_crop": cfg.TEST.SLIDING_WINDOW_CROP,
            "window_overlap": cfg.TEST.SLIDING_WINDOW_OVERLAP,
            "window_canvas": cfg.TEST.SLIDING_WINDOW_CANVAS,
            "precision": cfg.MODEL.PRECISION,
            "class_chunk_size": cfg.TEST.CLASS_CHUNK_SIZE,
            "compile": cfg.MODEL.COMPILE,
            "cuda_graphs": cfg.TEST.CUDA_GRAPHS,
        }

    @property
    def device(self) -> torch.device:
        return self.clip_pixel_mean.device

    @property
    def compiled(self) -> bool:
        """Whether the aggregator runs compiled on the model's current device (``MODEL.COMPILE``)."""
        return resolve_compile(self.compile_setting, self.device)

    def release_inference_caches(self):
        """Drop what inference keeps between calls (e.g. after an evaluation during training):
        the captured CUDA graphs and their memory, the cached text embeddings, which are
        keyed by the weights' versions and so never hit again once training updates the text
        tower, and the sliding window's cached merge weights (on the device). Later inference
        captures and encodes again."""
        self._graphed_views.reset()
        self.text_encoder.clear_cache()
        clear_weight_cache()

    def _compile_aggregator(self, compiled: bool = True):
        """Make the aggregator run compiled (``nn.Module.compile``) or, ``compiled=False``, eager
        again: MODEL.COMPILE auto compiles on CUDA, and a model moved to the CPU afterwards must
        not run the compiled module there (a first CPU call builds C++ kernels for minutes)."""
        if self._aggregator_compiled == compiled:
            return
        aggregator = getattr(self.sem_seg_head, "aggregator", None)
        if aggregator is None:  # a registered head of a user may have none
            if compiled:
                logger.warning(f"MODEL.COMPILE: the head {type(self.sem_seg_head).__name__} has no 'aggregator' "
                               "(the module cat-seg compiles); it runs eagerly")
        elif compiled:
            aggregator.compile()
        else:  # nn.Module has compile() but no inverse: it sets this attribute, which None clears
            aggregator._compiled_call_impl = None
        self._aggregator_compiled = compiled

    # ------------------------------------------------------------------ vocabularies
    def class_names(self, split: str) -> List[str]:
        """Class names of ``split`` (``train`` / ``test``): the list in ``train_class_json`` /
        ``test_class_json`` (assign either to switch vocabularies). Each file is read once and,
        outside training, again when it changes (its modification time or size: a long-lived
        process such as the web app sees an edited file). A training keeps the names it started
        with (every process of a run must train the same classes), a file that cannot be read
        again keeps the names read before (with a warning), and so does a removed one."""
        path = self.train_class_json if split == "train" else self.test_class_json
        key = f"MODEL.SEM_SEG_HEAD.{split.upper()}_CLASS_JSON"
        cached = self._class_names.get(path)
        if cached is not None and self.training:
            return cached[1]
        try:
            status = os.stat(resolve_vocabulary_path(path, key))  # the file read_class_json reads
            stamp = (status.st_mtime_ns, status.st_size)
        except (OSError, ValueError):
            stamp = None
        if cached is None:
            cached = (stamp, read_class_json(path, key))
        elif stamp is not None and cached[0] != stamp:
            try:
                cached = (stamp, read_class_json(path, key))
            except (OSError, ValueError) as exc:  # half-written by an editor, or broken: keep the names
                logger.warning(f"{key}: keeping the {len(cached[1])} class names read before: {exc}")
                cached = (stamp, cached[1])
        self._class_names[path] = cached
        return cached[1]

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """``[T, P, C]`` embeddings of ``class_names`` (recomputed in training, cached otherwise)."""
        return self.text_encoder(list(class_names))

    def inference_dtype(self) -> Optional[torch.dtype]:
        """Autocast dtype of inference on the model's device (None = fp32), from ``precision``."""
        return resolve_precision(self.precision, self.device)

    # ------------------------------------------------------------------ core
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """0..255 RGB ``[..., 3, H, W]`` -> CLIP-normalised float."""
        return (images.float() - self.clip_pixel_mean) / self.clip_pixel_std

    def predict_logits(
        self, clip_images: torch.Tensor, class_names: Sequence[str], pooling: Sequence[int]
    ) -> torch.Tensor:
        """CLIP-normalised images (any size) -> logits ``[B, T, s*h, s*w]`` on the ``h x w`` cost
        map upsampled by the decoder (``s`` = its ``upsampling``, 4 with two blocks)."""
        size = self.backbone.resolution
        if tuple(clip_images.shape[-2:]) != size:
            clip_images = F.interpolate(clip_images, size=size, mode="bilinear", align_corners=False)
        text = self.text_embeddings(class_names)
        compiled = self.compiled
        # MODEL.COMPILE auto: decided per call, on the device the model is on now
        self._compile_aggregator(compiled)
        chunk = resolve_class_chunk_size(self.class_chunk_size, clip_images.device, compiled)
        if self.training:
            return self.views_to_logits(clip_images, text, tuple(pooling), chunk)
        views = clip_images.shape[0]
        padded = self._padded_view_count(views) if compiled else views
        if padded > views:  # repeat the last view; the views do not interact, its copies' logits are dropped
            clip_images = torch.cat([clip_images, clip_images[-1:].expand(padded - views, -1, -1, -1)])
        return self._graphed_views(clip_images, text, tuple(pooling), chunk)[:views]

    def _padded_view_count(self, views: int) -> int:
        """Views to run at inference for ``views`` views with the compiled aggregator: the
        smallest count it has already run that holds them, else ``views`` (then remembered).

        The compiled graph (and its CUDA graph) is specialised to the number of views, so an
        evaluation's smaller last batch would otherwise compile once more, a minute or more on
        a GPU, against the work of a few repeated views (docs/architecture.md, "Compilation").
        """
        larger = [count for count in self._compiled_view_counts if count >= views]
        if larger:
            return min(larger)
        self._compiled_view_counts.add(views)
        return views

    def views_to_logits(self, clip_images: torch.Tensor, text: torch.Tensor, pooling: Sequence[int],
                        class_chunk: int) -> torch.Tensor:
        """The per-view forward: ``[V, 3, S, S]`` images at the CLIP resolution and ``[T, P, C]``
        text embeddings -> logits ``[V, T, s*h, s*w]`` (see :meth:`predict_logits`; what CUDA
        graphs capture at inference)."""
        features = self.backbone(clip_images)
        return self.sem_seg_head(features, text, pooling=pooling, class_chunk=class_chunk)

    def forward(self, batched_inputs: List[Dict], class_names: Optional[Sequence[str]] = None):
        """detectron2 interface.

        Args:
            batched_inputs: dicts with ``image`` (uint8 ``[3, H, W]`` RGB), in training
                ``sem_seg`` (``[H, W]`` int64), at inference optional ``height``/``width``
                (output size, default the image size).
            class_names: vocabulary at inference (default: the test class json).
        Returns:
            training: ``{"loss_sem_seg": loss}``; inference: one dict per input with the
            outputs its ``"output_request"`` entry, else :attr:`output_request`, asks for
            (:class:`~cat_seg.modeling.postprocess.OutputRequest`;
            by default ``{"sem_seg": [T, H, W]}`` class probabilities, what detectron2's
            evaluators read).
        """
        weight_dtype = self.clip_pixel_mean.dtype
        if weight_dtype in (torch.float16, torch.bfloat16):
            raise TypeError(
                f"the model's weights are {weight_dtype}: CAT-Seg keeps fp32 weights and runs in reduced precision "
                f"with autocast; set MODEL.PRECISION (the model's precision argument) to bf16 or fp16 instead of "
                f"converting the model with .to() / .half()"
            )
        for position, inputs in enumerate(batched_inputs):
            check_input(inputs, position, with_label=self.training)
        # MODEL.COMPILE auto, for the device the model is on now: here too, so that a subclass's
        # losses that calls the head itself (an auxiliary loss) gets the compiled aggregator
        self._compile_aggregator(self.compiled)
        if self.training:
            return self.losses(batched_inputs, class_names)
        names = list(class_names) if class_names is not None else self.class_names("test")
        with autocast(self.inference_dtype(), self.device):
            if self.sliding_window:
                return self.inference_sliding_window(batched_inputs, names)
            return self.inference(batched_inputs, names)

    def losses(self, batched_inputs: List[Dict], class_names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        names = list(class_names) if class_names is not None else self.class_names("train")
        images = ImageList.from_tensors(
            [self.normalize(x["image"].to(self.device)) for x in batched_inputs], self.size_divisibility
        )
        targets = ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs], self.size_divisibility, pad_value=self.ignore_value
        ).tensor
        logits = self.predict_logits(images.tensor, names, self.train_pooling)
        # resized to the targets' size inside the loss, a chunk of classes at a time
        return {"loss_sem_seg": sem_seg_bce_loss(logits, targets, self.ignore_value)}

    @staticmethod
    def _output_size(x: Dict, image: torch.Tensor):
        return x.get("height", image.shape[-2]), x.get("width", image.shape[-1])

    def whole_image_inputs(self, images: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Size]]:
        """The whole-image inference's CLIP inputs: uint8 RGB ``[3, H, W]`` images (on the
        model's device) -> ``[B, 3, S, S]`` at the CLIP resolution ``S``, each image normalised,
        padded with zeros to its own multiple of ``size_divisibility`` and squashed to ``S``;
        and each padded size ``(Hp, Wp)``."""
        size = self.backbone.resolution
        clip_images, padded_sizes = [], []
        for image in images:
            padded = ImageList.from_tensors([self.normalize(image)], self.size_divisibility).tensor
            padded_sizes.append(padded.shape[-2:])
            clip_images.append(F.interpolate(padded, size=size, mode="bilinear", align_corners=False))
        return torch.cat(clip_images), padded_sizes

    def inference(self, batched_inputs: List[Dict], class_names: Sequence[str]) -> List[Dict]:
        """Whole-image inference for a batch of any size (each image gets its own result).

        Each image is padded to its own multiple of ``size_divisibility`` and squashed to the
        CLIP resolution (as the official code does for its single image), so results do not
        depend on the other images of the batch. The output stage (sigmoid, resize back to the
        padded size, crop off the padding, resize to the requested output size) is
        :class:`~cat_seg.modeling.postprocess.WholeImageMaps`; what each result dict holds is
        set by the input's ``"output_request"`` key, else the model's ``output_request``
        attribute (:class:`~cat_seg.modeling.postprocess.OutputRequest`, default ``sem_seg``
        probabilities).
        """
        raw = [x["image"].to(self.device) for x in batched_inputs]
        clip_images, padded_sizes = self.whole_image_inputs(raw)
        logits = self.predict_logits(clip_images, class_names, self.test_pooling)
        default_request = self.output_request
        chunk_setting = self.class_chunk_size
        results = []
        for i, x in enumerate(batched_inputs):
            maps = WholeImageMaps(logits[i], padded_sizes[i], raw[i].shape[-2:], self._output_size(x, raw[i]),
                                  chunk_setting)
            results.append(x.get("output_request", default_request).outputs(maps))
        return results

    def inference_sliding_window(self, batched_inputs: List[Dict], class_names: Sequence[str]) -> List[Dict]:
        """Sliding-window protocol (``docs/architecture.md``) for every image of the batch in one forward.

        Per image: resize to the square canvas, cut the crops, add the whole image resized to
        the crop size as a global view; all crops of all images go through the model together.
        The views are merged by :meth:`merge_sliding_window`; what each result dict holds is
        set by ``output_request`` as in :meth:`inference`.
        """
        crop, canvas = self.window_crop, self.window_canvas
        boxes = window_boxes(canvas, crop, self.window_stride)
        views, raws = [], []
        for x in batched_inputs:
            image = x["image"].to(self.device).float()[None]
            raws.append(image)
            canvas_image = F.interpolate(image, size=canvas, mode="bilinear", align_corners=False)[0]
            global_view = F.interpolate(image, size=(crop, crop), mode="bilinear", align_corners=False)
            views.append(torch.cat([crop_windows(canvas_image, boxes, crop), global_view]))
        per_image = len(boxes) + 1
        logits = self.predict_logits(self.normalize(torch.cat(views)), class_names, self.test_pooling)
        default_request = self.output_request
        results = []
        for i, x in enumerate(batched_inputs):
            image_logits = logits[i * per_image:(i + 1) * per_image]
            maps = self.merge_sliding_window(image_logits, boxes, self._output_size(x, raws[i][0]))
            results.append(x.get("output_request", default_request).outputs(maps))
        return results

    def merge_sliding_window(self, logits: torch.Tensor, boxes, out_size) -> SlidingWindowMaps:
        """Per-view logits ``[n + 1, T, h, w]`` (crops at ``boxes``, then the global view) ->
        the image's :class:`~cat_seg.modeling.postprocess.SlidingWindowMaps`.

        Every view's logits are upsampled to the crop size, then sigmoid; crops are averaged
        over their coverage of the canvas, averaged 50/50 with the global view upsampled to
        the canvas, and the result is resized to ``out_size``. This runs on chunks of classes
        when the maps are read (``.probabilities()``, ``.labels_and_confidence()``), so memory
        is bounded by the chunk, not by the vocabulary; classes pruned in every view are
        expanded once.
        """
        return SlidingWindowMaps(logits, boxes, self.window_crop, self.window_canvas, out_size,
                                 self.class_chunk_size)
