"""``tools/benchmark.py --smoke`` (timing) and ``--smoke --count`` (counted work) on the tiny CPU config:
one valid JSON object per line and nothing else on stdout, the documented fields, consistent counts."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cat_seg.cli.work_count import GROUPS

REPO = Path(__file__).resolve().parents[2]
COMMON_FIELDS = {
    "kind", "mode", "config", "device", "device_name", "cpu_instruction_sets", "torch", "git_commit", "date",
    "threads", "inductor_env", "precision", "precision_resolved", "tf32", "exact", "compile", "settings", "opts",
    "batch", "classes", "size", "smoke",
}
TIME_FIELDS = {
    "iters", "warmup", "median_s", "min_s", "times_s", "per_image_s", "images_per_s", "first_call_s", "cpu_median_s",
    "peak_memory_bytes", "peak_memory_gib", "memory_kind", "memory_baseline_bytes",
}
COUNT_KEYS = {"flops", "bytes", "bytes_read", "bytes_written", "ops"}


def run_tool(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "tools/benchmark.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=1800, env=env)


def records_of(proc, classes=40):
    """The two records (infer, train) of a --smoke run; ``classes``: the vocabulary size of
    both steps (40 without --class-json)."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout
    records = [json.loads(line) for line in lines]
    assert [r["mode"] for r in records] == ["infer", "train"]
    for record in records:
        assert COMMON_FIELDS <= set(record), COMMON_FIELDS - set(record)
        assert record["smoke"] is True and record["device"] == "cpu"
        assert record["precision"] == "fp32" and record["precision_resolved"] == "fp32"
        assert record["classes"] == classes
        assert record["settings"]["MODEL.PRECISION"] == "fp32"
        assert record["cpu_instruction_sets"] and record["torch"]
    return records


def test_smoke_timing_records(tmp_path):
    """The timing records; with --class-json, read once by the checks, the file's list is the
    vocabulary of both steps (41 names: more than the tiny config's PAD_LEN 32, as the default
    40, so the class pruning runs, and not 40, so the records show the file was used; the
    default 40 is checked by test_smoke_count_records)."""
    vocabulary = tmp_path / "forty_one.json"
    vocabulary.write_text(json.dumps([f"thing {i}" for i in range(41)]))
    records = records_of(run_tool("--smoke", "--threads", "2", "--class-json", str(vocabulary)), classes=41)
    for record in records:
        assert record["kind"] == "time"
        assert TIME_FIELDS <= set(record), TIME_FIELDS - set(record)
        assert record["median_s"] > 0 and record["peak_memory_bytes"] > 0
        assert len(record["times_s"]) == record["iters"] == 1
        # images_per_s is batch / the unrounded median, to 4 significant digits (at most 5e-4
        # off); median_s is rounded to 5 decimals (at most 5e-6 s off, which matters below
        # 10 ms): the median lies within 5e-6 of median_s
        low = record["batch"] / (record["median_s"] + 5e-6) * (1 - 5e-4)
        high = record["batch"] / max(record["median_s"] - 5e-6, 1e-9) * (1 + 5e-4)
        assert low * (1 - 1e-9) <= record["images_per_s"] <= high * (1 + 1e-9), record
        assert record["memory_kind"] in ("cpu_peak_rss", "cpu_lifetime_max_rss")
    assert records[1]["optimizer"] == "AdamW (fused)"


def test_smoke_count_records():
    infer, train = records_of(run_tool("--smoke", "--count", "--threads", "2", "--class-chunk-size", "0"))
    for record in (infer, train):
        assert record["kind"] == "count"
        assert record["settings"]["TEST.CLASS_CHUNK_SIZE"] == 0
        totals, groups = record["totals"], record["groups"]
        assert COUNT_KEYS | {"bytes_storage", "views", "flops_flop_counter"} <= set(totals)
        assert set(groups) <= set(GROUPS), set(groups) - set(GROUPS)
        for key in COUNT_KEYS:  # the groups partition the total
            assert sum(g[key] for g in groups.values()) == totals[key], key
        assert totals["flops"] == totals["flops_flop_counter"] > 0
        assert totals["bytes"] == totals["bytes_read"] + totals["bytes_written"] > 0
        assert totals["ops"] > 0 and totals["views"] > 0
        # the heavy groups of the model are all found (the module rules work on this model)
        for group in ("clip_image", "cost_volume", "spatial_blocks", "class_blocks", "decoder", "pre_post_processing"):
            assert groups.get(group, {}).get("flops", 0) > 0 or groups.get(group, {}).get("bytes", 0) > 0, group
        assert "other" not in groups, groups.get("other")
    # inference: text embeddings are cached, counted once on the side; no backward
    assert "clip_text" not in infer["groups"] and infer["text_embeddings"]["flops"] > 0
    assert set(infer["phases"]) == {"forward"}
    # training: the text tower is fine-tuned (runs every step), backward and optimizer are counted
    assert train["groups"]["clip_text"]["flops"] > 0 and train["groups"]["optimizer"]["bytes"] > 0
    assert set(train["phases"]) == {"forward", "backward", "optimizer"}
    assert train["phases"]["backward"]["flops"] > train["phases"]["forward"]["flops"]
    assert sum(p["bytes"] for p in train["phases"].values()) == train["totals"]["bytes"]
    # peak of the live tensors: the parameters were alive before the step; what the step made
    # comes on top
    assert train["memory"]["live_at_peak"]["before: parameters"] > 0
    for record in (infer, train):
        memory = record["memory"]
        assert memory["device"] == "cpu"
        assert memory["peak_bytes"] == sum(memory["live_at_peak"].values()) > memory["before_step_bytes"] > 0
        assert memory["peak_at"]["op"].startswith("aten::")
    assert train["memory"]["peak_bytes"] - train["memory"]["before_step_bytes"] >= \
        train["saved_activations"]["total"] > 0


@pytest.mark.parametrize("args, message", [
    (["--exact", "--precision", "bf16"], "--exact means fp32"),
    (["--count", "--compile-clip"], "--count counts the eager model's ops: drop --compile-clip"),
    (["--exact", "--compile-clip"], "--exact means the eager model: drop --compile-clip"),
    (["--opts", "MODEL.PRECISION"], "--opts needs KEY VALUE pairs"),
    (["--opts", "MODEL.NO_SUCH_KEY", "1"], "unknown config key 'MODEL.NO_SUCH_KEY' in the command line"),
    (["--opts", "TEST.SLIDING_WINDOWS", "True"], "did you mean 'TEST.SLIDING_WINDOW'?"),
    (["--config-file", "no/such.yaml"], "config file 'no/such.yaml' not found"),
    (["--size", "0", "0"], "--size 0 0: expected a positive height and width"),
    (["--opts", "MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED", "nope.json"], "CLIP_PRETRAINED='nope.json': model-config file"),
    (["--count", "--cuda-graphs"], "--count counts the eager model's ops: drop --cuda-graphs"),
    (["--count", "--iters", "3"], "--count counts one step: drop --iters 3 (--warmup sets the uncounted steps before it)"),
    (["--count", "--profile", "5"], "--count and --profile are separate measurements: drop one"),
    (["--profile-out", "p.txt"], "--profile-out p.txt: it writes the profile of --profile ROWS, which is not given"),
    (["--threads", "-1"], "--threads -1: expected a positive number"),
    (["--warmup", "-1"], "--warmup -1: expected 0 or more"),
    (["--profile", "-1"], "--profile -1: expected a number of rows"),
    (["--profile", "3", "--profile-out", "/no/such/folder/p.txt"], "--profile-out /no/such/folder/p.txt: expected a file"),
    (["--smoke", "--iters", "3"], "--smoke runs its own tiny settings: drop --iters"),
    (["--smoke", "--mode", "train"], "--smoke runs its own tiny settings: drop --mode"),  # it runs both modes
    (["--class-json", "no/such.json"], "--class-json 'no/such.json' not found"),
    (["--class-json", "configs/vitb_384.yaml"], "configs/vitb_384.yaml': not valid JSON"),
])
def test_user_errors_are_one_line_exit_2(args, message, capsys):
    from cat_seg.cli.benchmark import main

    assert main(["--device", "cpu", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    last = captured.err.strip().splitlines()[-1]
    assert message in last and "Traceback" not in captured.err


def test_script_user_error_is_one_line_exit_2():
    """The same through the script, in a process of its own."""
    proc = run_tool("--device", "cpu", "--opts", "MODEL.NO_SUCH_KEY", "1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: unknown config key 'MODEL.NO_SUCH_KEY' in the command line; not a cat-seg/detectron2 config key")
    assert "Traceback" not in proc.stderr


def run_gpu_script(tmp_path, **env):
    # TIME_LIMIT: the script skips the steps left after it (530 s by default, a device call's
    # budget); a loaded 2-core machine may need longer for the smoke steps, and no test may
    # fail for that (the subprocess timeout is the hang guard)
    env = dict(os.environ, **{"OUT": str(tmp_path / "out"), "SMOKE": "1", "DEVICE": "cpu", "PYTHON": sys.executable,
                              "WHEELS": str(tmp_path / "no-wheels"), "TIME_LIMIT": "100000",
                              "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env})
    return subprocess.run(["bash", "tools/gpu_benchmark.sh"], cwd=REPO, capture_output=True, text=True,
                          timeout=1800, env=env)


def test_gpu_script_dry_run_lists_the_gpu_steps(tmp_path):
    proc = run_gpu_script(tmp_path, SMOKE="0", DEVICE="cuda", DRY_RUN="1")
    assert proc.returncode == 0, proc.stderr
    steps = dict(line.split(": ", 1) for line in proc.stdout.strip().splitlines())
    for name in ("vitb_infer_150", "vitb_infer_847", "vitb_train_b4", "vitb_infer_150_eager", "vitb_train_b4_eager",
                 "vitb_infer_150_nographs", "vitl_infer_150", "vitl_infer_847", "vitl_train_b4",
                 "vitb_count_infer_150", "vitb_infer_150_profile", "vitb_train_profile"):
        assert name in steps, name
        assert f"--tag {name}" in steps[name] and "--device cuda" in steps[name]
    assert "compile" not in steps["vitb_infer_150"]  # the defaults: compiled and graphed on CUDA
    # the targets first, the ViT-L ones (never measured) before the 847-class ViT-B inference;
    # on CUDA their graphs are compiled first, all at once, each with the arguments of its step
    main = ["vitb_infer_150", "vitb_train_b4", "vitl_infer_150", "vitl_train_b4", "vitb_infer_847"]
    order = list(steps)
    assert order[:10] == [f"{name}_cold" for name in main] + main
    for name in main:
        cold = steps[f"{name}_cold"].replace("(at once) ", "").replace(f"--tag {name}_cold ", f"--tag {name} ")
        assert " ".join(cold.split()) == " ".join(steps[name].split()).replace("--iters 10 --warmup 3", "--iters 1 --warmup 0")
    assert "--no-compile --no-cuda-graphs" in steps["vitb_infer_150_eager"]
    assert "--no-cuda-graphs" in steps["vitb_infer_150_nographs"]
    assert "--batch 8" in steps["vitb_infer_150_b8"] and "vitb_infer_150_cached" in steps
    assert "pytest" in steps["cuda_tests"] and "tests/perf/test_cuda_model.py" in steps["cuda_tests"]
    assert "tests/perf/test_bf16_agreement.py -k cuda" in steps["bf16_agreement_cuda"]
    assert "--compile-clip" in steps["vitb_infer_150_compile_clip"]
    assert steps["toy_eval"].startswith("BENCHMARKS=synthetic ") and "tools/evaluate_benchmarks.py" in steps["toy_eval"]
    assert "MODEL.DEVICE cuda" in steps["toy_eval"] and "output/toy" in steps["toy_eval"]
    # an environment variable for one step only
    assert steps["vitb_infer_150_max_autotune"].startswith("TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1 ")
    assert not any(command.startswith("TORCHINDUCTOR") for name, command in steps.items()
                   if name != "vitb_infer_150_max_autotune")
    assert "--count" in steps["vitb_count_infer_150"] and "--class-chunk-size 0" in steps["vitb_count_infer_150"]
    assert "configs/vitl_336.yaml" in steps["vitl_train_b4"] and "--batch 4" in steps["vitl_train_b4"]
    # the estimated peak memory of the eager training step, next to its measurement
    assert "--count" in steps["vitb_count_train_b4"] and "--mode train --batch 4" in steps["vitb_count_train_b4"]


def test_gpu_script_cpu_smoke_writes_records_summary_and_profile(tmp_path):
    """The steps' records, status lines, summary and profile; with PRECOMPILE=1 (the default
    on CUDA) the selected main steps run first, at once, for one iteration each. STEP_ENV
    reaches every command (each record's inductor_env) and each step's log line."""
    proc = run_gpu_script(tmp_path, ONLY="vitb_infer_150 vitb_train_b2 vitb_infer_150_profile vitb_count_infer_150",
                          PRECOMPILE="1", STEP_ENV="TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "out"
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["tag"] for r in records] == ["vitb_infer_150_cold", "vitb_train_b2_cold", "vitb_infer_150",
                                           "vitb_train_b2", "vitb_infer_150_profile", "vitb_count_infer_150"]
    assert [r["kind"] for r in records] == ["time"] * 5 + ["count"]
    assert [(r["iters"], r["warmup"]) for r in records[:2]] == [(1, 0), (1, 0)]
    for record in records:  # the precompiled ones too
        assert record["inductor_env"]["TORCHINDUCTOR_MAX_AUTOTUNE_GEMM"] == "1", record["tag"]
    steps = (out / "steps.tsv").read_text().splitlines()
    assert steps[0] == "step\tstatus\tseconds" and all("\tok\t" in line for line in steps[1:]) and len(steps) == 7
    assert [line.split("\t")[0] for line in steps[1:3]] == ["vitb_infer_150_cold", "vitb_train_b2_cold"]
    log = (out / "log.txt").read_text()
    assert ("=== vitb_train_b2_cold (precompile, 2 at once): TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1 --mode train "
            "--batch 2") in log
    assert "=== vitb_infer_150: TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1 --mode infer" in log
    for record in records[2:]:  # each measured step's line shows the variables it ran with
        assert f"=== {record['tag']}: TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1 --mode {record['mode']}" in log, record["tag"]
    summary = (out / "summary.md").read_text()
    assert "| vitb_train_b2 | train | 171 | 2 | fp32 |" in summary and "Counted work, vitb_count_infer_150" in summary
    assert "Estimated peak of the live tensors, vitb_count_infer_150:" in summary
    assert "aten::" in (out / "profile_infer.txt").read_text()
    assert "torch" in (out / "env.txt").read_text()


STUB_PYTHON = """#!/bin/sh
# PYTHON of a script run that must start no benchmark step: the import check passes without
# importing torch, the summary runs in the real Python, anything else fails
echo "$1" >> "$(dirname "$0")/calls.txt"
case "$1" in
  -c) echo "torch (stub)" ;;
  -) exec "{python}" "$@" ;;
  *) exit 97 ;;
esac
"""


def stub_python(tmp_path):
    """A PYTHON for gpu_benchmark.sh that records its first argument in calls.txt beside it."""
    stub = tmp_path / "stub" / "python"
    stub.parent.mkdir()
    stub.write_text(STUB_PYTHON.format(python=sys.executable))
    stub.chmod(0o755)
    return stub


def test_gpu_script_refuses_a_misspelt_step_before_running_anything(tmp_path):
    """ONLY="vitb_infer_15" ran no step and exited 0: a device call spent on an empty table."""
    proc = run_gpu_script(tmp_path, SMOKE="0", DEVICE="cuda", ONLY="cuda_tests vitb_infer_15")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ONLY: unknown step 'vitb_infer_15'; the steps: ")
    assert " vitb_infer_150 " in proc.stderr and not (tmp_path / "out").exists()


def test_gpu_script_toy_eval_is_skipped_without_the_toy_checkpoint(tmp_path):
    stub = stub_python(tmp_path)
    proc = run_gpu_script(tmp_path, SMOKE="0", ONLY="toy_eval", TOY_DIR=str(tmp_path / "no-toy"), PYTHON=str(stub))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = (tmp_path / "out" / "steps.tsv").read_text().splitlines()
    assert steps[1:] == [f"toy_eval\tskipped (no {tmp_path / 'no-toy'}/model_final.pth: make demo, then carry it)\t0"]
    assert (tmp_path / "out" / "results.jsonl").read_text() == ""
    # Python ran for the import check and the summary only
    assert (stub.parent / "calls.txt").read_text().splitlines() == ["-c", "-"]


def test_gpu_script_skips_steps_past_the_time_limit(tmp_path):
    stub = stub_python(tmp_path)
    proc = run_gpu_script(tmp_path, TIME_LIMIT="1", PYTHON=str(stub))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = (tmp_path / "out" / "steps.tsv").read_text().splitlines()[1:]
    assert steps and all("\tskipped (" in line for line in steps)
    assert (tmp_path / "out" / "results.jsonl").read_text() == ""
    assert (stub.parent / "calls.txt").read_text().splitlines() == ["-c", "-"]


def test_a_profile_file_that_cannot_be_written_is_one_line(capsys):
    """A folder that refuses the profile file (here /proc, which accepts no new files even for
    root, where permission checks pass): one error line, not a traceback after the run."""
    from cat_seg.cli.benchmark import main

    assert main(["--smoke", "--profile", "3", "--profile-out", "/proc/cat_seg_profile.txt"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: --profile-out /proc/cat_seg_profile.txt: "), last
    assert "cannot write it" in last or "is not writable" in last


@pytest.mark.parametrize("flags, expected", [
    (["--checkpoint-activations"], ["MODEL.CHECKPOINT_ACTIVATIONS", "True"]),
    (["--no-checkpoint-activations"], ["MODEL.CHECKPOINT_ACTIVATIONS", "False"]),
    (["--precision", "bf16", "--class-chunk-size", "-1"], ["MODEL.PRECISION", "bf16", "TEST.CLASS_CHUNK_SIZE", "-1"]),
    (["--exact"], ["MODEL.PRECISION", "fp32", "TEST.CLASS_CHUNK_SIZE", "0", "MODEL.COMPILE", "False"]),
    (["--no-compile", "--opts", "TEST.SLIDING_WINDOW", "False"], ["TEST.SLIDING_WINDOW", "False", "MODEL.COMPILE",
                                                                  "False"]),
])
def test_flags_become_the_config_overrides_they_name(flags, expected):
    """The flags the smoke runs do not take (the GPU script's): each is the override its help
    names, in the order given (a later pair wins in detectron2's merge)."""
    from cat_seg.cli.benchmark import build_parser, config_overrides

    overrides = config_overrides(build_parser().parse_args(flags))
    pairs = list(zip(overrides[0::2], overrides[1::2]))
    assert [x for pair in pairs if pair[0] in expected[0::2] for x in pair] == expected
