#!/usr/bin/env python
"""Speed and memory benchmark of CAT-Seg (training step and sliding-window inference).

One process, one JSON object per measurement on stdout (nothing else); logs go to stderr.
Random CLIP weights (speed does not depend on the weight values), synthetic images and
class names. See docs/benchmarks.md for the measured figures and the exact commands.

Examples::

    # sliding-window inference, one 512x683 image, ADE-150-sized vocabulary, bf16 autocast
    python tools/benchmark.py --mode infer --classes 150 --precision bf16
    # the exact reference computation (fp32, TF32 off, every speed option off)
    python tools/benchmark.py --mode infer --classes 150 --exact
    # one option off, everything else default
    python tools/benchmark.py --mode infer --classes 150 --no-fused-upconv
    # training step (forward + backward + AdamW), batch 4 of 384x384, 171 classes
    python tools/benchmark.py --mode train --precision bf16 --checkpoint-activations
    # seconds-long run of both modes on the tiny CPU config (CI; timings meaningless)
    python tools/benchmark.py --smoke

Output fields: ``mode``, ``config``, ``device`` (``cpu``/``cuda``), ``device_name`` (GPU
name or CPU model), ``torch``, ``precision``, ``compile``, ``options`` (every speed option
as used), ``opts`` (extra config overrides), ``batch``, ``classes``, ``size``, ``iters``,
``warmup``, ``median_s``, ``min_s``, ``times_s``, ``per_image_s`` (median / batch),
``cpu_median_s`` (process CPU seconds, CPU only: less sensitive to other load),
``threads``, ``peak_memory_bytes``, ``peak_memory_gib``, ``memory_kind``
(``cuda_max_memory_allocated`` or ``cpu_peak_rss``), ``date``, ``git_commit``, ``smoke``,
``exact``, ``tf32``, ``compiled_modules``, ``optimizer`` (train: the AdamW implementation),
``memory_baseline_bytes`` (memory held before the timed iterations: weights, optimizer
state, runtime; ``peak - baseline`` is what the step itself adds).
"""
import argparse
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

logger = logging.getLogger("benchmark")

SMOKE_CONFIG = "configs/quick_schedules/tiny_vitb_cpu.yaml"

# command-line flag -> (config key, FastOptions attribute)
SPEED_FLAGS = {
    "window-attention-4d": ("MODEL.FAST.WINDOW_ATTENTION_4D", "window_attention_4d"),
    "token-layout": ("MODEL.FAST.TOKEN_LAYOUT", "token_layout"),
    "padding-closed-form": ("MODEL.FAST.PADDING_CLOSED_FORM", "padding_closed_form"),
    "fused-upconv": ("MODEL.FAST.FUSED_UPCONV", "fused_upconv"),
    "skip-pruned-classes": ("MODEL.FAST.SKIP_PRUNED_CLASSES", "skip_pruned_classes"),
    "truncate-text": ("MODEL.FAST.TRUNCATE_TEXT", "truncate_text"),
    "checkpoint-activations": ("MODEL.FAST.CHECKPOINT_ACTIVATIONS", "checkpoint_activations"),
    "autocast-clip": ("MODEL.FAST.AUTOCAST_CLIP", "autocast_clip"),
    "fp32-cost-embedding": ("MODEL.FAST.FP32_COST_EMBEDDING", "fp32_cost_embedding"),
    "fp32-last-decoder-block": ("MODEL.FAST.FP32_LAST_DECODER_BLOCK", "fp32_last_decoder_block"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["train", "infer"], default="infer")
    parser.add_argument("--config-file", default="configs/vitb_384.yaml")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per step: train default 4 (384x384 crops), infer default 1")
    parser.add_argument("--classes", type=int, default=None, help="vocabulary size (train 171, infer 150)")
    parser.add_argument("--class-json", default=None, help="vocabulary from a class-name json instead")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="inference image size (default 512 683); training crops are 384x384")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="fp32, or autocast to bf16/fp16 (training: like SOLVER.AMP)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convs on CUDA (off by default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the heavy submodules")
    parser.add_argument("--optimizer", choices=["fused", "foreach", "for-loop"], default="fused",
                        help="AdamW implementation in --mode train (the for-loop one, torch's CPU default, "
                             "is ~50x slower on CPU)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--exact", action="store_true",
                        help="reference computation: fp32, TF32 off, every speed option off")
    for flag, (key, _) in SPEED_FLAGS.items():
        parser.add_argument(f"--{flag}", dest=flag.replace("-", "_"), action=argparse.BooleanOptionalAction,
                            default=None, help=f"{key} on/off (default: config)")
    parser.add_argument("--class-chunk-size", type=int, default=None, help="TEST.CLASS_CHUNK_SIZE (0 = off)")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="extra config overrides, KEY VALUE pairs")
    parser.add_argument("--profile", type=int, default=0, metavar="ROWS",
                        help="after timing, profile one iteration and log the top ROWS ops to stderr")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long run of both modes on the tiny CPU config (checks the tool, not speed)")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


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
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else ""
    except Exception:
        return ""


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


# ---------------------------------------------------------------------------- model
def build_cfg(args, config_file: str):
    from detectron2.config import get_cfg

    from cat_seg.config import add_cat_seg_config

    cfg = add_cat_seg_config(get_cfg())
    cfg.merge_from_file(config_file)
    cfg.MODEL.DEVICE = args.device_resolved
    cfg.MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS = "none"
    cfg.MODEL.WEIGHTS = ""
    if args.mode == "infer":
        cfg.TEST.SLIDING_WINDOW = True
        cfg.MODEL.SEM_SEG_HEAD.TEST_POOLING_SIZES = [1, 1]  # the official evaluation setting
    overrides = list(args.opts)
    if len(overrides) % 2:
        raise SystemExit("--opts needs KEY VALUE pairs")
    if args.exact:
        for key, _ in SPEED_FLAGS.values():
            overrides += [key, "False"]
        overrides += ["TEST.CLASS_CHUNK_SIZE", "0", "MODEL.FAST.INFERENCE_AUTOCAST", "False"]
    for flag, (key, _) in SPEED_FLAGS.items():
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            overrides += [key, str(bool(value))]
    if args.class_chunk_size is not None:
        overrides += ["TEST.CLASS_CHUNK_SIZE", str(args.class_chunk_size)]
    if args.mode == "infer" and args.precision != "fp32":
        overrides += ["MODEL.FAST.INFERENCE_AUTOCAST", "True", "MODEL.FAST.AUTOCAST_DTYPE", args.precision]
    if args.mode == "train" and args.precision != "fp32":
        overrides += ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", args.precision]
    cfg.merge_from_list(overrides)
    cfg.freeze()
    return cfg, overrides


def class_names(args, default: int):
    if args.class_json:
        from cat_seg.utils import read_class_json

        return read_class_json(args.class_json, "--class-json")
    return [f"class {i}" for i in range(args.classes or default)]


def compile_model(model):
    """``torch.compile`` the blocks that carry the time (CLIP blocks, aggregator blocks, decoder blocks)."""
    from cat_seg.modeling.class_aggregation import ClassAggregation
    from cat_seg.modeling.decoder import UpBlock
    from cat_seg.modeling.spatial_aggregation import SwinBlock

    compiled = 0
    for module in model.modules():
        if isinstance(module, (SwinBlock, ClassAggregation, UpBlock)):
            module.compile(dynamic=False)
            compiled += 1
    for block in model.backbone.clip.visual.transformer.resblocks:
        block.compile(dynamic=False)
        compiled += 1
    return compiled


# ---------------------------------------------------------------------------- runs
def timed(fn, device, iters: int, warmup: int, memory: PeakMemory):
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        sync(device)
        logger.info(f"warm-up {i + 1}/{warmup}: {time.perf_counter() - t0:.3f} s")
    memory.reset()
    baseline = memory.current()
    times, cpu_times = [], []
    for i in range(iters):
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        logger.info(f"iter {i + 1}/{iters}: {times[-1]:.3f} s (cpu {cpu_times[-1]:.3f} s)")
    return times, cpu_times, memory.peak(), baseline


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args, config_file: str, smoke: bool):
    from detectron2.modeling import build_model

    import cat_seg.modeling  # noqa: F401  (registers the model)
    from cat_seg.modeling.fast import set_fast_options

    device = torch.device(args.device_resolved)
    cfg, overrides = build_cfg(args, config_file)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.to(device)
    fast = set_fast_options(model)
    compiled = compile_model(model) if args.compile else 0
    batch = args.batch or (4 if args.mode == "train" else 1)
    memory = PeakMemory(device)
    generator = torch.Generator().manual_seed(0)
    names = class_names(args, 171 if args.mode == "train" else 150)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)

    if args.mode == "train":
        model.train()
        crop = cfg.INPUT.CROP.SIZE[0] if smoke else 384
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
        scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None

        def step():
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                losses = model(inputs, class_names=names)
            loss = sum(losses.values())
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        model.eval()
        size = tuple(args.size) if args.size else ((170, 230) if smoke else (512, 683))
        inputs = [{"image": torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator)}
                  for _ in range(batch)]
        t0 = time.perf_counter()
        with torch.no_grad():  # text features are computed once per vocabulary and cached
            model.text_embeddings(names)
        sync(device)
        logger.info(f"text features for {len(names)} classes: {time.perf_counter() - t0:.3f} s (cached)")

        def step():
            with torch.no_grad():
                model(inputs, class_names=names)

    times, cpu_times, peak, baseline = timed(step, device, args.iters, args.warmup, memory)
    if args.profile:
        profile(step, device, args.profile)
    median = statistics.median(times)
    record = {
        "mode": args.mode,
        "config": config_file,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name(),
        "torch": torch.__version__,
        "precision": args.precision,
        "tf32": bool(args.tf32 and device.type == "cuda"),
        "compile": bool(args.compile),
        "compiled_modules": compiled,
        "optimizer": f"AdamW ({args.optimizer})" if args.mode == "train" else None,
        "exact": bool(args.exact),
        "options": dict(fast.as_dict(), class_chunk_size_effective=fast.chunk_size(device),
                        inference_autocast=str(model.inference_autocast), autocast_clip=model.autocast_clip,
                        fp32_cost_embedding=model.sem_seg_head.aggregator.fp32_cost_embedding,
                        fp32_last_decoder_block=model.sem_seg_head.aggregator.decoder.fp32_last_block),
        "opts": overrides,
        "batch": batch,
        "classes": len(names),
        "size": list(size),
        "iters": args.iters,
        "warmup": args.warmup,
        "median_s": round(median, 5),
        "min_s": round(min(times), 5),
        "times_s": [round(t, 5) for t in times],
        "per_image_s": round(median / batch, 5),
        "cpu_median_s": round(statistics.median(cpu_times), 5) if device.type == "cpu" else None,
        "threads": torch.get_num_threads(),
        "peak_memory_bytes": peak,
        "peak_memory_gib": round(peak / 2 ** 30, 3),
        "memory_kind": memory.kind,
        "memory_baseline_bytes": baseline,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "smoke": smoke,
    }
    emit(record)
    return record


def profile(step, device, rows: int):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        step()
        sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    logger.info("profile of one iteration:\n" + prof.key_averages().table(sort_by=sort, row_limit=rows))


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if (args.verbose or not args.smoke) else logging.WARNING,
                        stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device_resolved = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        args.device_resolved = args.device or "cpu"
    if args.device_resolved.startswith("cuda"):
        allow = bool(args.tf32) and not args.exact
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow
    if args.exact and args.precision != "fp32":
        raise SystemExit("--exact means fp32: drop --precision")
    if args.smoke:
        args.iters, args.warmup = 1, 0
        for mode in ("infer", "train"):
            args.mode = mode
            args.batch = 2 if mode == "train" else 1
            args.classes = args.classes or 40  # more than PAD_LEN (32) of the tiny config: exercises pruning
            run(args, SMOKE_CONFIG, smoke=True)
        return
    run(args, args.config_file, smoke=False)


_JSON_OUT = None


def emit(record: dict):
    """Write one JSON line to the real stdout (everything else printed goes to stderr)."""
    stream = _JSON_OUT or sys.stdout
    stream.write(json.dumps(record) + "\n")
    stream.flush()


def _claim_stdout():
    """Keep the real stdout for the JSON lines; send fd 1 (Python and C-level prints) to stderr."""
    global _JSON_OUT
    sys.stdout.flush()
    _JSON_OUT = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr


if __name__ == "__main__":
    _claim_stdout()
    main()
