"""Config keys of cat-seg: the official CAT-Seg key names plus a few of our own.

This module is the one place where config defaults live. ``add_cat_seg_config(cfg)`` is
called on a fresh ``detectron2.config.get_cfg()`` (after detectron2's DeepLab keys) by
``train_net.py``, the demo, the Python API and the tests. Every key added here is read by
the code (``tests/modeling/test_config_keys.py`` checks it).

Official keys keep their names and meaning (see README, "Config keys"), so configs and
command lines written for the official code work unchanged. Keys that official configs set
but cat-seg does not use are not defaults of our config: :data:`IGNORED_KEYS` lists them
with the reason, and :func:`add_official_compat_keys` (called by ``add_cat_seg_config``)
registers them with yacs as deprecated, so merging a file or a command line that sets them
logs one "ignoring" line per key instead of failing.
"""
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from detectron2.config import CfgNode as CN

if TYPE_CHECKING:
    import torch


def add_cat_seg_config(cfg):
    """Add all CAT-Seg keys (with their defaults) to ``cfg`` in place and return it."""
    from detectron2.projects.deeplab import add_deeplab_config

    if not hasattr(cfg.SOLVER, "POLY_LR_POWER"):
        add_deeplab_config(cfg)

    # ---------------------------------------------------------------- data
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    # CLIP reads RGB (detectron2's default is BGR; the official base config sets RGB)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    cfg.INPUT.SIZE_DIVISIBILITY = -1

    # ---------------------------------------------------------------- solver
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.CLIP_MULTIPLIER = 0.01

    # ---------------------------------------------------------------- model
    # detectron2's default is GeneralizedRCNN (the official base config sets CATSeg)
    cfg.MODEL.META_ARCHITECTURE = "CATSeg"
    # the official configs do not set it (their model builds CLIP itself); detectron2's
    # default would build a ResNet
    cfg.MODEL.BACKBONE.NAME = "CLIPVisionBackbone"
    cfg.MODEL.MASK_FORMER = CN()
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32

    head = cfg.MODEL.SEM_SEG_HEAD
    head.TRAIN_CLASS_JSON = "datasets/coco.json"
    head.TEST_CLASS_JSON = "datasets/coco.json"
    # CLIP architecture: an official name ("ViT-B/16", "ViT-L/14@336px"), an open_clip model
    # name ("ViT-B-16", "ViT-H-14", ...) or a path to an open_clip model-config JSON.
    head.CLIP_PRETRAINED = "ViT-B/16"
    # Where the CLIP weights come from: "default" (the tag the official code uses for the
    # architecture: "openai" for ViT-B/16 and ViT-L/14@336px, LAION's for ViT-H and ViT-G, so
    # the official commands for those work unchanged; for an open_clip model name "openai" where
    # it exists, else its first tag; downloads on first use), another open_clip
    # pretrained tag, a local checkpoint file, or "" / "none" (random init: tests, or when a full
    # CAT-Seg checkpoint is loaded afterwards through MODEL.WEIGHTS).
    head.CLIP_WEIGHTS = "default"
    # Side of the square image fed to CLIP. 0 = derive: FEATURE_RESOLUTION x patch size
    # (the official recipe: a 24x24 grid, so ViT-B/16 at 384 px and ViT-L/14 at 336 px).
    head.CLIP_RESOLUTION = 0
    # Blocks whose outputs guide the decoder. Empty = derive from depth (official 3/7 for
    # 12 blocks, 7/15 for 24 blocks).
    head.GUIDANCE_BLOCK_INDEXES = []
    head.PROMPT_DEPTH = 0
    head.PROMPT_LENGTH = 0
    head.TEXT_GUIDANCE_PROJ_DIM = 128
    head.APPEARANCE_GUIDANCE_PROJ_DIM = 128
    head.DECODER_DIMS = [64, 32]
    head.DECODER_GUIDANCE_DIMS = [256, 128]
    head.DECODER_GUIDANCE_PROJ_DIMS = [32, 16]
    head.NUM_LAYERS = 4
    head.NUM_HEADS = 4
    head.HIDDEN_DIMS = 128
    head.POOLING_SIZES = [6, 6]
    # Pooling of the class aggregation at inference (the official eval.sh sets
    # POOLING_SIZES [1,1] for evaluation; this key lets training-time evaluation differ).
    # Empty = use POOLING_SIZES.
    head.TEST_POOLING_SIZES = []
    head.FEATURE_RESOLUTION = [24, 24]
    head.WINDOW_SIZES = 12
    head.ATTENTION_TYPE = "linear"
    head.CLIP_FINETUNE = "attention"
    head.PAD_LEN = 256
    # The official class block adds its (pooled) input a second time (docs/architecture.md).
    # Released weights were trained with it; turn off only for new trainings.
    head.CLASS_RESIDUAL_QUIRK = True

    cfg.MODEL.PROMPT_ENSEMBLE_TYPE = "single"
    cfg.MODEL.CLIP_PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]
    cfg.MODEL.CLIP_PIXEL_STD = [68.5005327, 66.6321579, 70.3231630]

    # ---------------------------------------------------------------- test
    cfg.TEST.SLIDING_WINDOW = False
    # Sliding-window geometry (official values hard-coded: crop 384, overlap 1/3, canvas 640).
    cfg.TEST.SLIDING_WINDOW_CROP = 384
    cfg.TEST.SLIDING_WINDOW_OVERLAP = 0.333
    cfg.TEST.SLIDING_WINDOW_CANVAS = 640
    # Images per evaluation forward (the official code is fixed at 1); 0 = auto: 8 on CUDA,
    # 1 elsewhere (cat_seg.engine.trainer.resolve_test_batch_size).
    cfg.TEST.IMS_PER_BATCH = 0
    # Inference on CUDA: replay the per-view forward (CLIP image tower + head) as CUDA graphs,
    # one capture per (views, vocabulary size, dtype); no effect on CPU (cat_seg/modeling/cuda_graphs.py).
    # Off by default: with the compiled aggregator it failed a replay-equals-eager test on an
    # H200 (docs/benchmarks.md, "Run 3"), and evaluations must give the eager numbers. True is
    # the speed setting of the GPU benchmarks.
    cfg.TEST.CUDA_GRAPHS = False
    # Classes per chunk (per image) of the per-class blocks, the decoder and the
    # sliding-window post-processing at inference (0 = all at once; -1 = auto: 32 on CPU,
    # where small chunks stay in cache, all at once on GPU or with MODEL.COMPILE). Bounds
    # memory for large vocabularies; results do not depend on it (up to float rounding). With MODEL.CHECKPOINT_ACTIVATIONS it is also
    # the recomputation chunk in training (0 = one image).
    cfg.TEST.CLASS_CHUNK_SIZE = -1

    # ---------------------------------------------------------------- precision and speed
    # Compute precision for training and inference: auto | fp32 | bf16 | fp16
    # (cat_seg/modeling/precision.py; auto = bf16 where the device computes it natively).
    cfg.MODEL.PRECISION = "auto"
    # torch.compile the aggregator and decoder (one graph, dynamic vocabulary size):
    # True | False | auto (null, the default: on CUDA devices, eager on CPU;
    # cat_seg.modeling.meta_arch.cat_seg.resolve_compile). None so that yacs accepts both
    # booleans and "auto".
    cfg.MODEL.COMPILE = None
    # Training: recompute the per-class aggregation/decoder activations in the backward pass.
    cfg.MODEL.CHECKPOINT_ACTIVATIONS = False
    add_official_compat_keys(cfg)
    for add_keys in CONFIG_EXTENSIONS:  # keys of methods built on cat-seg
        add_keys(cfg)
    return cfg


#: Functions adding the config keys of methods built on cat-seg, called by
#: :func:`add_cat_seg_config` after its own keys (:func:`register_config_keys`).
CONFIG_EXTENSIONS: List[Callable] = []


def register_config_keys(add_keys: Callable) -> Callable:
    """Register ``add_keys(cfg)``, which adds a new method's own config keys in detectron2's
    way (``cfg.MODEL.MY_METHOD = CN(); cfg.MODEL.MY_METHOD.WEIGHT = 0.1``), so that every tool
    building cat-seg's config (train_net, eval.sh, the demo, the Python API, the benchmark)
    accepts them in config files and on command lines. Use it as a decorator in the module
    that registers the method's components (docs/architecture.md, "Building on cat-seg");
    registering the same function again does nothing. Returns ``add_keys``."""
    if add_keys not in CONFIG_EXTENSIONS:
        CONFIG_EXTENSIONS.append(add_keys)
    return add_keys


# Keys whose values are file paths. A relative one written in a config file is looked up
# like this: relative to the working folder, else the repository (cat_seg.utils.resolve_path,
# at use), else a folder above the config file (resolve_paths_near_config, at load), so that
# a config of a checkout works from any folder, with an installed package too.
CONFIG_PATH_KEYS = (
    "MODEL.WEIGHTS",
    "MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED",
    "MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS",
    "MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON",
    "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON",
)


_MISSING = object()


def get_key(cfg, key: str, default: Any = _MISSING) -> Any:
    """The value of the dotted ``key`` (``"MODEL.SEM_SEG_HEAD.NAME"``) in ``cfg`` (a config
    node or a dict of dicts); ``default`` when a part of it is missing, else ``KeyError``
    naming the key."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _MISSING:
                raise KeyError(f"config key {key} is missing (add it with cat_seg.config.add_cat_seg_config)")
            return default
        node = node[part]
    return node


def _node_and_leaf(cfg, key: str):
    """``(node, leaf)`` of the dotted ``key``: ``node[leaf]`` is its value in ``cfg``."""
    parents, _, leaf = key.rpartition(".")
    return (get_key(cfg, parents) if parents else cfg), leaf


class ConfigChainError(ValueError):
    """A ``_BASE_`` of a config file that names no file, is not a path, or leads back to a
    file whose ``_BASE_`` chain holds it (detectron2 recursed until ``RecursionError``)."""


def config_file_chain(config_file: str) -> List[Tuple[str, Any]]:
    """``(path, YAML content)`` of ``config_file`` and of the files it inherits from through
    ``_BASE_`` (a path or a list of paths, each relative to the file naming it, ``~`` expanded,
    as detectron2 reads them), depth first, the file itself first.

    A file that cannot be read or parsed, or that is not a mapping of keys, ends its branch
    (merging the config reports those files' own errors); so does a ``_BASE_`` URL (detectron2
    downloads it). Raises :class:`ConfigChainError`, one line naming the file, its ``_BASE_``
    value and the path it resolves to, for a ``_BASE_`` that names no file or leads back into
    its own chain (the cycle is named), or that is not a path."""
    import os

    import yaml

    chain = []

    def visit(path: str, branch: List[str]) -> None:
        # branch: the files from config_file down to path, for finding and naming a cycle
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except Exception:  # noqa: BLE001 - unreadable, YAML syntax, unsafe tags: reported when merging
            return
        chain.append((path, data))
        bases = data.get("_BASE_") if isinstance(data, dict) else None
        for base in bases if isinstance(bases, list) else [] if bases is None else [bases]:
            where = f"_BASE_ {base!r} of config file {path!r}"
            if not isinstance(base, str) or not base:
                raise ConfigChainError(f"{where}: expected the path of a YAML config file (or a list of paths)")
            if base.startswith(("https://", "http://")):
                continue
            expanded = os.path.expanduser(base)
            target = os.path.normpath(expanded if os.path.isabs(expanded) else
                                      os.path.join(os.path.dirname(path), expanded))
            if not os.path.isfile(target):
                problem = "is a directory" if os.path.isdir(target) else "does not exist"
                raise ConfigChainError(f"{where} not found: {target!r} {problem}")
            ancestors = [os.path.abspath(p) for p in branch]
            if os.path.abspath(target) in ancestors:
                cycle = branch[ancestors.index(os.path.abspath(target)):] + [target]
                raise ConfigChainError(f"{where} leads back to {target!r}, a cycle of _BASE_ files: "
                                       f"{' -> '.join(cycle)}")
            visit(target, branch + [target])

    if os.path.isfile(config_file):
        visit(config_file, [config_file])
    return chain


def resolve_paths_near_config(cfg, config_file: str) -> None:
    """Make the relative file paths of :data:`CONFIG_PATH_KEYS` absolute where they exist
    only relative to a folder above ``config_file`` or above one of the ``_BASE_`` files it
    inherits from (nearest first, the file's own folders before its bases'), e.g.
    ``configs/clip_models/tiny-vit-b16.json`` in ``<checkout>/configs/quick_schedules/x.yaml``
    run from another folder, or inherited by a config of one's own outside the checkout.
    Values that exist as given, are not paths (``openai``, ``ViT-B/16`` is not a file
    anywhere) or are found nowhere are left as they are."""
    import os

    from .utils import resolve_path

    folders = []
    for path in [path for path, _ in config_file_chain(config_file)] or [config_file]:
        folder = os.path.dirname(os.path.abspath(path))
        while folder not in folders:
            folders.append(folder)
            folder = os.path.dirname(folder)
    for key in CONFIG_PATH_KEYS:
        node, leaf = _node_and_leaf(cfg, key)
        value = node[leaf]
        if not isinstance(value, str) or not value or os.path.isabs(value) or "/" not in value.replace(os.sep, "/"):
            continue
        if os.path.exists(resolve_path(value)):
            continue
        for base in folders:
            candidate = os.path.join(base, value)
            if os.path.isfile(candidate):
                node[leaf] = candidate
                break


def check_model_builds(cfg) -> Optional["torch.nn.Module"]:
    """``MODEL.META_ARCHITECTURE`` must be :class:`CATSeg` or a registered subclass; its model
    is then built on the meta device (no memory, no weights: ``CLIP_WEIGHTS none``) and
    returned (``None`` where the meta build failed otherwise), so that
    what the constructors reject (heads that do not divide the hidden dim, windows that do not
    tile the patch grid, decoder lists of different lengths, a sliding-window geometry that
    leaves part of the canvas uncovered, an architecture or head that does not take the
    constructor arguments it is built with) is a one-line ``ValueError`` before a run starts.
    Anything else the meta build raises is left to the real build."""
    import logging

    import torch
    from detectron2.modeling import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY

    from .modeling.meta_arch.cat_seg import CATSeg

    name = cfg.MODEL.META_ARCHITECTURE
    try:
        architecture = META_ARCH_REGISTRY.get(name)
    except KeyError:
        architecture = None
    how = ("register yours in a script of your own that runs train_net, or import the module that registers it "
           "before building the model in Python: docs/architecture.md, 'Building on cat-seg'")
    if architecture is None:
        raise ValueError(f"MODEL.META_ARCHITECTURE={name!r}: not registered; expected CATSeg or a subclass of it "
                         f"({how})")
    if not (isinstance(architecture, type) and issubclass(architecture, CATSeg)):
        raise ValueError(f"MODEL.META_ARCHITECTURE={name!r}: registered, but not CATSeg or a subclass of it")
    head = cfg.MODEL.SEM_SEG_HEAD.NAME
    if head not in SEM_SEG_HEADS_REGISTRY:
        raise ValueError(f"MODEL.SEM_SEG_HEAD.NAME={head!r}: not a registered head; expected CATSegHead or a head "
                         f"registered in detectron2's SEM_SEG_HEADS_REGISTRY ({how})")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS = "none"
    try:
        with torch.device("meta"):
            return architecture(cfg)
    except ValueError:
        raise
    except TypeError as exc:  # e.g. a head whose constructor does not take what CATSeg passes it
        raise ValueError(f"MODEL.META_ARCHITECTURE={name!r} with MODEL.SEM_SEG_HEAD.NAME={head!r} and "
                         f"MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME!r} cannot be built: {exc} (an architecture "
                         "is built as Arch(cfg), with detectron2's @configurable __init__ and from_config; CATSeg "
                         "builds its backbone as Backbone(cfg, input_shape) and its head as Head(cfg, input_shape, "
                         "num_templates=...): docs/architecture.md, 'Building on cat-seg')") from exc
    except Exception as exc:  # e.g. an operation a meta tensor cannot do: the real build decides
        logging.getLogger(__name__).debug("model not built on the meta device: %s", exc)
        return None


def check_backbone(name: str) -> None:
    """``MODEL.BACKBONE.NAME`` must build a CLIP image tower (:class:`CLIPVisionBackbone` or a
    subclass registered in detectron2's ``BACKBONE_REGISTRY``); the model reads its CLIP."""
    from detectron2.modeling import BACKBONE_REGISTRY

    from .modeling.backbone import CLIPVisionBackbone

    try:
        backbone = BACKBONE_REGISTRY.get(name)
    except KeyError:
        raise ValueError(f"MODEL.BACKBONE.NAME={name!r}: not registered; expected CLIPVisionBackbone or a registered "
                         "subclass of it (register yours in a script of your own that runs train_net, or import the "
                         "module that registers it before building the model in Python: docs/architecture.md, "
                         "'Building on cat-seg')") from None
    if not (isinstance(backbone, type) and issubclass(backbone, CLIPVisionBackbone)):
        raise ValueError(f"MODEL.BACKBONE.NAME={name!r}: CAT-Seg needs a CLIP backbone, expected "
                         f"CLIPVisionBackbone (or a registered subclass of it)")


# Numeric keys whose other values the model, the data loader or detectron2's hooks reject once
# running (or misbehave on): key, smallest value, what is expected.
NUMBER_RANGES = (
    ("MODEL.SEM_SEG_HEAD.HIDDEN_DIMS", 1, "a positive number of channels"),
    ("MODEL.SEM_SEG_HEAD.NUM_HEADS", 1, "a positive number of heads"),
    ("MODEL.SEM_SEG_HEAD.NUM_LAYERS", 0, "0 or more aggregation layers"),
    ("MODEL.SEM_SEG_HEAD.WINDOW_SIZES", 1, "a positive window side"),
    ("MODEL.SEM_SEG_HEAD.PAD_LEN", 0, "0 (no padding) or a positive class-sequence length"),
    ("MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_PROJ_DIM", 0, "0 (no text guidance) or a positive number of channels"),
    ("MODEL.SEM_SEG_HEAD.APPEARANCE_GUIDANCE_PROJ_DIM", 0,
     "0 (no appearance guidance) or a positive number of channels"),
    ("MODEL.SEM_SEG_HEAD.CLIP_RESOLUTION", 0, "0 (derived) or a positive CLIP input side"),
    ("TEST.SLIDING_WINDOW_CROP", 1, "a positive crop side"),
    ("TEST.SLIDING_WINDOW_CANVAS", 1, "a positive canvas side"),
    ("TEST.SLIDING_WINDOW_OVERLAP", 0, "an overlap in [0, 1)"),
    ("DATALOADER.NUM_WORKERS", 0, "0 (load in the main process) or more worker processes"),
    ("TEST.CLASS_CHUNK_SIZE", -1, "-1 (auto), 0 (all classes at once) or a positive number of classes"),
    ("INPUT.MIN_SIZE_TEST", 0, "0 (keep the image's size) or the shorter side in pixels"),
    ("INPUT.MAX_SIZE_TEST", 1, "a positive longest side in pixels"),
    ("MODEL.MASK_FORMER.SIZE_DIVISIBILITY", 0, "0 (no padding) or a positive size images are padded to a "
                                               "multiple of"),
)
# Lists of channel counts, one per decoder up-block: every entry must be positive.
CHANNEL_LISTS = ("MODEL.SEM_SEG_HEAD.DECODER_DIMS", "MODEL.SEM_SEG_HEAD.DECODER_GUIDANCE_DIMS",
                 "MODEL.SEM_SEG_HEAD.DECODER_GUIDANCE_PROJ_DIMS")
# What detectron2's auto_scale_workers changes (SOLVER.REFERENCE_WORLD_SIZE).
SCALED_KEYS = ("SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR", "SOLVER.MAX_ITER", "SOLVER.WARMUP_ITERS", "SOLVER.STEPS",
               "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD")
TRAIN_NUMBER_RANGES = (
    ("SOLVER.CHECKPOINT_PERIOD", 1, "a positive number of iterations"),
    ("TEST.EVAL_PERIOD", 0, "0 (evaluate at the end only) or a positive number of iterations"),
    ("SOLVER.WARMUP_ITERS", 0, "0 or more iterations"),
    # torch's optimizers check only their default group; a negative LR multiplier or weight
    # decay in a group would train silently in the wrong direction
    ("SOLVER.CLIP_MULTIPLIER", 0, "a factor >= 0 of SOLVER.BASE_LR for CLIP's parameters"),
    ("SOLVER.BACKBONE_MULTIPLIER", 0, "a factor >= 0 of SOLVER.BASE_LR for the backbone's other parameters"),
    ("SOLVER.WEIGHT_DECAY", 0, "a weight decay >= 0"),
    ("SOLVER.WEIGHT_DECAY_NORM", 0, "a weight decay >= 0"),
    ("SOLVER.WEIGHT_DECAY_EMBED", 0, "a weight decay >= 0"),
    ("SOLVER.MOMENTUM", 0, "a momentum >= 0 (SGD)"),
    ("SOLVER.POLY_LR_POWER", 0, "a power >= 0 of WarmupPolyLR's decay"),
    ("SOLVER.POLY_LR_CONSTANT_ENDING", 0, "a learning-rate factor >= 0 (WarmupPolyLR)"),
)


def check_config_values(cfg, processes: int = 1, eval_only: bool = True) -> None:
    """The values the model, the CLIP builder and the trainer would reject once started,
    checked with their own validators before anything is built: precision, compile,
    fine-tuning policy, prompt templates, class attention, CLIP architecture and weights (a
    missing file, an unknown tag; nothing is downloaded), device, ``INPUT.FORMAT``, pooling
    sizes, the ranges of :data:`NUMBER_RANGES`, CLIP's pixel mean and std, the decoder's
    :data:`CHANNEL_LISTS`, the evaluation batch, the model's own
    constructors (:func:`check_model_builds`) and, for training, the training mapper and its
    augmentations (a crop's single-class area), the optimizer (SGD's Nesterov momentum), the
    gradient-clipping type and threshold, the LR schedule, the ranges of
    :data:`TRAIN_NUMBER_RANGES` and the batch (divisible by the ``processes``), all of them as
    ``SOLVER.REFERENCE_WORLD_SIZE`` scales them for ``processes``. Raises a one-line
    ``ValueError``
    (the command lines make it an ``error:`` line and exit status 2, the API a
    ``CATSegError``)."""
    if not eval_only:
        from .engine.trainer import scale_to_processes

        scaled = scale_to_processes(cfg, processes)
        if scaled is not cfg:  # check the values training uses; errors about them say they were scaled
            try:
                return check_config_values(scaled, processes, eval_only=False)
            except ValueError as exc:
                if not any(key in str(exc) for key in SCALED_KEYS):
                    raise
                raise ValueError(f"{exc} (after scaling for {processes} training process(es) from "
                                 f"SOLVER.REFERENCE_WORLD_SIZE={cfg.SOLVER.REFERENCE_WORLD_SIZE})") from None
    import torch

    from .modeling.class_aggregation import ATTENTION_FUNCTIONS
    from .modeling.clip.builder import CLIPLoadError, clip_weights_source
    from .modeling.clip.finetune import FINETUNE_MODES
    from .modeling.clip.model_configs import resolve_clip_arch
    from .modeling.clip.prompts import get_templates
    from .modeling.meta_arch.cat_seg import resolve_compile
    from .modeling.precision import PRECISIONS

    head = cfg.MODEL.SEM_SEG_HEAD

    def choice(key: str, value, allowed) -> None:
        if value not in allowed:
            raise ValueError(f"{key}={value!r}: expected one of {', '.join(map(str, allowed))}")

    check_backbone(cfg.MODEL.BACKBONE.NAME)
    if cfg.INPUT.FORMAT != "RGB":
        raise ValueError(f"INPUT.FORMAT={cfg.INPUT.FORMAT!r}: expected 'RGB', the channel order of CLIP's images "
                         "(MODEL.CLIP_PIXEL_MEAN/STD are RGB)")
    choice("MODEL.PRECISION", str(cfg.MODEL.PRECISION).lower(), PRECISIONS)
    choice("MODEL.SEM_SEG_HEAD.CLIP_FINETUNE", head.CLIP_FINETUNE, FINETUNE_MODES)
    choice("MODEL.SEM_SEG_HEAD.ATTENTION_TYPE", head.ATTENTION_TYPE, sorted(ATTENTION_FUNCTIONS))
    try:
        resolve_compile(cfg.MODEL.COMPILE, None)
        get_templates(cfg.MODEL.PROMPT_ENSEMBLE_TYPE)
        arch = resolve_clip_arch(head.CLIP_PRETRAINED)
        clip_weights_source(arch, head.CLIP_WEIGHTS)
    except CLIPLoadError as exc:
        raise ValueError(str(exc)) from None
    try:
        torch.device(cfg.MODEL.DEVICE)
    except RuntimeError:
        raise ValueError(f"MODEL.DEVICE={cfg.MODEL.DEVICE!r}: expected cpu, cuda or cuda:N") from None
    # [h, w] keys; TEST_POOLING_SIZES may be [] (= POOLING_SIZES)
    for key, note in (("POOLING_SIZES", ""), ("TEST_POOLING_SIZES", " (or [] for POOLING_SIZES)"),
                      ("FEATURE_RESOLUTION", " (the patch grid of the cost volume)")):
        sizes = list(head.get(key))
        if (sizes or key != "TEST_POOLING_SIZES") and (
                len(sizes) != 2 or not all(isinstance(v, int) and v >= 1 for v in sizes)):
            raise ValueError(f"MODEL.SEM_SEG_HEAD.{key}={sizes}: expected two positive integers [h, w]{note}")
    for key, minimum, expected in NUMBER_RANGES + (() if eval_only else TRAIN_NUMBER_RANGES):
        node, leaf = _node_and_leaf(cfg, key)
        if not isinstance(node[leaf], (int, float)) or node[leaf] < minimum:
            raise ValueError(f"{key}={node[leaf]!r}: expected {expected}")
    for key, minimum in (("MODEL.CLIP_PIXEL_MEAN", None), ("MODEL.CLIP_PIXEL_STD", 0)):
        node, leaf = _node_and_leaf(cfg, key)
        values = list(node[leaf])
        if len(values) != 3 or not all(isinstance(v, (int, float)) and (minimum is None or v > minimum)
                                       for v in values):
            expected = "three positive numbers" if minimum is not None else "three numbers"
            raise ValueError(f"{key}={values}: expected {expected}, one per RGB channel on the 0-255 scale")
    for key in CHANNEL_LISTS:
        node, leaf = _node_and_leaf(cfg, key)
        if not all(isinstance(v, int) and v >= 1 for v in node[leaf]):
            raise ValueError(f"{key}={list(node[leaf])}: expected a positive number of channels per decoder block")
    from .engine.trainer import resolve_test_batch_size

    resolve_test_batch_size(cfg)
    check_model_builds(cfg)
    if not eval_only:
        from .data.dataset_mappers import TRAIN_MAPPERS, build_train_augmentations
        from .solver.build import CLIP_TYPES, OPTIMIZERS, check_lr_scheduler

        choice("INPUT.DATASET_MAPPER_NAME", cfg.INPUT.DATASET_MAPPER_NAME, sorted(TRAIN_MAPPERS))
        build_train_augmentations(cfg)  # raises for a sampling, crop type or flip it cannot use
        choice("SOLVER.OPTIMIZER", str(cfg.SOLVER.OPTIMIZER).upper(), OPTIMIZERS)
        if str(cfg.SOLVER.OPTIMIZER).upper() == "SGD" and cfg.SOLVER.NESTEROV and not cfg.SOLVER.MOMENTUM > 0:
            raise ValueError(f"SOLVER.NESTEROV True with SOLVER.MOMENTUM={cfg.SOLVER.MOMENTUM!r}: Nesterov momentum "
                             "needs a momentum > 0 (SGD)")
        choice("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE, CLIP_TYPES)
        clip_value = cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE
        if cfg.SOLVER.CLIP_GRADIENTS.ENABLED and not (isinstance(clip_value, (int, float)) and clip_value > 0):
            raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE={clip_value!r}: expected a positive clipping "
                             "threshold (or SOLVER.CLIP_GRADIENTS.ENABLED False)")
        area = get_key(cfg, "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA")
        if cfg.INPUT.CROP.ENABLED and not (isinstance(area, (int, float)) and 0 < area <= 1):
            raise ValueError(f"INPUT.CROP.SINGLE_CATEGORY_MAX_AREA={area!r}: expected a fraction in (0, 1] of the "
                             "crop one class may cover (1.0: no constraint)")
        norm_type = cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE
        if not (isinstance(norm_type, (int, float)) and norm_type > 0):
            raise ValueError(f"SOLVER.CLIP_GRADIENTS.NORM_TYPE={norm_type!r}: expected a positive norm order p "
                             "(2.0: Euclidean; .inf: the largest absolute value)")
        check_lr_scheduler(cfg)
        batch = cfg.SOLVER.IMS_PER_BATCH
        if batch < 1 or batch % processes:
            raise ValueError(f"SOLVER.IMS_PER_BATCH={batch}: expected a positive multiple of the {processes} "
                            f"training process(es) (--num-gpus x --num-machines)")


# detectron2 keys cat-seg does not read whose other values would change what detectron2 does:
# key -> (the value cat-seg behaves as, what it uses instead, whether another value is an
# error (training would silently differ) or a warning); ``{cfg...}`` in the text is filled in
# from the config. Other unread detectron2 keys
# (MODEL.BACKBONE.FREEZE_AT, DATALOADER.FILTER_EMPTY_ANNOTATIONS, ...) concern models or
# datasets cat-seg does not have; the official configs set them to no effect either.
UNREAD_DETECTRON2_KEYS = {
    "DATALOADER.SAMPLER_TRAIN": ("TrainingSampler", "cat-seg samples training images uniformly with its own "
                                 "deterministic, resumable stream (cat_seg/engine/data.py)", True),
    "SOLVER.AMP.ENABLED": (False, "the training precision is MODEL.PRECISION (auto: bf16 where the device "
                           "computes it natively); MODEL.PRECISION is {cfg.MODEL.PRECISION!r}", False),
    "TEST.AUG.ENABLED": (False, "test-time augmentation is not implemented; the paper's protocol is "
                         "TEST.SLIDING_WINDOW True", True),
    # detectron2's bias rules (its get_default_optimizer_params); the official solver has none
    "SOLVER.BIAS_LR_FACTOR": (1.0, "a bias gets the learning rate of its module, as in the official solver "
                              "(cat_seg/solver/build.py)", True),
    "SOLVER.WEIGHT_DECAY_BIAS": (None, "a bias gets SOLVER.WEIGHT_DECAY (or WEIGHT_DECAY_NORM in a norm), as in "
                                 "the official solver (cat_seg/solver/build.py)", True),
}


def unread_key_messages(cfg):
    """``(message, is_error)`` for each key of :data:`UNREAD_DETECTRON2_KEYS` set to another
    value than the one cat-seg behaves as."""
    messages = []
    for key, (value, instead, is_error) in UNREAD_DETECTRON2_KEYS.items():
        node, leaf = _node_and_leaf(cfg, key)
        if node[leaf] != value:
            instead = instead.format(cfg=cfg)
            messages.append((f"{key}={node[leaf]!r} is not supported: cat-seg behaves as {value!r} ({instead})",
                             is_error))
    return messages


# Keys that official CAT-Seg configs (or earlier cat-seg versions) set and that cat-seg does
# not read, with the reason. Merging them is not an error: yacs logs "Deprecated config key
# (ignoring)" once per key and skips it (a whole subtree for a node such as MODEL.SWIN).
IGNORED_KEYS = {
    "MODEL.SWIN": "Swin feature backbone of the arXiv-v1 model (removed from the official code's model)",
    "MODEL.PROMPT_ENSEMBLE": "superseded by MODEL.PROMPT_ENSEMBLE_TYPE in the official code",
    "MODEL.SEM_SEG_HEAD.TRAIN_CLASS_INDEXES": "seen/unseen split files of the official code; unused",
    "MODEL.SEM_SEG_HEAD.TEST_CLASS_INDEXES": "seen/unseen split files of the official code; unused",
    "MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_DIM": "derived from the CLIP model (its embedding dim)",
    "MODEL.SEM_SEG_HEAD.APPEARANCE_GUIDANCE_DIM": "derived from the CLIP model (its embedding dim)",
    "DATASETS.VAL_ALL": "unused dataset list of the official code",
    "SOLVER.AMP.PRECISION": "training precision is MODEL.PRECISION",
    "MODEL.FAST": "speed options of earlier cat-seg versions; the model has one implementation now "
                  "(precision: MODEL.PRECISION, memory: MODEL.CHECKPOINT_ACTIVATIONS, TEST.CLASS_CHUNK_SIZE)",
}


# Leaves of the ignored nodes: a file skips a whole node, a command line names leaves.
_IGNORED_LEAVES = {
    "MODEL.SWIN": ("PRETRAIN_IMG_SIZE", "PATCH_SIZE", "EMBED_DIM", "DEPTHS", "NUM_HEADS", "WINDOW_SIZE", "MLP_RATIO",
                   "QKV_BIAS", "QK_SCALE", "DROP_RATE", "ATTN_DROP_RATE", "DROP_PATH_RATE", "APE", "PATCH_NORM",
                   "OUT_FEATURES", "USE_CHECKPOINT"),
    "MODEL.FAST": ("INFERENCE_AUTOCAST", "AUTOCAST_DTYPE", "AUTOCAST_CLIP", "FP32_COST_EMBEDDING",
                   "FP32_LAST_DECODER_BLOCK", "CHECKPOINT_ACTIVATIONS", "WINDOW_ATTENTION_4D", "TOKEN_LAYOUT",
                   "PADDING_CLOSED_FORM", "FUSED_UPCONV", "SKIP_PRUNED_CLASSES", "TRUNCATE_TEXT"),
}


def add_official_compat_keys(cfg):
    """Accept (and ignore, with a log line) the keys of :data:`IGNORED_KEYS` when merging into ``cfg``."""
    keys = list(IGNORED_KEYS)
    keys += [f"{node}.{leaf}" for node, leaves in _IGNORED_LEAVES.items() for leaf in leaves]
    for key in keys:
        if not cfg.key_is_deprecated(key):
            cfg.register_deprecated_key(key)
    return cfg
