"""Speed, memory and counted work of CAT-Seg (training step and sliding-window inference).

One process, one JSON object per measurement on stdout (nothing else); logs go to stderr.
Random CLIP weights (speed does not depend on the weight values), synthetic images and
class names. See docs/benchmarks.md for the measured figures and the exact commands.

Examples::

    # sliding-window inference, one 512x683 image, ADE-150-sized vocabulary, MODEL.PRECISION of the config
    cat-seg-benchmark --mode infer --classes 150
    # the exact reference computation (fp32, TF32 off, no class chunking)
    cat-seg-benchmark --mode infer --classes 150 --exact
    # training step (forward + backward + AdamW), batch 4 of 384x384, 171 classes, bf16
    cat-seg-benchmark --mode train --precision bf16 --checkpoint-activations
    # FLOPs, bytes moved and ops of one inference, total and per module group (any device)
    cat-seg-benchmark --mode infer --classes 150 --precision fp32 --class-chunk-size 0 --count
    # seconds-long run of both modes on the tiny CPU config (CI; timings meaningless)
    cat-seg-benchmark --smoke            # add --count for the counted work

The speed settings are config keys, passed as overrides: ``--precision`` ->
``MODEL.PRECISION`` (auto | fp32 | bf16 | fp16), ``--class-chunk-size`` ->
``TEST.CLASS_CHUNK_SIZE``, ``--checkpoint-activations`` -> ``MODEL.CHECKPOINT_ACTIVATIONS``,
``--compile`` -> ``MODEL.COMPILE``, ``--cuda-graphs`` -> ``TEST.CUDA_GRAPHS`` (where the
config has it); ``--exact`` = fp32, TF32 off, no class chunking. The resolved precision
(:func:`cat_seg.modeling.precision.resolve_precision`) is also applied as ``torch.autocast``
around the step, so the requested precision is what runs.

Fields of every record: ``mode``, ``config``, ``device`` (``cpu``/``cuda``), ``device_name``
(GPU name or CPU model), ``cpu_instruction_sets``, ``torch``, ``git_commit``, ``date``,
``inductor_env`` (the ``TORCHINDUCTOR_*`` environment variables, with the cache directory
that torch sets itself when its compiler is imported),
``tag`` (``--tag``), ``precision`` (the setting), ``precision_resolved`` (``fp32``/``bf16``/``fp16``), ``tf32``,
``exact``, ``compile``, ``compile_clip`` (``--compile-clip``: the CLIP image tower compiled
too), ``settings`` (the speed keys as used), ``opts`` (every config
override), ``batch``, ``classes``, ``size``, ``threads``, ``smoke``, ``kind`` (``time`` or
``count``).

Timing records add ``iters``, ``warmup``, ``median_s``, ``min_s``, ``times_s``,
``per_image_s`` (median / batch), ``images_per_s`` (batch / median), ``first_call_s`` (the
first call, compilation included), ``cpu_median_s`` (process CPU seconds, CPU only), ``peak_memory_bytes``,
``peak_memory_gib``, ``memory_kind`` (``cuda_max_memory_allocated``, ``cpu_peak_rss``, or
``cpu_lifetime_max_rss`` where the peak cannot be reset),
``memory_baseline_bytes`` (held before the timed iterations), ``optimizer`` (train).

Count records (``--count``, see :mod:`cat_seg.cli.work_count` for exactly what is counted)
add ``totals`` (``flops``, ``bytes``, ``bytes_read``, ``bytes_written``, ``ops``,
``bytes_storage``, ``views``, ``flops_flop_counter``: the counter's own total, equal to
``flops``), ``groups`` (``flops``, ``bytes``, ``bytes_read``, ``bytes_written`` and ``ops`` per module group: ``clip_image``,
``clip_text``, ``cost_volume``, ``guidance``, ``spatial_blocks``, ``class_blocks``,
``decoder``, ``pre_post_processing``, ``optimizer``, ``other``, ``outside_model``),
``phases`` (forward / backward / optimizer), ``top_ops``, ``saved_activations`` (training: bytes saved
for the backward pass per group and ``total``, the activation memory held at the end of
the forward), ``memory`` (the peak of the live tensor storages on the device, what
``torch.cuda.max_memory_allocated`` reports, estimated on any device: ``peak_bytes``,
``peak_at``, ``live_at_peak`` by who made them) and, at inference, ``text_embeddings``: the
totals of computing the vocabulary's text embeddings once (cached, so not part of an
inference).
"""
import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Optional

import torch

from ..utils import REPO_ROOT
from .errors import ArgumentParser, UserError, print_user_error

logger = logging.getLogger("cat_seg.benchmark")

SMOKE_CONFIG = "configs/quick_schedules/tiny_vitb_cpu.yaml"
#: The measurement protocol of the official code's baseline (docs/benchmarks.md): inference on a
#: 512x683 image (an ADE20K validation image's size after the test resize) with ADE20K-150's
#: vocabulary size, training on crops of the config's INPUT.CROP.SIZE with COCO-Stuff's.
INFER_SIZE = (512, 683)
SMOKE_INFER_SIZE = (170, 230)


def protocol_classes(mode: str) -> int:
    """The vocabulary size of the protocol: the training set's classes (COCO-Stuff, 171) for
    ``train``, ADE20K-150's for ``infer``, as the dataset catalog gives them."""
    from cat_seg.data.catalog import get_layout

    name = "coco_2017_train_stuff_all_sem_seg" if mode == "train" else "ade20k_150_test_sem_seg"
    return get_layout(name).num_classes


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="cat-seg-benchmark", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["train", "infer"], default="infer")
    parser.add_argument("--config-file", default="configs/vitb_384.yaml")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per step: train default 4 (crops of --crop), infer default 1")
    parser.add_argument("--classes", type=int, default=None,
                        help="vocabulary size (default: train COCO-Stuff's 171, infer ADE20K-150's 150)")
    parser.add_argument("--class-json", default=None, help="vocabulary from a class-name json instead")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help=f"inference image size (default {INFER_SIZE[0]} {INFER_SIZE[1]}); training uses --crop")
    parser.add_argument("--crop", type=int, default=None,
                        help="training crop size (default: the config's INPUT.CROP.SIZE, 384 in the released configs)")
    parser.add_argument("--tag", default="", help="a name recorded in the JSON line (field tag)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed (uncounted with --count) steps first: compilation, caches, optimizer state")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                        help="MODEL.PRECISION (default: the config's)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convs on CUDA (off by default)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="MODEL.COMPILE True/False (default: the config's; auto = on CUDA)")
    parser.add_argument("--compile-clip", action="store_true",
                        help="also torch.compile the CLIP image tower (a measurement, to decide whether "
                             "MODEL.COMPILE, which compiles the aggregator, should cover it)")
    parser.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                        help="TEST.CUDA_GRAPHS True/False (inference; default: the config's)")
    parser.add_argument("--class-chunk-size", type=int, default=None, help="TEST.CLASS_CHUNK_SIZE (-1 = auto, 0 = off; default: the config's)")
    parser.add_argument("--checkpoint-activations", action=argparse.BooleanOptionalAction, default=None,
                        help="MODEL.CHECKPOINT_ACTIVATIONS on/off (default: the config's)")
    parser.add_argument("--exact", action="store_true",
                        help="reference computation: fp32, TF32 off, no class chunking")
    parser.add_argument("--optimizer", choices=["fused", "foreach", "for-loop"], default="fused",
                        help="AdamW implementation in --mode train (the for-loop one, torch's CPU default, "
                             "is ~50x slower on CPU)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="extra config overrides, KEY VALUE pairs")
    parser.add_argument("--count", action="store_true",
                        help="count FLOPs, bytes moved and ops of one step (per module group) instead of timing")
    parser.add_argument("--profile", type=int, default=0, metavar="ROWS",
                        help="after timing, profile one iteration and log the top ROWS ops to stderr")
    parser.add_argument("--profile-out", default=None, metavar="FILE",
                        help="with --profile: also write the table to FILE")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long run of both modes on the tiny CPU config (checks the tool, not speed)")
    parser.add_argument("--verbose", action="store_true")
    return parser


# ---------------------------------------------------------------------------- environment
def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """Short commit id of the checkout (``+dirty`` with uncommitted changes to tracked files)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(device: torch.device) -> dict:
    """Device name, CPU instruction sets, torch version, commit, date, threads, inductor env."""
    from cat_seg.modeling.precision import cpu_instruction_sets

    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name(),
        "cpu_instruction_sets": cpu_instruction_sets(),
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        # inductor settings given as environment variables (TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1 ...);
        # torch sets TORCHINDUCTOR_CACHE_DIR itself when its compiler is imported
        "inductor_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("TORCHINDUCTOR_")},
    }


def _proc_status_bytes(field: str) -> Optional[int]:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, in kB there) in bytes;
    None where the file or the field is missing (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory over a region: CUDA ``max_memory_allocated`` or the process peak RSS.

    On Linux the RSS high-water mark is reset by writing ``5`` to ``/proc/self/clear_refs``
    and read from ``VmHWM`` in ``/proc/self/status``; where that is not possible the
    lifetime ``ru_maxrss`` is reported (``memory_kind`` says which).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss"

    def reset(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.kind = "cpu_lifetime_max_rss"

    def current(self) -> int:
        """Memory held now (CUDA ``memory_allocated`` or the resident set size)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.memory_allocated(self.device))
        return _proc_status_bytes("VmRSS") or 0

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        peak = _proc_status_bytes("VmHWM") if self.kind == "cpu_peak_rss" else None
        return peak if peak is not None else int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# ---------------------------------------------------------------------------- config and model
def config_overrides(args) -> list:
    """The config overrides (``KEY VALUE`` list) the command line asks for."""
    overrides = list(args.opts)
    if len(overrides) % 2:
        raise UserError(f"--opts needs KEY VALUE pairs, got {len(overrides)} items")
    # the compile flag given, if any: --exact and --count run the eager model
    compile_flag = "--compile-clip" if args.compile_clip else "--compile" if args.compile else None
    if args.exact:
        if args.precision not in (None, "fp32"):
            raise UserError(f"--exact means fp32: drop --precision {args.precision}")
        if args.class_chunk_size not in (None, 0):
            raise UserError(f"--exact means no class chunking: drop --class-chunk-size {args.class_chunk_size}")
        if compile_flag:
            raise UserError(f"--exact means the eager model: drop {compile_flag}")
        overrides += ["MODEL.PRECISION", "fp32", "TEST.CLASS_CHUNK_SIZE", "0", "MODEL.COMPILE", "False"]
    if args.precision is not None:
        overrides += ["MODEL.PRECISION", args.precision]
    if args.class_chunk_size is not None:
        overrides += ["TEST.CLASS_CHUNK_SIZE", str(args.class_chunk_size)]
    if args.checkpoint_activations is not None:
        overrides += ["MODEL.CHECKPOINT_ACTIVATIONS", str(bool(args.checkpoint_activations))]
    if args.count:  # the counter watches the aten ops of the eager model
        if compile_flag:
            raise UserError(f"--count counts the eager model's ops: drop {compile_flag}")
        if args.cuda_graphs:  # a replayed graph dispatches no ops: nothing would be counted
            raise UserError("--count counts the eager model's ops: drop --cuda-graphs")
        overrides += ["MODEL.COMPILE", "False", "TEST.CUDA_GRAPHS", "False"]
    if args.compile is not None:
        overrides += ["MODEL.COMPILE", str(bool(args.compile))]
    if args.cuda_graphs is not None:
        overrides += ["TEST.CUDA_GRAPHS", str(bool(args.cuda_graphs))]
    return overrides


def build_cfg(args, config_file: str):
    from detectron2.config import get_cfg

    from cat_seg.config import add_cat_seg_config, check_config_values

    from .errors import merge_config

    # the repository's configs also from any folder; unknown keys name the closest valid one
    cfg = merge_config(add_cat_seg_config(get_cfg()), config_file)
    cfg.MODEL.DEVICE = args.device_resolved
    cfg.MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS = "none"
    cfg.MODEL.WEIGHTS = ""
    if args.mode == "infer":
        cfg.TEST.SLIDING_WINDOW = True
        cfg.MODEL.SEM_SEG_HEAD.TEST_POOLING_SIZES = [1, 1]  # the official evaluation setting
    overrides = config_overrides(args)
    merge_config(cfg, None, overrides)
    try:
        check_config_values(cfg)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cfg.freeze()
    return cfg, overrides


def speed_settings(cfg) -> dict:
    """The speed keys as the run used them."""
    keys = ["MODEL.PRECISION", "TEST.CLASS_CHUNK_SIZE", "MODEL.CHECKPOINT_ACTIVATIONS", "MODEL.COMPILE",
            "TEST.CUDA_GRAPHS", "TEST.IMS_PER_BATCH"]
    from ..config import get_key

    missing = object()
    values = {key: get_key(cfg, key, missing) for key in keys}
    return {key: value for key, value in values.items() if value is not missing}


def class_names(args, default: int):
    """The vocabulary of a step: ``--class-json``'s list (read by the checks of ``_main``),
    else ``--classes`` (or ``default``) generated names."""
    if args.class_list:
        return args.class_list
    return [f"class {i}" for i in range(args.classes or default)]


def text_encoder_regions(model):
    """``(object, attribute, "clip_text")`` for the text encoders that are plain callables (not
    modules) inside ``model``, so their whole work counts as the text tower."""
    regions = []
    for module in model.modules():
        encoder = getattr(module, "text_encoder", None)
        if encoder is not None and not isinstance(encoder, torch.nn.Module) and callable(
                getattr(encoder, "encode_tokens", None)):
            regions.append((encoder, "encode_tokens", "clip_text"))
    return regions


# ---------------------------------------------------------------------------- runs
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(args, cfg, model, device, smoke: bool):
    """The step to time or count: ``(step, batch, names, size, extra, before_step)``;
    ``before_step()`` gives the labelled state the step keeps between calls (the optimizer's)."""
    from cat_seg.modeling.precision import precision_name, resolve_precision

    batch = args.batch or (4 if args.mode == "train" else 1)
    generator = torch.Generator().manual_seed(0)
    names = class_names(args, protocol_classes(args.mode))
    dtype = resolve_precision(cfg.MODEL.PRECISION, device)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    extra = {"precision_resolved": precision_name(dtype)}

    if args.mode == "train":
        model.train()
        crop = args.crop or cfg.INPUT.CROP.SIZE[0]
        size = (crop, crop)
        inputs = []
        for _ in range(batch):
            labels = torch.randint(0, len(names), size, generator=generator)
            labels[torch.rand(size, generator=generator) < 0.1] = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
            inputs.append({"image": torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator),
                           "sem_seg": labels})
        params = [p for p in model.parameters() if p.requires_grad]
        impl = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[args.optimizer]
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, **impl)
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        extra["optimizer"] = f"AdamW ({args.optimizer})"

        def before_step():
            return {"optimizer state": [t for state in optimizer.state.values() for t in state.values()
                                        if isinstance(t, torch.Tensor)]}

        def step(counter=None):
            """One training step; with a :class:`WorkCounter`, the optimizer's work is its own group."""
            optimizer_region = (lambda: counter.region("optimizer")) if counter is not None else contextlib.nullcontext
            with autocast():
                losses = model(inputs, class_names=names)
            loss = sum(losses.values())
            if scaler is not None:
                scaler.scale(loss).backward()
                with optimizer_region():
                    scaler.step(optimizer)
                    scaler.update()
            else:
                loss.backward()
                with optimizer_region():
                    optimizer.step()
            with optimizer_region():
                optimizer.zero_grad(set_to_none=True)

    else:
        model.eval()
        size = tuple(args.size) if args.size else (SMOKE_INFER_SIZE if smoke else INFER_SIZE)
        inputs = [{"image": torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator)}
                  for _ in range(batch)]

        def step(counter=None):
            with torch.no_grad(), autocast():
                model(inputs, class_names=names)

        def before_step():
            return {}

    return step, batch, names, size, extra, before_step


def build(args, config_file: str):
    from detectron2.modeling import build_model

    import cat_seg.modeling  # noqa: F401  (registers the model)

    device = torch.device(args.device_resolved)
    cfg, overrides = build_cfg(args, config_file)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.to(device)
    if args.compile_clip:
        model.backbone.compile()  # inductor, like MODEL.COMPILE's aggregator
    return cfg, overrides, model, device


def base_record(args, cfg, overrides, device, config_file, smoke, batch, names, size, extra, kind):
    from cat_seg.modeling.meta_arch.cat_seg import resolve_compile

    record = {"kind": kind, "tag": args.tag, "mode": args.mode, "config": config_file}
    record.update(environment(device))
    record.update({
        "precision": cfg.MODEL.PRECISION,
        "tf32": bool(args.tf32 and device.type == "cuda" and not args.exact),
        "exact": bool(args.exact),
        "compile": resolve_compile(cfg.MODEL.get("COMPILE"), device),
        "compile_clip": bool(args.compile_clip),
        "settings": speed_settings(cfg),
        "opts": overrides,
        "batch": batch,
        "classes": len(names),
        "size": list(size),
        "smoke": smoke,
    })
    record.update(extra)
    return record


def run_timed(args, config_file: str, smoke: bool) -> dict:
    cfg, overrides, model, device = build(args, config_file)
    step, batch, names, size, extra, before_step = make_step(args, cfg, model, device, smoke)
    memory = PeakMemory(device)
    if args.mode == "infer":
        t0 = time.perf_counter()
        with torch.no_grad():  # text features are computed once per vocabulary and cached
            model.text_embeddings(names)
        sync(device)
        logger.info(f"text features for {len(names)} classes: {time.perf_counter() - t0:.3f} s (cached)")
    first = None
    for i in range(args.warmup):
        t0 = time.perf_counter()
        step()
        sync(device)
        elapsed = time.perf_counter() - t0
        first = elapsed if first is None else first
        logger.info(f"warm-up {i + 1}/{args.warmup}: {elapsed:.3f} s")
    memory.reset()
    baseline = memory.current()
    times, cpu_times = [], []
    for i in range(args.iters):
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        logger.info(f"iter {i + 1}/{args.iters}: {times[-1]:.3f} s (cpu {cpu_times[-1]:.3f} s)")
    peak = memory.peak()
    if args.profile:
        profile(step, device, args.profile, args.profile_out)
    median = statistics.median(times)
    record = base_record(args, cfg, overrides, device, config_file, smoke, batch, names, size, extra, "time")
    record.update({
        "iters": args.iters,
        "warmup": args.warmup,
        "median_s": round(median, 5),
        "min_s": round(min(times), 5),
        "times_s": [round(t, 5) for t in times],
        "per_image_s": round(median / batch, 5),
        # 4 significant digits (3 decimals left 0.263 of a CPU's 0.26326: 0.1% off, more below)
        "images_per_s": float(f"{batch / median:.4g}"),  # training: images per second of training steps
        "first_call_s": round(first if first is not None else times[0], 5),
        "cpu_median_s": round(statistics.median(cpu_times), 5) if device.type == "cpu" else None,
        "peak_memory_bytes": peak,
        "peak_memory_gib": round(peak / 2 ** 30, 3),
        "memory_kind": memory.kind,
        "memory_baseline_bytes": baseline,
    })
    return record


def run_count(args, config_file: str, smoke: bool) -> dict:
    """Count one step (after ``--warmup`` uncounted ones): see :mod:`cat_seg.cli.work_count`."""
    from .work_count import WorkCounter, format_table

    cfg, overrides, model, device = build(args, config_file)
    step, batch, names, size, extra, before_step = make_step(args, cfg, model, device, smoke)
    regions = text_encoder_regions(model)
    record = base_record(args, cfg, overrides, device, config_file, smoke, batch, names, size, extra, "count")
    if args.mode == "infer":
        t0 = time.perf_counter()

        def embed():
            with torch.no_grad():
                model.text_embeddings(names)

        text = WorkCounter(model)
        with text.regions(regions), text:
            embed()
        logger.info(f"counted the text embeddings of {len(names)} classes in {time.perf_counter() - t0:.1f} s")
        record["text_embeddings"] = text.totals()
    for i in range(args.warmup):
        t0 = time.perf_counter()
        step()
        logger.info(f"warm-up {i + 1}/{args.warmup}: {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    counter = WorkCounter(model, memory_device=device, before_step=before_step())
    with counter.regions(regions), counter:
        step(counter)
    logger.info(f"counted one {args.mode} step in {time.perf_counter() - t0:.1f} s")
    record.update({"totals": counter.totals(), "groups": counter.groups(), "phases": counter.phases(),
                   "top_ops": counter.top_ops(), "saved_activations": counter.saved_activations(),
                   "memory": counter.memory()})
    if args.verbose or not smoke:
        logger.info("counted work:\n" + format_table(record["groups"], record["totals"]))
        if record["saved_activations"]:
            logger.info("saved for backward (GiB): " + ", ".join(
                f"{g} {b / 2 ** 30:.2f}" for g, b in record["saved_activations"].items()))
        memory = record["memory"]
        logger.info(f"peak of the live tensors: {memory['peak_bytes'] / 2 ** 30:.2f} GiB after "
                    f"{memory['peak_at'].get('op', '-')} ({memory['peak_at'].get('phase', '-')}, "
                    f"{memory['peak_at'].get('group', '-')}); alive then (GiB): " + ", ".join(
                        f"{k} {v / 2 ** 30:.2f}" for k, v in memory["live_at_peak"].items() if v >= 2 ** 24))
    return record


def profile(step, device, rows: int, out_path: Optional[str] = None):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        step()
        sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=rows)
    logger.info("profile of one iteration:\n" + table)
    if out_path:
        try:
            with open(out_path, "w") as f:
                f.write(table + "\n")
        except OSError as e:  # checked before the run, but a folder can change (or refuse root) meanwhile
            raise UserError(f"--profile-out {out_path}: cannot write it ({e.strerror or e}); the profile is in the "
                            "log above") from None


def run(args, config_file: str, smoke: bool) -> dict:
    record = run_count(args, config_file, smoke) if args.count else run_timed(args, config_file, smoke)
    emit(record)
    return record


def _main(args) -> int:
    if args.threads < 0:
        raise UserError(f"--threads {args.threads}: expected a positive number (0 = torch's default)")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device_resolved = args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    try:
        device_type = torch.device(args.device_resolved).type
    except RuntimeError:
        device_type = None
    if device_type not in ("cpu", "cuda"):
        raise UserError(f"--device {args.device_resolved!r}: expected cpu, cuda or cuda:N")
    if args.profile < 0:
        raise UserError(f"--profile {args.profile}: expected a number of rows (0 = no profile)")
    if args.profile_out and not args.profile:
        raise UserError(f"--profile-out {args.profile_out}: it writes the profile of --profile ROWS, which is not given")
    if args.count and args.profile:
        raise UserError("--count and --profile are separate measurements: drop one")
    if args.count and args.iters != build_parser().get_default("iters"):
        raise UserError(f"--count counts one step: drop --iters {args.iters} (--warmup sets the uncounted steps "
                        "before it)")
    if args.profile_out:  # checked now, not after the measurement it would lose
        folder = os.path.dirname(os.path.abspath(args.profile_out))
        if not os.path.isdir(folder) or os.path.isdir(args.profile_out):
            raise UserError(f"--profile-out {args.profile_out}: expected a file in an existing folder")
        if not os.access(folder, os.W_OK):
            raise UserError(f"--profile-out {args.profile_out}: the folder {folder} is not writable")
    if args.smoke:
        given = [f"--{name.replace('_', '-')}" for name in ("iters", "warmup", "batch", "config_file", "mode")
                 if getattr(args, name) != build_parser().get_default(name)]
        if given:
            raise UserError(f"--smoke runs its own tiny settings: drop {', '.join(given)}")
    if args.device_resolved.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {args.device_resolved}: CUDA is not available here")
        allow = bool(args.tf32) and not args.exact
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow
    args.class_list = None
    if args.class_json:  # read now: a bad list is one line before anything is built
        from cat_seg.utils import read_class_json

        try:
            args.class_list = read_class_json(args.class_json, "--class-json")
        except (OSError, ValueError) as exc:
            raise UserError(str(exc)) from None  # the message names the file
    for name in ("iters", "warmup", "batch", "classes", "crop"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            expected = "0 or more" if name == "warmup" else "a positive number"
            raise UserError(f"--{name} {value}: expected {expected}")
    if args.size is not None and min(args.size) < 1:
        raise UserError(f"--size {args.size[0]} {args.size[1]}: expected a positive height and width")
    if args.smoke:
        args.iters, args.warmup = 1, 0
        classes = args.classes or 40  # more than PAD_LEN (32) of the tiny config: exercises pruning
        for mode in ("infer", "train"):
            args.mode = mode
            args.batch = 2 if mode == "train" else 1
            args.classes = classes
            run(args, SMOKE_CONFIG, smoke=True)
        return 0
    run(args, args.config_file, smoke=False)
    return 0


_JSON_OUT = None


def emit(record: dict):
    """Write one JSON line to the real stdout (everything else printed goes to stderr)."""
    stream = _JSON_OUT or sys.stdout
    stream.write(json.dumps(record) + "\n")
    stream.flush()


@contextlib.contextmanager
def _stdout_for_json_only():
    """Keep the real stdout for the JSON lines; send fd 1 (Python and C-level prints) to
    stderr meanwhile; restored on exit."""
    global _JSON_OUT
    sys.stdout.flush()
    try:
        saved_fd = os.dup(1)
    except OSError:  # no file descriptor (embedded interpreters): leave stdout alone
        yield
        return
    saved_stdout = sys.stdout
    _JSON_OUT = os.fdopen(os.dup(saved_fd), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout.flush()
        _JSON_OUT.close()
        _JSON_OUT = None
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        sys.stdout = saved_stdout


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if (args.verbose or not args.smoke) else logging.WARNING,
                        stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    with _stdout_for_json_only():
        try:
            return _main(args)
        except UserError as e:
            return print_user_error(e)


if __name__ == "__main__":
    sys.exit(main())
