"""Evaluate a CAT-Seg model on the open-vocabulary benchmarks and print one Markdown table.

    sh eval.sh CONFIG NUM_GPUS OUTPUT_DIR [KEY VALUE ...]
    python -m cat_seg.cli.evaluate_benchmarks CONFIG NUM_GPUS OUTPUT_DIR [KEY VALUE ...]

One ``cat_seg.cli.train_net --eval-only`` process per benchmark (official protocol: sliding
window, pooling [1,1], the benchmark's class json; ``MODEL.WEIGHTS`` defaults to
``OUTPUT_DIR/model_final.pth``); extra ``KEY VALUE`` options are appended last and win
(except the dataset and class json, which eval.sh sets per benchmark; given through run.sh,
the training's options that would change the protocol are left out).
``BENCHMARKS="ade150 pc59"`` selects benchmarks (default: the six of the paper; ``synthetic``
is the toy benchmark). ``TRAIN_NET=my_train_net.py`` runs your own train_net script (one that
registers a method's components) for each benchmark.

Before any benchmark starts, the arguments, the config (file and keys), ``OUTPUT_DIR`` and the
checkpoint are checked once: a mistake there is one ``error: ...`` line and exit status 2.
A benchmark whose data is missing is listed as skipped with the reason; one that fails for any
other reason is listed as failed, and the exit status is then 1. The last line on stderr
counts the evaluated, skipped and failed benchmarks. Results: ``OUTPUT_DIR/eval/<benchmark>/``,
the table also in ``OUTPUT_DIR/eval/results.md`` (below a line naming the config, weights,
options, precision and time of the run), and the benchmarks' logs of the run in
``OUTPUT_DIR/eval/log.txt``, where the official eval.sh leaves them (``grep copypaste`` works).
"""
import argparse
import difflib
import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

from ..utils import atomic_write
from .errors import UserError, check_pairs, run_main

USAGE = "sh eval.sh CONFIG NUM_GPUS OUTPUT_DIR [KEY VALUE ...]"


class Row(NamedTuple):
    """One benchmark's line of the table; ``status`` is ``evaluated``, ``skipped`` or ``failed``."""

    title: str
    status: str
    miou: Optional[float] = None
    fwiou: Optional[float] = None
    pacc: Optional[float] = None
    images: Optional[int] = None
    seconds: float = 0.0
    reason: str = ""
    images_per_s: Optional[float] = None  # the evaluator's throughput (without the first batch)


def parse_num_gpus(text: str) -> int:
    from cat_seg.utils import int_at_least

    value = int_at_least(text)
    if value is None:
        raise UserError(f"NUM_GPUS {text!r}: expected a positive integer (processes per benchmark); usage: {USAGE}")
    return value


def selected_benchmarks() -> List[str]:
    from cat_seg.evaluation.benchmarks import BENCHMARKS, PAPER_BENCHMARKS

    # separated by spaces (the official eval.sh's list) or commas, in any case
    keys = os.environ.get("BENCHMARKS", " ".join(PAPER_BENCHMARKS)).replace(",", " ").lower().split()
    unknown = [k for k in keys if k not in BENCHMARKS]
    if unknown or not keys:
        guesses = {k: difflib.get_close_matches(k, list(BENCHMARKS), n=1) for k in unknown}
        named = ", ".join(f"{k} (did you mean {g[0]}?)" if g else k for k, g in guesses.items())
        raise UserError(f"BENCHMARKS={os.environ.get('BENCHMARKS', '')!r}: unknown benchmark(s) "
                        f"{named or '(none given)'}; expected some of: {', '.join(BENCHMARKS)} "
                        f"(a dataset of your own: {OWN_DATASET_HINT})")
    return keys


#: How to evaluate a dataset that is not one of the benchmarks (eval.sh runs the benchmarks only).
OWN_DATASET_HINT = ("train_net.py --eval-only DATASETS.TEST \"('NAME',)\" with its TEST_CLASS_JSON, "
                    "docs/datasets.md, 'Your own dataset'")


# A train_net.py of one's own (a script that registers a method's components, then calls
# cat_seg.cli.train_net.main): each benchmark runs it instead of cat-seg's.
TRAIN_NET_ENV = "TRAIN_NET"


#: cat-seg's train_net, run for each benchmark unless $TRAIN_NET names a script of one's own.
DEFAULT_TRAIN_NET = (sys.executable, "-m", "cat_seg.cli.train_net")


def train_net_command() -> List[str]:
    """The command each benchmark runs: ``$TRAIN_NET`` (a script) or cat-seg's train_net. The
    script's top level runs here too (not its ``__main__`` part), so that the checks before
    the benchmarks know what it registers (docs/architecture.md, "Building on cat-seg")."""
    script = os.environ.get(TRAIN_NET_ENV)
    if not script:
        return list(DEFAULT_TRAIN_NET)
    if not os.path.isfile(script):
        raise UserError(f"{TRAIN_NET_ENV}={script!r}: not found; expected a script that registers your components "
                        "and calls cat_seg.cli.train_net.main")
    import runpy

    # registrations only; with the script's folder first on sys.path, as `python script.py`
    # runs it (its own modules beside it are imported)
    folder = os.path.dirname(os.path.abspath(script))
    sys.path.insert(0, folder)
    try:
        runpy.run_path(script, run_name="__cat_seg_train_net__")
    finally:
        sys.path.remove(folder)
    return [sys.executable, os.path.abspath(script)]


# Set by run.sh: the KEY VALUE options are the training's, given on to the evaluation.
FROM_TRAINING_ENV = "CATSEG_EVAL_AFTER_TRAINING"
# Keys eval.sh sets for each benchmark (its dataset and class json).
BENCHMARK_KEYS = ("DATASETS.TEST", "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON")
# Training options that are not the evaluation's after run.sh's training: the weights the
# training started from (the evaluation's are the trained OUTPUT_DIR/model_final.pth).
TRAINING_START_KEYS = ("MODEL.WEIGHTS",)
# The pooling keys: POOLING_SIZES is the official eval.sh's, TEST_POOLING_SIZES what inference reads.
POOLING_KEY, TEST_POOLING_KEY = "MODEL.SEM_SEG_HEAD.POOLING_SIZES", "MODEL.SEM_SEG_HEAD.TEST_POOLING_SIZES"


def evaluation_options(extra: Sequence[str]) -> List[str]:
    """The ``KEY VALUE`` options appended to every benchmark's command.

    Given to eval.sh: a key eval.sh sets for each benchmark (:data:`BENCHMARK_KEYS`) is an
    error, and one that replaces a setting of the protocol (sliding window, pooling) is said on
    stderr; ``POOLING_SIZES`` alone (the official eval.sh's pooling key) sets
    ``TEST_POOLING_SIZES`` too, which inference pools with. Given to run.sh (the training's options, :data:`FROM_TRAINING_ENV`): those keys and
    the weights the training started from (:data:`TRAINING_START_KEYS`) are left out of the
    evaluation, with a note (``DATASETS.TEST "()"``, the training pooling ``[2,2]`` or a
    fine-tuning's ``MODEL.WEIGHTS`` are training settings; the trained model is evaluated)."""
    from cat_seg.evaluation.benchmarks import PROTOCOL_OPTS

    extra = list(extra)
    protocol = dict(zip(PROTOCOL_OPTS[0::2], PROTOCOL_OPTS[1::2]))
    pairs = list(zip(extra[0::2], extra[1::2])) + ([(extra[-1], None)] if len(extra) % 2 else [])
    if os.environ.get(FROM_TRAINING_ENV):
        def training_only(key):
            return key in BENCHMARK_KEYS or key in protocol or key in TRAINING_START_KEYS

        left_out = [f"{key} {value}" for key, value in pairs if training_only(key)]
        if left_out:
            own = (f"; the benchmarks are evaluated, not DATASETS.TEST (a dataset of your own: {OWN_DATASET_HINT})"
                   if any(key == "DATASETS.TEST" and (value or "").replace(" ", "") not in ("", "()", "[]")
                          for key, value in pairs) else "")
            print(f"[eval] training options not applied to the evaluation (eval.sh sets them for each benchmark "
                  f"and by the protocol, and evaluates the trained model): {', '.join(left_out)}{own}",
                  file=sys.stderr, flush=True)
        return [x for key, value in pairs if not training_only(key)
                for x in ((key,) if value is None else (key, value))]
    given = dict(pair for pair in pairs if pair[1] is not None)
    for key, value in pairs:
        if key in BENCHMARK_KEYS:
            raise UserError(f"{key} is set by eval.sh for each benchmark (BENCHMARKS=... selects them); remove "
                            f"'{key} ...' from the KEY VALUE options")
        if key in protocol and value is not None:
            print(f"[eval] {key} {value} replaces the protocol's {protocol[key]}", file=sys.stderr, flush=True)
    if POOLING_KEY in given and TEST_POOLING_KEY not in given:
        # the official eval.sh's pooling key: inference pools with TEST_POOLING_SIZES, which the
        # protocol also sets, so POOLING_SIZES alone would change nothing at evaluation
        extra += [TEST_POOLING_KEY, given[POOLING_KEY]]
    return extra


def check_once(config: str, num_gpus: int, output_dir: str, extra: Sequence[str]) -> str:
    """Check the config (file, keys, values, with the protocol's overrides every benchmark
    runs with), ``OUTPUT_DIR`` and the checkpoint before any benchmark runs (a released name
    is downloaded into the hub cache here, once); returns the ``MODEL.WEIGHTS`` value and
    :func:`precision_note`. Raises
    :class:`UserError` (or the hub's one-line error)."""
    from cat_seg.evaluation.benchmarks import PROTOCOL_OPTS

    from .train_net import check_clip_weights_fit, check_config_values, check_output_dir, check_weights, load_config

    if "OUTPUT_DIR" in list(extra)[0::2]:
        raise UserError(f"OUTPUT_DIR is eval.sh's third argument ({output_dir!r}); remove 'OUTPUT_DIR ...' from "
                        f"the KEY VALUE options (the results go to OUTPUT_DIR/eval/<benchmark>/)")
    default_weights = os.path.join(output_dir, "model_final.pth")
    # the values every benchmark runs with (their class jsons and datasets are checked by each)
    opts = (["MODEL.WEIGHTS", default_weights, "OUTPUT_DIR", os.path.join(output_dir, "eval")] + PROTOCOL_OPTS
            + list(extra))
    cfg = load_config(argparse.Namespace(config_file=config, opts=opts))
    check_config_values(cfg, num_gpus, eval_only=True)
    check_output_dir(cfg.OUTPUT_DIR)
    if cfg.MODEL.WEIGHTS == default_weights and not os.path.isfile(default_weights):
        raise UserError(f"no checkpoint {default_weights!r}: train first (sh run.sh ...) or pass "
                        f"MODEL.WEIGHTS FILE after OUTPUT_DIR")
    check_weights(cfg, resume=False, download=True)  # a released name: downloaded once here, not by every benchmark
    check_clip_weights_fit(cfg)
    return cfg.MODEL.WEIGHTS, precision_note(cfg)


def precision_note(cfg) -> str:
    """``"precision bf16 (MODEL.PRECISION auto on cuda)"``: the computation the benchmarks run
    (``auto`` is bf16 where the device computes it natively; fp32 is the official one)."""
    import torch

    from cat_seg.modeling.precision import precision_name, resolve_precision

    from .train_net import run_device

    device = run_device(cfg.MODEL.DEVICE)  # as train_net runs it
    name = precision_name(resolve_precision(cfg.MODEL.PRECISION, device))
    return f"precision {name} (MODEL.PRECISION {cfg.MODEL.PRECISION} on {torch.device(device).type})"


def missing_data(dataset: str) -> str:
    """Why ``dataset``'s files cannot be loaded (its one-line message), or "" if they can."""
    import cat_seg.data  # noqa: F401  (registers the datasets)
    from cat_seg.data.datasets.errors import DatasetNotFoundError
    from detectron2.data import DatasetCatalog

    try:
        DatasetCatalog.get(dataset)
    except DatasetNotFoundError as exc:
        return str(exc)
    return ""


def missing_benchmarks(keys: Sequence[str]) -> Dict[str, str]:
    """``{key: why its data cannot be loaded}`` of the benchmarks ``keys`` whose data is
    missing; raises :class:`UserError` when that is all of them (nothing would be evaluated:
    a wrong ``$DETECTRON2_DATASETS`` should not end as a successful run)."""
    from cat_seg.evaluation.benchmarks import BENCHMARKS

    missing = {key: reason for key in keys for reason in [missing_data(BENCHMARKS[key].dataset)] if reason}
    if keys and len(missing) == len(keys):
        raise UserError(f"no data for any of the {len(keys)} selected benchmark(s) ({' '.join(keys)}; BENCHMARKS= "
                        f"selects them); the first: {missing[keys[0]]}")
    return missing


def evaluate(config: str, num_gpus: int, output_dir: str, weights: str, extra_opts: Sequence[str],
             keys: Sequence[str], train_net: Sequence[str] = DEFAULT_TRAIN_NET,
             missing: Optional[Dict[str, str]] = None,
             progress: Optional[Callable[[List[Row]], None]] = None) -> List[Row]:
    """Run each benchmark of ``keys`` (``missing``: those :func:`missing_benchmarks` found
    without data, skipped; None: looked up here). ``progress(rows)`` is called with the rows
    done so far before each benchmark (``_main`` keeps ``results.md`` at this run's state)."""
    from cat_seg.evaluation.benchmarks import BENCHMARKS, benchmark_opts

    rows = []
    # the benchmarks' logs of this run in one file, where the official eval.sh leaves them (its
    # last line: cat OUTPUT_DIR/eval/log.txt | grep copypaste); emptied now, each appended when done
    combined_log = os.path.join(output_dir, "eval", "log.txt")
    os.makedirs(os.path.dirname(combined_log), exist_ok=True)
    open(combined_log, "w").close()
    for key in keys:
        if progress is not None:
            progress(rows)
        bench = BENCHMARKS[key]
        reason = missing.get(key, "") if missing is not None else missing_data(bench.dataset)
        if reason:
            rows.append(Row(bench.title, "skipped", reason=reason))
            print(f"[eval] {bench.title}: skipped: {reason}", file=sys.stderr, flush=True)
            continue
        out = os.path.join(output_dir, "eval", key)
        os.makedirs(out, exist_ok=True)
        result_file = os.path.join(out, "inference", bench.dataset, "sem_seg_results.json")
        if os.path.isfile(result_file):  # a previous run's: never reported as this run's
            os.remove(result_file)
        cmd = [*train_net, "--config-file", config,
               "--num-gpus", str(num_gpus), "--eval-only", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", out]
        cmd += benchmark_opts(bench) + list(extra_opts)
        print(f"[eval] {bench.title}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        start = time.time()
        log = os.path.join(out, "log.txt")  # detectron2 appends to it: this run's part is read below
        log_start = os.path.getsize(log) if os.path.isfile(log) else 0
        with open(os.path.join(out, "stderr.log"), "w") as err:
            proc = subprocess.run(cmd, stdout=err, stderr=subprocess.PIPE, text=True)
            err.write(proc.stderr)
        seconds = time.time() - start
        if os.path.isfile(log):
            with open(log, encoding="utf-8", errors="replace") as f, open(combined_log, "a") as combined:
                f.seek(log_start)
                combined.write(f.read())
        if proc.returncode == 0 and os.path.isfile(result_file):
            with open(result_file) as f:
                res = json.load(f)
            metrics = res["metrics"]
            throughput = res.get("throughput") or {}
            rows.append(Row(bench.title, "evaluated", metrics.get("mIoU"), metrics.get("fwIoU"), metrics.get("pACC"),
                            res.get("num_images"), seconds, images_per_s=throughput.get("images_per_s")))
        else:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit code {proc.returncode}"
            if proc.returncode == 0:
                reason = f"no {result_file} written"
            reason += f" (exit code {proc.returncode}; log: {os.path.join(out, 'stderr.log')})"
            rows.append(Row(bench.title, "failed", seconds=seconds, reason=reason))
            print(f"[eval] {bench.title}: failed: {reason}", file=sys.stderr, flush=True)
    return rows


def markdown_table(rows: Sequence[Row]) -> str:
    def num(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)

    lines = ["| benchmark | mIoU | fwIoU | pACC | images | seconds | images/s |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        if row.status == "evaluated":
            lines.append(f"| {row.title} | {num(row.miou)} | {num(row.fwiou)} | {num(row.pacc)} | "
                         f"{num(row.images, '{}')} | {row.seconds:.1f} | {num(row.images_per_s, '{:.2f}')} |")
        else:
            reason = row.reason.replace("|", "/")
            lines.append(f"| {row.title} | {row.status}: {reason} | | | | {row.seconds:.1f} | |")
    return "\n".join(lines)


def results_header(config: str, weights: str, extra: Sequence[str], precision: str = "") -> str:
    """The line above the table in ``results.md``: what was evaluated, how and when (the file
    holds the benchmarks of the last ``eval.sh`` run into this ``OUTPUT_DIR``)."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    options = f", options `{' '.join(extra)}`" if extra else ""
    how = f", {precision}" if precision else ""
    return (f"Config `{config}`, weights `{weights}`{options}{how}; evaluated {when}. Each benchmark's files: "
            f"`eval/<benchmark>/`.")


def counts(rows: Sequence[Row]) -> str:
    n = {s: sum(r.status == s for r in rows) for s in ("evaluated", "skipped", "failed")}
    return (f"{len(rows)} benchmark(s): {n['evaluated']} evaluated, {n['skipped']} skipped (missing data), "
            f"{n['failed']} failed")


def _main(argv: Optional[Sequence[str]]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: cat-seg-eval CONFIG NUM_GPUS OUTPUT_DIR [KEY VALUE ...]  (or: {USAGE})\n\n{__doc__.strip()}")
        return 0
    if argv == ["--check-benchmarks"]:  # run.sh, before it trains: the evaluation's choice and its data
        try:
            missing_benchmarks(selected_benchmarks())
        except UserError as exc:
            raise UserError(f"{exc} (checked before training; to train only, run train_net.py)") from None
        return 0
    if len(argv) < 3:
        raise UserError(f"expected CONFIG NUM_GPUS OUTPUT_DIR, got {len(argv)} argument(s); usage: {USAGE}")
    config, num_gpus, output_dir = argv[0], parse_num_gpus(argv[1]), argv[2]
    check_pairs(argv[3:])  # quoting the user's options, not eval.sh's own that come before them
    extra = evaluation_options(argv[3:])
    keys = selected_benchmarks()
    train_net = train_net_command()
    weights, precision = check_once(config, num_gpus, output_dir, extra)
    missing = missing_benchmarks(keys)
    print(f"[eval] {precision}", file=sys.stderr, flush=True)
    header = results_header(config, weights, extra, precision)

    def write_results(rows: Sequence[Row], done: bool) -> None:
        # rewritten before each benchmark: an interrupted run leaves its own rows, marked as such,
        # never the previous run's table under this run's options
        state = "" if done else (f"\n\nIncomplete: {len(rows)} of {len(keys)} benchmark(s) done when this was "
                                 "written (the run is going on, or was stopped).")
        atomic_write(os.path.join(output_dir, "eval", "results.md"),
                     lambda f: f.write(header + state + "\n\n" + markdown_table(rows) + "\n"), mode="w")

    rows = evaluate(config, num_gpus, output_dir, weights, extra, keys, train_net, missing,
                    progress=lambda rows: write_results(rows, done=False))
    write_results(rows, done=True)
    table = markdown_table(rows)
    print(table, flush=True)
    print(f"[eval] {counts(rows)}", file=sys.stderr, flush=True)
    return 1 if any(r.status == "failed" for r in rows) else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit status: 0 all requested benchmarks evaluated or skipped for missing data (at least
    one evaluated), 1 some failed, 2 a user error found before any benchmark ran (also: no
    selected benchmark has its data)."""
    from .train_net import user_error_types

    return run_main(_main, argv, user_errors=user_error_types())


if __name__ == "__main__":
    sys.exit(main())
