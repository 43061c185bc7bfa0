"""Train and evaluate CAT-Seg (detectron2 conventions); the ``cat-seg-train`` command.

    cat-seg-train --config-file configs/vitb_384.yaml --num-gpus 4
    cat-seg-train --config-file configs/vitb_384.yaml --eval-only MODEL.WEIGHTS model_base.pth
    cat-seg-train --config-file CFG --resume            # continue after a crash or kill
    cat-seg-train --config-file CFG --check-only [--eval-only] KEY VALUE ...   # check, run nothing

(``python train_net.py ...`` and ``python -m cat_seg.cli.train_net ...`` are the same.)
Multi-node: ``--num-machines M --machine-rank R --dist-url tcp://HOST:PORT``. On a machine
without GPUs ``--num-gpus N`` starts N CPU processes (gloo backend).

Before any process starts, the config (file and ``KEY VALUE`` overrides), ``OUTPUT_DIR``,
the class jsons, the datasets and, with ``--eval-only``, ``MODEL.WEIGHTS`` are checked; a
mistake there prints one ``error: ...`` line and exits with status 2. ``CATSEG_DEBUG=1``
shows the traceback instead.
"""
import logging
import os
import sys
from typing import Dict, Optional, Sequence

from ..utils import error_line, last_traceback_error
from .errors import UserError, closest_name, merge_config, one_line_argument_errors, run_main
from .ports import listen_problem

logger = logging.getLogger("cat_seg")


def build_parser():
    from detectron2.engine import default_argument_parser

    parser = one_line_argument_errors(default_argument_parser())
    parser.add_argument("--check-only", action="store_true",
                        help="check the config (keys and values), OUTPUT_DIR, class jsons, datasets and (with "
                             "--eval-only) the weights, then exit")
    parser.add_argument("--check-labels", action="store_true",
                        help="also read every label map of the datasets before starting (modes, sizes against "
                             "the images, values against the classes) and list the bad ones; otherwise a label "
                             "is read when used, and a bad one stops the run there")
    # detectron2's default is a fixed port per user: two runs of one user on a machine collide
    parser.set_defaults(dist_url=None)
    for action in parser._actions:
        if action.dest == "dist_url":
            action.help = ("rendezvous of the processes: 'auto' (a free port of this machine; the default "
                           "on one machine) or tcp://HOST:PORT of machine 0 (needed with --num-machines > 1)")
    return parser


LOOPBACK_HOSTS = ("localhost", "localhost.localdomain", "ip6-localhost")


def check_launch(args) -> None:
    """The process options, checked before anything starts (a mistake there was a traceback in
    every process, or a silent 30-minute wait for processes that never come); fills in
    ``args.dist_url`` (``auto`` on one machine when not given)."""
    import ipaddress
    import socket
    from urllib.parse import urlparse

    import torch

    if args.num_gpus < 1 or args.num_machines < 1 or not 0 <= args.machine_rank < args.num_machines:
        raise UserError(f"--num-gpus {args.num_gpus} --num-machines {args.num_machines} --machine-rank "
                        f"{args.machine_rank}: expected --num-gpus >= 1 and 0 <= --machine-rank < --num-machines")
    if torch.cuda.is_available() and args.num_gpus > torch.cuda.device_count():
        raise UserError(f"--num-gpus {args.num_gpus}: this machine has {torch.cuda.device_count()} GPU(s)")
    many = args.num_machines > 1
    if args.dist_url is None:
        if many:
            raise UserError(f"--num-machines {args.num_machines} needs --dist-url tcp://HOST:PORT, HOST an "
                            "address of machine 0 that every machine reaches, the same on every machine")
        args.dist_url = "auto"
    if args.num_gpus * args.num_machines == 1:
        return  # one process: no rendezvous
    if args.dist_url == "auto":
        if many:
            raise UserError("--dist-url auto picks a port of one machine: with --num-machines > 1 give "
                            "tcp://HOST:PORT of machine 0")
        return
    url = urlparse(args.dist_url)
    if url.scheme in ("file", "env"):  # env://: MASTER_ADDR / MASTER_PORT, as cluster launchers set them
        return
    if url.scheme != "tcp":
        raise UserError(f"--dist-url {args.dist_url!r}: expected auto, tcp://HOST:PORT, env:// or file:///PATH")
    try:
        host, port = url.hostname, url.port
    except ValueError:  # a port that is no number or out of range
        host, port = None, None
    if not host or port is None or not 0 < port < 65536:
        raise UserError(f"--dist-url {args.dist_url!r}: expected tcp://HOST:PORT with a port in 1..65535")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host.lower() in LOOPBACK_HOSTS
    if many and loopback:
        raise UserError(f"--dist-url {args.dist_url!r} is this machine only: with --num-machines "
                        f"{args.num_machines} give an address of machine 0 that every machine reaches")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise UserError(f"--dist-url {args.dist_url!r}: cannot resolve {host!r} ({exc.strerror})") from None
    if args.machine_rank == 0:  # machine 0 listens at HOST:PORT: is it free here?
        # torch's store listens on every address: one that only forwards here (NAT) is fine
        problem = listen_problem(family, ("::" if family == socket.AF_INET6 else "", port))
        if problem:
            raise UserError(f"--dist-url {args.dist_url!r}: {problem}"
                            + ("; on one machine --dist-url auto finds a free port" if not many else ""))


def load_config(args):
    """Unfrozen config from defaults + ``--config-file`` + command-line ``KEY VALUE`` pairs.

    Raises :class:`UserError` for a missing config file or an unknown/ill-typed key.
    """
    from detectron2.config import get_cfg

    from cat_seg import add_cat_seg_config

    if not args.config_file:
        raise UserError("no --config-file given; expected a YAML config such as configs/vitb_384.yaml")
    from cat_seg.hub import check_released_config, clip_weights_from_checkpoint
    from cat_seg.utils import resolve_path

    # the file itself (a repository path such as configs/vitb_384.yaml works from any folder):
    # default_setup reads args.config_file again to log and copy it
    args.config_file = resolve_path(args.config_file)
    cfg = merge_config(add_cat_seg_config(get_cfg()), args.config_file, args.opts)
    check_released_config(cfg)  # MODEL.WEIGHTS catseg-vitb: the config's CLIP is the one it holds
    clip_weights_from_checkpoint(cfg)  # MODEL.WEIGHTS set: CLIP comes from it, no download
    return cfg


class UserErrorTracebackFilter(logging.Filter):
    """Drops log records that carry a user error's traceback (:func:`user_error_types`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, user_error_types())


def run_device(device: str) -> str:
    """The device a run uses for ``MODEL.DEVICE``: a CUDA device without a GPU is the CPU
    (laptop use: same code, only slower)."""
    import torch

    return "cpu" if device.startswith("cuda") and not torch.cuda.is_available() else device


def setup(args):
    """Frozen config of one training/evaluation process; also sets up logging, the config dump
    in ``OUTPUT_DIR``, seeds and the matmul precision (``detectron2.engine.default_setup``)."""
    import torch
    from detectron2.engine import default_setup
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    cfg = load_config(args)
    cfg.MODEL.DEVICE = run_device(cfg.MODEL.DEVICE)
    agree_on_seed(args, cfg)  # SEED -1 on several machines: rank 0's, recorded in config.yaml
    cfg.freeze()
    default_setup(cfg, args)  # logging, output/config.yaml dump, seeds, cudnn benchmark
    # cat-seg's own messages (data, checkpoint conversion, precision, evaluation throughput) on
    # the console and in OUTPUT_DIR/log.txt, as default_setup does for detectron2's and fvcore's
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="cat_seg", abbrev_name="cat_seg")
    # detectron2's train loop logs the traceback of any exception before re-raising it; a user
    # error (a bad label file met during training) is the one line run_main prints instead
    train_loop_log = logging.getLogger("detectron2.engine.train_loop")
    if not any(isinstance(f, UserErrorTracebackFilter) for f in train_loop_log.filters):
        train_loop_log.addFilter(UserErrorTracebackFilter())
    # matmul precision: "high" lets fp32 matmuls use TF32 on Ampere+ GPUs, as the official code.
    torch.set_float32_matmul_precision("high")
    return cfg


# ------------------------------------------------------------------------------ checks
def check_output_dir(output_dir: str) -> None:
    """``output_dir`` is a folder that exists and is writable, or can be created; leaves
    nothing behind (a folder is created and removed again to find out: permission bits say
    nothing to root, nor about a read-only or pseudo file system such as /proc)."""
    if not output_dir:
        raise UserError("OUTPUT_DIR is empty; expected a folder for checkpoints and logs")
    path = os.path.abspath(output_dir)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is" if existing == path else f"lies under {existing!r}, which is"
        raise UserError(f"OUTPUT_DIR {output_dir!r} {where} a regular file; expected a writable folder")
    where = "is" if existing == path else f"would be created in {existing!r}, which is"
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"OUTPUT_DIR {output_dir!r} {where} not writable (read-only or no permission); "
                        f"expected a writable folder")
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".cat_seg_write_check_", dir=existing))
    except OSError as e:
        raise UserError(f"OUTPUT_DIR {output_dir!r} {where} not writable ({e.strerror or e}); expected a writable "
                        "folder") from None


def has_run(cfg) -> bool:
    """``OUTPUT_DIR`` holds a run to resume (its ``last_checkpoint``)."""
    return os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))


def check_weights(cfg, resume: bool, eval_only: bool = True, download: bool = False) -> None:
    """``MODEL.WEIGHTS`` names an existing file (or a URL, or a released name whose file is
    cached or can be downloaded now) whose tensors fit the config's model, unless
    ``--resume`` finds a checkpoint in ``OUTPUT_DIR``: with ``--eval-only`` the checkpoint to
    evaluate (it must be given), in training the one to start from (empty: CLIP weights and a
    new head). ``download``: a released name not yet cached is downloaded here (once for all
    of ``eval.sh``'s benchmarks) and checked too."""
    if resume and has_run(cfg):
        if eval_only and cfg.MODEL.WEIGHTS:  # detectron2's rule, which a user giving both may not expect
            # printed: the checks run before logging is set up
            print(f"--eval-only --resume: the run's last checkpoint in {cfg.OUTPUT_DIR} is evaluated; MODEL.WEIGHTS "
                  f"{cfg.MODEL.WEIGHTS!r} is not used (without --resume it is)", flush=True)
        return
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        if eval_only:
            raise UserError("--eval-only needs MODEL.WEIGHTS, the checkpoint to evaluate (e.g. MODEL.WEIGHTS "
                            "output/model_final.pth); it is empty")
        return
    from cat_seg.hub import (check_released_weights, is_released_name, released_name_suggestion, resolve_weights,
                             weights_file_missing)

    if download and is_released_name(weights):
        cached = resolve_weights(weights)
    else:
        cached = check_released_weights(weights)  # a released name: in the hub cache or downloadable now
    if cached:
        check_weights_fit(cfg, cached)
        return
    if "://" in weights:  # a URL detectron2's PathManager fetches: fetched now (cached for the run), once
        from detectron2.utils.file_io import PathManager

        try:
            local = PathManager.get_local_path(weights)
        except Exception as e:  # iopath's handlers raise many types for a URL they cannot fetch
            raise UserError(f"MODEL.WEIGHTS {weights}: cannot fetch it ({error_line(e, limit=200)}); download it and "
                            "give the file") from None
        check_weights_fit(cfg, local)
        return
    if weights_file_missing(weights):
        expected = ("a checkpoint file (.pth/.pkl) for --eval-only" if eval_only else
                    "a checkpoint file to start training from (or empty: CLIP weights and a new head)")
        what = "is a directory" if os.path.isdir(weights) else "not found" + released_name_suggestion(weights)
        raise UserError(f"MODEL.WEIGHTS {weights!r} {what}; expected {expected}")
    if os.path.isfile(weights):
        from cat_seg.checkpoint.official import checkpoint_file_problem

        problem = checkpoint_file_problem(weights)  # e.g. a copy cut short: before any process starts
        if problem:
            raise UserError(f"MODEL.WEIGHTS: {problem}")
        check_weights_fit(cfg, weights)


def check_weights_fit(cfg, path: str, what: str = "MODEL.WEIGHTS") -> None:
    """The checkpoint file ``path`` holds the tensors of the config's model (same keys, same
    shapes; a ViT-L checkpoint with a ViT-B config is the usual mistake), found from its
    tensors' shapes on the meta device: before any process starts or any benchmark of
    ``eval.sh`` runs, instead of at the load after the set-up. ``what``: where the file comes
    from, for the message."""
    from cat_seg.checkpoint import CheckpointError
    from cat_seg.checkpoint.catseg_checkpointer import check_checkpoint_fits
    from cat_seg.config import check_model_builds

    model = check_model_builds(cfg)  # the meta-device build of the value checks (no weights, instant)
    if model is None:  # not buildable on the meta device: the load decides
        return
    try:
        check_checkpoint_fits(model, path)
    except CheckpointError as exc:
        raise UserError(f"{what}: {exc}") from None


def check_clip_weights_fit(cfg) -> None:
    """A CLIP weights file (``MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS FILE``) is a readable CLIP
    checkpoint whose tensors fit the config's CLIP model (their shapes, from the mapped file
    and the meta-device model): the build reads it after the set-up has written ``OUTPUT_DIR``
    in every process. Released tags are open_clip's downloads: not read here."""
    from cat_seg.config import check_model_builds
    from cat_seg.modeling.clip.builder import (CLIPLoadError, clip_weights_source, fitted_clip_state,
                                               read_clip_state_dict, resolve_clip_arch)

    head = cfg.MODEL.SEM_SEG_HEAD
    kind, source, _ = clip_weights_source(resolve_clip_arch(head.CLIP_PRETRAINED), head.CLIP_WEIGHTS)
    if kind != "file":
        return
    model = check_model_builds(cfg)
    clip = getattr(getattr(model, "backbone", None), "clip", None)  # a backbone of one's own may have none
    if clip is None:
        return
    try:
        fitted_clip_state(clip, read_clip_state_dict(source, mmap=True), source)
    except CLIPLoadError as exc:
        raise UserError(f"MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS: {str(exc).replace(chr(10), ' ')}") from None


def check_clip_weights_reachable(cfg) -> None:
    """CLIP weights open_clip would download (a pretrained tag without ``MODEL.WEIGHTS``) are
    in its cache, or the hub can be reached: offline (``HF_HUB_OFFLINE``, no connection) one
    line in seconds, where the run's set-up retried the download for about a minute first."""
    from cat_seg.api import CATSegError, check_weights_available

    try:
        check_weights_available(cfg, options="config")
    except CATSegError as exc:
        raise UserError(str(exc)) from None


def check_class_jsons(cfg, eval_only: bool) -> None:
    from cat_seg.utils import read_class_json

    head = cfg.MODEL.SEM_SEG_HEAD
    keys = ["TEST_CLASS_JSON"] if eval_only else ["TRAIN_CLASS_JSON", "TEST_CLASS_JSON"]
    for key in keys:
        if key == "TEST_CLASS_JSON" and not cfg.DATASETS.TEST:
            continue
        try:
            read_class_json(head.get(key), f"MODEL.SEM_SEG_HEAD.{key}")
        except (OSError, ValueError) as exc:
            raise UserError(str(exc)) from None


def check_datasets(cfg, eval_only: bool) -> Dict[str, list]:
    """The datasets of ``DATASETS.TRAIN`` (unless ``eval_only``) and ``DATASETS.TEST`` are
    registered and their files present (cat-seg's loaders raise ``DatasetNotFoundError``).
    Returns each one's records (loaded once: the loader's warnings are said once)."""
    import cat_seg.data  # noqa: F401  (registers the datasets)
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if eval_only and not cfg.DATASETS.TEST:
        raise UserError("--eval-only with DATASETS.TEST empty has nothing to evaluate: give the datasets, e.g. "
                        "DATASETS.TEST \"('ade20k_150_test_sem_seg',)\"")
    if not eval_only and not cfg.DATASETS.TRAIN:
        raise UserError("DATASETS.TRAIN is empty: nothing to train on (e.g. DATASETS.TRAIN "
                        "\"('coco_2017_train_stuff_all_sem_seg',)\"); --eval-only evaluates without training")
    names = list(dict.fromkeys(list(cfg.DATASETS.TEST) + ([] if eval_only else list(cfg.DATASETS.TRAIN))))
    records = {}
    for name in names:
        if name not in DatasetCatalog.list():
            # among the semantic-segmentation datasets (detectron2 registers detection ones too)
            guess = closest_name(name, [n for n in DatasetCatalog.list()
                                        if str(MetadataCatalog.get(n).get("evaluator_type", "")).startswith("sem_seg")])
            hint = (f"did you mean {guess!r}?" if guess else "the benchmarks are listed in docs/datasets.md; "
                    "register a dataset of your own with cat_seg.data.datasets.register_sem_seg_folder "
                    "(docs/datasets.md, 'Your own dataset')")
            raise UserError(f"dataset {name!r} (DATASETS.{'TEST' if name in cfg.DATASETS.TEST else 'TRAIN'}) "
                            f"is not registered; {hint}")
        try:
            records[name] = DatasetCatalog.get(name)
        except OSError as exc:  # a loader of detectron2's (cat-seg's raise DatasetNotFoundError, one line)
            raise UserError(f"dataset {name!r}: cannot load it ({error_line(exc)})") from None
    from cat_seg.engine.trainer import vocabulary_mismatch
    from cat_seg.evaluation import evaluator_problem
    from cat_seg.utils import read_class_json

    for name in cfg.DATASETS.TEST:
        problem = evaluator_problem(name)
        if problem:
            raise UserError(f"{problem}; DATASETS.TEST holds the datasets to evaluate")
    test_json = cfg.MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON
    for name in cfg.DATASETS.TEST:  # the class jsons were read by check_class_jsons
        problem = vocabulary_mismatch(test_json, read_class_json(test_json, "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON"), name)
        if problem:
            raise UserError(problem)
    if not eval_only:
        check_training_vocabulary(cfg)
    return records


def check_training_vocabulary(cfg) -> None:
    """``TRAIN_CLASS_JSON`` against the training datasets' classes (``stuff_classes``): labels
    index the json, so fewer names than classes is an error; more names is allowed (the extra
    ones are trained as negatives only, a deliberate choice in some research) with a warning,
    as are names that differ from the dataset's (rewordings, or another dataset's list).
    A training dataset's ``ignore_label`` must be ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``, the value
    the loss and the crop skip."""
    from detectron2.data import MetadataCatalog

    from cat_seg.modeling.clip.prompts import primary_name
    from cat_seg.utils import read_class_json

    train_json = cfg.MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON
    names = read_class_json(train_json, "MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON")
    count = len(names)
    ignore_value = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    for name in cfg.DATASETS.TRAIN:
        meta = MetadataCatalog.get(name)
        ignore_label = getattr(meta, "ignore_label", ignore_value)
        if ignore_label != ignore_value:  # the loss and the crop would read its unlabelled pixels as a class
            raise UserError(f"training dataset {name} marks unlabelled pixels with {ignore_label} (its ignore_label) "
                            f"but MODEL.SEM_SEG_HEAD.IGNORE_VALUE is {ignore_value}: set MODEL.SEM_SEG_HEAD."
                            f"IGNORE_VALUE {ignore_label}")
        classes = getattr(meta, "stuff_classes", None)
        if classes is None:
            continue
        what = (f"MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON={train_json} has {count} classes but training dataset {name} "
                f"has {len(classes)}")
        if count < len(classes):
            raise UserError(f"{what}: its labels index the json; use the dataset's class json")
        # label i is trained with the json's i-th name: other names there may be rewordings (a
        # research choice) or another dataset's list (a mistake); either way, say so
        differ = [i for i, cls in enumerate(classes) if primary_name(names[i]).lower() != primary_name(cls).lower()]
        if differ:
            i = differ[0]
            logger.warning(f"MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON={train_json} names {len(differ)} of the "
                           f"{len(classes)} classes of training dataset {name} differently (label {i} is "
                           f"{classes[i]!r} there, {names[i]!r} in the json): label i is trained with the json's "
                           "i-th name; if that is not meant, use the dataset's class json")
        elif count > len(classes):
            logger.warning(f"{what}: the last {count - len(classes)} names are trained as negatives only (no pixel is "
                           "labelled with them); if that is not meant, use the dataset's class json")


def check_config_values(cfg, processes: int, eval_only: bool) -> None:
    """:func:`cat_seg.config.check_config_values` as a :class:`UserError` (one line)."""
    from cat_seg.config import check_config_values as check_values

    try:
        check_values(cfg, processes, eval_only)
    except ValueError as exc:  # chained: CATSEG_DEBUG=1 shows where it came from (a module of one's own)
        raise UserError(str(exc)) from exc


def check_resume(cfg) -> None:
    """With ``--resume``: the checkpoint ``OUTPUT_DIR/last_checkpoint`` names exists; without a
    run in ``OUTPUT_DIR``, a line says where training starts, naming the folder (a mistyped
    ``OUTPUT_DIR`` is seen there). Not a warning: ``run.sh`` always passes ``--resume`` (a rerun
    continues), so a first run takes this path."""
    if not has_run(cfg):
        start = f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r}" if cfg.MODEL.WEIGHTS else "CLIP's weights and a new head"
        # printed: the checks run before logging is set up (a log record at INFO would not show)
        print(f"--resume: OUTPUT_DIR {cfg.OUTPUT_DIR!r} holds no run to resume (no last_checkpoint): training "
              f"starts at iteration 0 from {start}", flush=True)
        return
    marker = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    with open(marker) as f:
        name = f.read().strip()
    path = os.path.join(cfg.OUTPUT_DIR, name)
    if not os.path.isfile(path):
        raise UserError(f"--resume: {marker} names {name!r}, which is not in OUTPUT_DIR; restore the file, "
                        f"or delete last_checkpoint to start from MODEL.WEIGHTS")
    from cat_seg.checkpoint.official import checkpoint_file_problem

    problem = checkpoint_file_problem(path)  # a damaged file: said now, not after the set-up rewrote the run's files
    if problem:
        raise UserError(f"--resume: {problem}; point last_checkpoint at an earlier checkpoint of the run, or delete "
                        "it to start from MODEL.WEIGHTS")
    check_weights_fit(cfg, path, "--resume")
    if not path.endswith(".pkl"):  # a detectron2 .pkl is weights only: the trainer's own check refuses it
        import torch

        from cat_seg.checkpoint.official import OFFICIAL, cannot_resume, detect_layout, strip_prefix, unwrap_checkpoint

        loaded = torch.load(path, map_location="meta", weights_only=True)  # readable: checked above
        if isinstance(loaded, dict):
            official = detect_layout(strip_prefix(unwrap_checkpoint(loaded, path)[0])) == OFFICIAL
            if official or "iteration" not in loaded:
                raise UserError(cannot_resume(path, official))


def check_unread_keys(cfg) -> None:
    """detectron2 options cat-seg does not implement (``UNREAD_DETECTRON2_KEYS``): an error where
    training would silently differ (another training sampler), else a warning (``SOLVER.AMP.ENABLED
    True``: ``MODEL.PRECISION`` decides)."""
    from cat_seg.config import unread_key_messages

    for message, is_error in unread_key_messages(cfg):
        if is_error:
            raise UserError(message)
        logger.warning(message)


def warn_about_prompts(cfg) -> None:
    """Deep visual prompts and ``CLIP_FINETUNE`` that train nothing or train around random
    prompts: allowed (the official code does the same), but said, since such a run silently
    differs from what its name suggests."""
    head = cfg.MODEL.SEM_SEG_HEAD
    prompts = head.PROMPT_DEPTH > 0 and head.PROMPT_LENGTH > 0
    if head.CLIP_FINETUNE == "prompt" and not prompts:
        logger.warning("MODEL.SEM_SEG_HEAD.CLIP_FINETUNE prompt trains only the deep visual prompts, and there are "
                       f"none (PROMPT_DEPTH {head.PROMPT_DEPTH}, PROMPT_LENGTH {head.PROMPT_LENGTH}): CLIP is not "
                       "trained at all")
    elif prompts and head.CLIP_FINETUNE not in ("prompt", "full"):
        logger.warning(f"deep visual prompts (PROMPT_DEPTH {head.PROMPT_DEPTH}, PROMPT_LENGTH {head.PROMPT_LENGTH}) "
                       f"are trained only with CLIP_FINETUNE prompt or full; with {head.CLIP_FINETUNE} they stay as "
                       + ("MODEL.WEIGHTS holds them" if cfg.MODEL.WEIGHTS else "initialised, random"))


def check(args):
    """All checks that run before any process starts; returns the (unfrozen) config."""
    cfg = load_config(args)
    check_unread_keys(cfg)
    check_config_values(cfg, args.num_gpus * args.num_machines, args.eval_only)
    if not args.eval_only:
        warn_about_prompts(cfg)
    check_output_dir(cfg.OUTPUT_DIR)
    if run_device(cfg.MODEL.DEVICE) != cfg.MODEL.DEVICE:  # said once, before the processes start
        logger.warning(f"MODEL.DEVICE {cfg.MODEL.DEVICE}: no CUDA device is available here; the run uses the CPU "
                       "(the same computation, much slower; MODEL.DEVICE cpu says so and silences this)")
    if args.resume:
        check_resume(cfg)
    elif not args.eval_only and has_run(cfg):
        logger.warning(f"OUTPUT_DIR {cfg.OUTPUT_DIR!r} holds a run (last_checkpoint) and --resume is not given: "
                       f"training starts from iteration 0 and overwrites its checkpoints; its metrics.json and "
                       f"TensorBoard events get the new run's rows after the old ones, and until the new run's first "
                       f"checkpoint, --resume would continue the old run (another OUTPUT_DIR keeps the runs apart)")
    check_weights(cfg, args.resume, args.eval_only)
    check_clip_weights_fit(cfg)
    check_clip_weights_reachable(cfg)
    check_class_jsons(cfg, args.eval_only)
    records = check_datasets(cfg, args.eval_only)
    if args.check_labels:
        check_labels(cfg, args.eval_only, records)
    return cfg


#: Bad label files listed by --check-labels before its error line.
LISTED_LABEL_PROBLEMS = 20


def check_labels(cfg, eval_only: bool, records: Dict[str, list]) -> None:
    """``--check-labels``: every label map of ``DATASETS.TRAIN`` (unless ``eval_only``; values
    against ``TRAIN_CLASS_JSON``, which training labels index) and ``DATASETS.TEST`` (values
    against the dataset's classes, which the evaluator scores) is read; the bad ones are listed
    (:data:`LISTED_LABEL_PROBLEMS` at most) and end in one error line. ``records``: each
    dataset's, as :func:`check_datasets` loaded and checked them (the test datasets' metadata
    included)."""
    from detectron2.data import MetadataCatalog

    from cat_seg.data.datasets.label_check import label_problems
    from cat_seg.utils import read_class_json

    # the rules of the readers: training labels index TRAIN_CLASS_JSON and skip IGNORE_VALUE (the
    # mapper's); evaluation scores the dataset's classes and skips its ignore_label (the evaluator's)
    splits = []
    if not eval_only and cfg.DATASETS.TRAIN:
        trained = len(read_class_json(cfg.MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON))
        splits += [(name, trained, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE) for name in cfg.DATASETS.TRAIN]
    for name in cfg.DATASETS.TEST:
        meta = MetadataCatalog.get(name)
        splits.append((name, len(meta.stuff_classes), meta.ignore_label))
    bad, first = 0, None
    for name, num_classes, ignore_label in dict.fromkeys(splits):  # a dataset in both lists: once per rule
        problems = label_problems(records[name], num_classes, ignore_label)
        for problem in problems[:max(0, LISTED_LABEL_PROBLEMS - bad)]:
            print(f"  {name}: {problem}", file=sys.stderr, flush=True)
        if problems and first is None:
            first = f"{name}: {problems[0]}"
        bad += len(problems)
        print(f"--check-labels: {len(records[name])} label maps of {name}: {len(problems) or 'none'} bad", flush=True)
    if bad:
        raise UserError(f"--check-labels: {bad} bad label map(s) or image(s) (listed above, {LISTED_LABEL_PROBLEMS} "
                        f"at most); the first: {first}")


# ------------------------------------------------------------------------------ run
def train_or_evaluate(args, trainer_class=None):
    """One process of a (distributed) run: what ``launch`` starts on every GPU/CPU process.
    ``trainer_class``: :class:`cat_seg.engine.Trainer` or a subclass (``main(trainer=...)``)."""
    from cat_seg.checkpoint import CATSegCheckpointer
    from cat_seg.engine import Trainer

    trainer_type = trainer_class or Trainer
    share_cpu_threads()
    cfg = setup(args)
    check_registered_here(cfg)
    if args.eval_only:
        model = trainer_type.build_model(cfg)
        CATSegCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        result = trainer_type.test(cfg, model)
    else:
        trainer = trainer_type(cfg)
        trainer.resume_or_load(resume=args.resume)
        result = trainer.train()
    end_worker_process()
    return result


def check_registered_here(cfg) -> None:
    """The datasets of the run are registered in this process. They were in the process that
    checked the run; a launched process (``--num-gpus``) imports the script again without
    running its ``if __name__ == "__main__"`` block, so a dataset registered there is missing
    here (detectron2 then raised a KeyError listing every registered name)."""
    import cat_seg.data  # noqa: F401  (registers the benchmarks)
    from detectron2.data import DatasetCatalog

    from cat_seg.data.datasets.errors import DatasetError

    missing = [name for name in [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST] if name not in DatasetCatalog.list()]
    if missing:
        raise DatasetError(f"dataset {missing[0]!r} is not registered in the launched processes: register it at the "
                           "top level of your script, outside its if __name__ == \"__main__\" block (the processes "
                           "import the script again; docs/datasets.md, 'Your own dataset')")


def share_cpu_threads() -> None:
    """Several processes of one machine: each takes its share of the CPU cores for torch's
    threads (as torchrun does), unless ``OMP_NUM_THREADS`` says otherwise. Every process using
    every core made 2-process CPU training 4x slower than with one thread each."""
    import torch
    from detectron2.utils import comm

    from cat_seg.utils import available_cores

    local = comm.get_local_size()
    if local > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, available_cores() // local))


def end_worker_process() -> None:
    """End a process that ``launch`` started for a multi-process run, after its work succeeded.

    With torch 2.14 and gloo, the interpreter's exit sometimes aborts (``terminate called
    without an active exception``, SIGABRT) while tearing down the process group's threads,
    and ``launch`` then reports the whole run as failed after it succeeded (about 1 run in 10
    of 2 CPU processes; also without cat-seg, with detectron2's ``launch`` and one
    ``all_gather``; ``destroy_process_group`` first does not avoid it). So every process waits
    for the others, flushes its logs and output, and exits at once with status 0 (the work is
    written: checkpoints and results are written by then). One process (no ``launch``
    children): returns."""
    from detectron2.utils import comm

    if comm.get_world_size() == 1:
        return
    comm.synchronize()
    stop_child_processes()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


#: Seconds the training processes get to stop after the launcher passes them a SIGINT (then SIGTERM).
INTERRUPT_GRACE_S = 30.0


def stop_child_processes(timeout: float = 5.0, interrupt: bool = False) -> None:
    """Terminate this process's ``multiprocessing`` children (the DataLoader workers of a
    finished run) and wait for them: after ``os._exit`` they would linger until their watchdog
    sees the parent gone (about 5 s), holding memory and files.

    ``interrupt``: send them SIGINT instead, what Ctrl-C sends every process of the group (the
    training processes then stop as after a Ctrl-C), and SIGTERM to any still running after
    ``timeout`` seconds."""
    import multiprocessing
    import signal

    children = multiprocessing.active_children()
    for child in children:
        if interrupt and child.pid is not None:
            os.kill(child.pid, signal.SIGINT)
        else:
            child.terminate()
    for child in children:
        child.join(timeout)
        if child.is_alive():
            child.terminate()
            child.join(timeout)


def user_error_types():
    """Exception types of cat-seg that mean a user mistake (bad data, checkpoint, CLIP weights)
    or a file that cannot be written (a full disk while saving a checkpoint): one line, no
    traceback."""
    from cat_seg.checkpoint.errors import CheckpointError
    from cat_seg.data.datasets.errors import DatasetError
    from cat_seg.modeling.clip.builder import CLIPLoadError
    from cat_seg.utils import WriteError

    return (DatasetError, CheckpointError, CLIPLoadError, WriteError)


def _main(argv: Optional[Sequence[str]], trainer_class=None) -> int:
    import torch
    from detectron2.engine import launch

    if trainer_class is not None:
        from cat_seg.engine import Trainer

        if not (isinstance(trainer_class, type) and issubclass(trainer_class, Trainer)):
            raise UserError(f"main(trainer={trainer_class!r}): expected cat_seg.engine.Trainer or a subclass of it")
    args = build_parser().parse_args(argv)
    check_launch(args)
    cfg = check(args)
    if args.check_only:
        what = f"weights {cfg.MODEL.WEIGHTS!r}, " if args.eval_only else ""
        print(f"ok: config {args.config_file!r}, {what}OUTPUT_DIR {cfg.OUTPUT_DIR!r}")
        return 0
    fix_drawn_seed(args, cfg)
    print("Command Line Args:", args)
    if args.num_gpus > 1 and not torch.cuda.is_available():
        print(f"no GPU: running {args.num_gpus} CPU processes (gloo)", flush=True)
    if args.num_machines > 1:
        print(f"machine {args.machine_rank} of {args.num_machines}: waiting for all "
              f"{args.num_gpus * args.num_machines} processes at {args.dist_url} (detectron2 waits up to 30 "
              f"minutes)", flush=True)
    try:
        launch(
            train_or_evaluate,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args, trainer_class),
        )
    except torch.multiprocessing.ProcessRaisedException as exc:
        user_error = user_error_in_process(exc)
        if user_error is None:
            raise
        raise user_error from None
    except KeyboardInterrupt:
        # `kill -INT` of this process alone (Ctrl-C reaches every process of the group): the
        # training processes did not see it and would train to the end before this one exits
        stop_child_processes(timeout=INTERRUPT_GRACE_S, interrupt=True)
        raise
    return 0


def chosen_seed(args, cfg) -> Optional[int]:
    """The seed of a training whose config says ``SEED -1`` (random, as the official configs
    have it): on ``--resume`` of a run the one its ``config.yaml`` records, else a fresh draw.
    ``None`` where there is none to choose: evaluation only, a seed set, or a resumed run that
    recorded -1 (its checkpoint's data seed is restored, as before)."""
    if args.eval_only or cfg.SEED >= 0:
        return None
    if args.resume and has_run(cfg):
        return recorded_seed(cfg.OUTPUT_DIR)
    import random

    return random.SystemRandom().randrange(2 ** 31 - 1)


def _say_seed(seed: int, cfg) -> None:
    print(f"SEED -1: this run's seed is {seed} (recorded in {os.path.join(cfg.OUTPUT_DIR, 'config.yaml')}; "
          f"SEED {seed} repeats the run)", flush=True)


def fix_drawn_seed(args, cfg) -> None:
    """``SEED -1`` in a training on one machine: the seed is chosen here (:func:`chosen_seed`),
    once, and given to every process as ``SEED N``, so that the run's ``config.yaml`` records it
    and repeats the run (detectron2 drew one per process and recorded -1). On several machines
    :func:`agree_on_seed` does this in the processes."""
    if args.num_machines > 1:
        return
    seed = chosen_seed(args, cfg)
    if seed is not None:
        args.opts = list(args.opts) + ["SEED", str(seed)]
        _say_seed(seed, cfg)


def agree_on_seed(args, cfg) -> None:
    """``SEED -1`` in a training on several machines, where no one process starts them all:
    in every process, before ``config.yaml`` is written, rank 0 chooses the seed
    (:func:`chosen_seed`) and all set ``cfg.SEED`` to it, so that the file records it as on one
    machine. A collective call: every process makes it (all have the same ``cfg`` and ``args``)."""
    from detectron2.utils import comm

    if args.num_machines <= 1 or args.eval_only or cfg.SEED >= 0 or comm.get_world_size() == 1:
        return
    seed = comm.all_gather(chosen_seed(args, cfg) if comm.is_main_process() else None)[0]
    if seed is not None:
        cfg.SEED = seed
        if comm.is_main_process():
            _say_seed(seed, cfg)


def recorded_seed(output_dir: str) -> Optional[int]:
    """The ``SEED`` (>= 0) the ``config.yaml`` of the run in ``output_dir`` records, or None."""
    import yaml

    try:
        with open(os.path.join(output_dir, "config.yaml")) as f:
            seed = (yaml.safe_load(f) or {}).get("SEED")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return seed if isinstance(seed, int) and seed >= 0 else None


def user_error_in_process(exc: BaseException) -> Optional[BaseException]:
    """The user error (:func:`user_error_types`) a ``launch``-ed process raised, rebuilt from
    the traceback text its exception carries (e.g. a corrupt image met by one rank); ``None``
    for any other error."""
    import importlib
    import re

    # the last traceback's error decides: a crash raised while handling a user error is a crash
    error = last_traceback_error(str(exc))
    if error is None or not re.fullmatch(r"cat_seg(?:\.\w+)+", error[0]):
        return None
    module_name, _, class_name = error[0].rpartition(".")
    try:
        error_type = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return None
    if not (isinstance(error_type, type) and issubclass(error_type, user_error_types())):
        return None
    return UserError(error[1].strip())


def main(argv: Optional[Sequence[str]] = None, trainer=None) -> int:
    """``cat-seg-train``: exit status 0 on success, 2 on a user error (one line on stderr).

    ``trainer``: a subclass of :class:`cat_seg.engine.Trainer` to train and evaluate with (hooks,
    optimizer, evaluators of one's own), defined at the top level of the script that calls
    ``main`` (the processes of ``--num-gpus`` import that script again)."""
    return run_main(lambda args: _main(args, trainer), argv, user_errors=user_error_types())


if __name__ == "__main__":
    sys.exit(main())
