"""Time and peak memory of the Python API on large images with large vocabularies.

Every case runs in its own subprocess (so peak memory is that case's) and prints one JSON
line::

    {"config": "tiny", "classes": 1000, "height": 4000, "width": 6000, "sliding": false,
     "threads": 16, "baseline_rss_gb": ..., "segment_s": ..., "segment_peak_beyond_gb": ...,
     "peak_reset": true, "overlay_s": ..., "overlay_peak_beyond_gb": ..., "overlay_size": [h, w]}

``baseline_rss_gb`` is the resident memory once the model is built and the image is in memory;
``overlay_s`` leaves out the one-off import of detectron2's visualizer (about 1-2 s).
``*_peak_beyond_gb`` is the peak resident memory (``VmHWM`` of ``/proc/self/status``, reset
through ``/proc/self/clear_refs`` before each step) minus that baseline. The overlay is timed
for the cases with ``--overlay-classes`` classes. Models have random weights (no download):
``tiny`` is ``configs/quick_schedules/tiny_vitb_cpu.yaml``, ``vitb`` is
``configs/vitb_384.yaml`` with ``MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS none``.

Examples::

    python tools/large_image_benchmark.py --config tiny vitb --classes 4 150 1000 --size 6000x4000
    python tools/large_image_benchmark.py --config tiny --classes 4 --size 600x400   # quick check
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's cat_seg, installed or not
CONFIGS = {
    "tiny": (
        "configs/quick_schedules/tiny_vitb_cpu.yaml",
        ["MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED", os.path.join(REPO, "configs/clip_models/tiny-vit-b16.json")],
    ),
    "vitb": ("configs/vitb_384.yaml", ["MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", "none"]),
}
SMALL_VOCABULARY = ["cat", "dog", "grass", "sky"]


def vocabulary(num_classes: int):
    """``num_classes`` distinct names: a few common ones, then ADE-150 / ADE-847 names, then
    numbered filler names."""
    from cat_seg.modeling.clip.prompts import primary_name
    from cat_seg.utils import read_class_json

    if num_classes <= len(SMALL_VOCABULARY):
        return SMALL_VOCABULARY[:num_classes]
    names, seen = [], set()
    for file in ("ade150.json", "ade847.json"):
        for name in read_class_json(file):  # the packaged vocabularies
            key = primary_name(name).lower()
            if key not in seen:
                seen.add(key)
                names.append(name)
    names += [f"object {i}" for i in range(max(0, num_classes - len(names)))]
    return names[:num_classes]


def make_image(height: int, width: int):
    """A smooth random RGB ``uint8`` image (blocky colour regions, bilinear upsampled)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (max(height // 64, 1), max(width // 64, 1), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def run_case(case: dict) -> dict:
    """Build the model, then time one segmentation (and the overlay) with peak memory."""
    import torch

    from cat_seg import OpenVocabSegmenter
    from cat_seg.cli.benchmark import PeakMemory

    config, opts = CONFIGS[case["config"]]
    opts = opts + ["TEST.SLIDING_WINDOW", str(case["sliding"])] + case["opts"]
    seg = OpenVocabSegmenter.from_config(os.path.join(REPO, config), device="cpu", opts=opts)
    names = vocabulary(case["classes"])
    image = make_image(case["height"], case["width"])
    out = dict(config=case["config"], classes=len(names), height=case["height"], width=case["width"],
               sliding=case["sliding"], threads=torch.get_num_threads())
    memory = PeakMemory(torch.device("cpu"))  # the benchmark tool's: the process's RSS and its peak
    baseline = memory.current() / 2**30
    out["baseline_rss_gb"] = round(baseline, 3)
    memory.reset()
    out["peak_reset"] = memory.kind == "cpu_peak_rss"
    start = time.perf_counter()
    result = seg(image, names)
    out["segment_s"] = round(time.perf_counter() - start, 2)
    out["segment_peak_beyond_gb"] = round(memory.peak() / 2**30 - baseline, 3)
    if case["overlay"]:
        import detectron2.utils.visualizer  # noqa: F401  (a one-off import, not part of the drawing time)

        baseline = memory.current() / 2**30
        memory.reset()
        start = time.perf_counter()
        overlay = result.overlay()
        out["overlay_s"] = round(time.perf_counter() - start, 2)
        out["overlay_peak_beyond_gb"] = round(memory.peak() / 2**30 - baseline, 3)
        out["overlay_size"] = list(overlay.shape[:2])
    return out


def _checked_arguments(args):
    """``(width, height)`` of ``--size``, after checking the arguments every case would take:
    a :class:`UserError` for a bad size, class count or config override."""
    from detectron2.config import get_cfg

    from cat_seg.cli.errors import UserError, merge_config
    from cat_seg.config import add_cat_seg_config

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise UserError(f"--size {args.size!r}: expected WIDTHxHEIGHT, e.g. 6000x4000") from None
    if width < 1 or height < 1:
        raise UserError(f"--size {args.size!r}: expected a positive width and height")
    bad = [n for n in args.classes if n < 1]
    if bad:
        raise UserError(f"--classes {bad[0]}: expected a positive number of classes")
    for config in args.config:  # the overrides as each case merges them
        config_file, opts = CONFIGS[config]
        merge_config(add_cat_seg_config(get_cfg()), os.path.join(REPO, config_file), opts + list(args.opts))
    return width, height


def main(argv=None) -> int:
    from cat_seg.cli.errors import ArgumentParser, UserError, print_user_error

    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", default=["tiny"], choices=sorted(CONFIGS))
    parser.add_argument("--classes", nargs="+", type=int, default=[4, 150, 1000])
    parser.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT (default 6000x4000, 24 MP)")
    parser.add_argument("--sliding", action="store_true", help="TEST.SLIDING_WINDOW True")
    parser.add_argument("--overlay-classes", nargs="*", type=int, default=[4],
                        help="vocabulary sizes whose case also times the overlay (default 4)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="extra config overrides")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case (JSON)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))), flush=True)
        return 0
    try:
        width, height = _checked_arguments(args)
    except UserError as e:  # before the cases: one line, not a traceback per case
        return print_user_error(e)
    failed = 0
    for config in args.config:
        for classes in args.classes:
            case = dict(config=config, classes=classes, height=height, width=width, sliding=args.sliding,
                        overlay=classes in args.overlay_classes, opts=list(args.opts))
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", json.dumps(case)],
                                  stdout=subprocess.PIPE, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode or not lines:
                failed += 1
                print(json.dumps(dict(case, error=f"exit code {proc.returncode}")), flush=True)
            else:
                print(lines[-1], flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
