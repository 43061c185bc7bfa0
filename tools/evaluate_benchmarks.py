#!/usr/bin/env python
"""Evaluate a CAT-Seg model on the open-vocabulary benchmarks and print one Markdown table.

    tools/evaluate_benchmarks.py CONFIG NUM_GPUS OUTPUT_DIR [KEY VALUE ...]

Used by eval.sh. One ``train_net.py --eval-only`` process per benchmark (official protocol:
sliding window, pooling [1,1], the benchmark's class json; ``MODEL.WEIGHTS`` defaults to
``OUTPUT_DIR/model_final.pth``); extra ``KEY VALUE`` options are appended last and win.
``BENCHMARKS="ade150 pc59"`` selects benchmarks (default: the six of the paper; ``synthetic``
is the toy benchmark). A benchmark whose data is missing is listed as skipped with the
reason. Results: ``OUTPUT_DIR/eval/<benchmark>/``, the table also in
``OUTPUT_DIR/eval/results.md``.
"""
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from cat_seg.evaluation.benchmarks import BENCHMARKS, PAPER_BENCHMARKS, benchmark_opts  # noqa: E402


def evaluate(config, num_gpus, output_dir, extra_opts, keys):
    rows = []
    for key in keys:
        bench = BENCHMARKS[key]
        out = os.path.join(output_dir, "eval", key)
        os.makedirs(out, exist_ok=True)
        cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", config,
               "--num-gpus", str(num_gpus), "--eval-only",
               "MODEL.WEIGHTS", os.path.join(output_dir, "model_final.pth"), "OUTPUT_DIR", out]
        cmd += benchmark_opts(bench) + list(extra_opts)
        print(f"[eval] {bench.title}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        start = time.time()
        with open(os.path.join(out, "stderr.log"), "w") as err:
            proc = subprocess.run(cmd, stdout=err, stderr=subprocess.PIPE, text=True)
            err.write(proc.stderr)
        seconds = time.time() - start
        result_file = os.path.join(out, "inference", bench.dataset, "sem_seg_results.json")
        if proc.returncode == 0 and os.path.isfile(result_file):
            with open(result_file) as f:
                res = json.load(f)
            metrics = res["metrics"]
            rows.append((bench.title, metrics.get("mIoU"), metrics.get("fwIoU"), metrics.get("pACC"),
                         res.get("num_images"), seconds, ""))
        else:
            lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
            reason = lines[-1] if lines else f"exit code {proc.returncode}"
            rows.append((bench.title, None, None, None, None, seconds, reason))
    return rows


def markdown_table(rows):
    def num(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)

    lines = ["| benchmark | mIoU | fwIoU | pACC | images | seconds |", "|---|---|---|---|---|---|"]
    for title, miou, fwiou, pacc, images, seconds, reason in rows:
        if reason:
            lines.append(f"| {title} | skipped: {reason} | | | | {seconds:.1f} |")
        else:
            lines.append(f"| {title} | {num(miou)} | {num(fwiou)} | {num(pacc)} | {num(images, '{}')} | {seconds:.1f} |")
    return "\n".join(lines)


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    config, num_gpus, output_dir, extra = argv[0], argv[1], argv[2], argv[3:]
    if not os.path.isfile(config):
        print(f"error: config file {config!r} not found", file=sys.stderr)
        return 2
    if len(extra) % 2:
        print(f"error: extra options must be KEY VALUE pairs, got {extra}", file=sys.stderr)
        return 2
    keys = os.environ.get("BENCHMARKS", " ".join(PAPER_BENCHMARKS)).split()
    unknown = [k for k in keys if k not in BENCHMARKS]
    if unknown:
        print(f"error: unknown benchmark(s) {unknown} in BENCHMARKS; known: {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    table = markdown_table(evaluate(config, num_gpus, output_dir, extra, keys))
    os.makedirs(os.path.join(output_dir, "eval"), exist_ok=True)
    with open(os.path.join(output_dir, "eval", "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
