"""eval.sh on the toy benchmark prints the Markdown table; missing benchmarks are skipped, a
failing one makes the exit status 1, and mistakes in the arguments, config or checkpoint are
one line (exit 2) before any benchmark starts."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from cat_seg.cli import evaluate_benchmarks
from engine_helpers import REPO, TINY_CONFIG, run_env, run_train_net, train_opts

HANG_GUARD_S = 1800  # never a pass/fail time limit
HEADER = "| benchmark | mIoU | fwIoU | pACC | images | seconds | images/s |"


@pytest.fixture(scope="module")
def trained(tiny_benchmark, tmp_path_factory):
    """OUTPUT_DIR of a 2-step training run (holds model_final.pth)."""
    out = str(tmp_path_factory.mktemp("eval_sh") / "run")
    run_train_net(tiny_benchmark, *train_opts(tiny_benchmark, out, **{"SOLVER.MAX_ITER": 2, "DATASETS.TEST": "()"}))
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    return out


def geometry(bench, out):
    """The tiny model's input geometry; eval.sh itself sets each benchmark's class json and dataset."""
    opts = train_opts(bench, out)
    return [x for key, value in zip(opts[::2], opts[1::2])
            if key.startswith(("INPUT.", "MODEL.SEM_SEG_HEAD.F", "MODEL.SEM_SEG_HEAD.W")) for x in (key, value)]


def eval_sh(bench, *args, benchmarks="synthetic"):
    env = run_env(bench)
    env["BENCHMARKS"] = benchmarks
    return subprocess.run(["sh", os.path.join(REPO, "eval.sh"), *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=HANG_GUARD_S)


def row(stdout, title):
    line = next(line for line in stdout.strip().splitlines() if line.startswith(f"| {title} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_eval_sh_prints_table_and_skips_missing_benchmarks(tiny_benchmark, trained):
    proc = eval_sh(tiny_benchmark, TINY_CONFIG, "1", trained, *geometry(tiny_benchmark, trained),
                   benchmarks="synthetic ade150")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == HEADER
    toy = row(proc.stdout, "Synthetic toy (val)")
    assert 0.0 <= float(toy[1]) <= 100.0 and 0.0 <= float(toy[3]) <= 100.0
    assert toy[4] == "6"  # images evaluated
    assert float(toy[6]) > 0  # throughput (one image per forward on the CPU: 5 timed images)
    # cat-seg's own log messages reach the run's log file, the throughput line among them
    with open(os.path.join(trained, "eval", "synthetic", "log.txt")) as f:
        log = f.read()
    assert "Evaluation throughput on synthetic_val_sem_seg: " in log and " images/s (5 images in " in log
    ade = row(proc.stdout, "ADE20K-150")
    assert ade[1].startswith("skipped: ") and "ADEChallengeData2016" in ade[1] and "prepare_ade20k.py" in ade[1]
    assert not os.path.exists(os.path.join(trained, "eval", "ade150"))  # no process started for it
    assert proc.stderr.strip().splitlines()[-1] == ("[eval] 2 benchmark(s): 1 evaluated, 1 skipped (missing data), "
                                                    "0 failed")
    with open(os.path.join(trained, "eval", "results.md")) as f:
        header, table = f.read().split("\n\n", 1)
    assert table.strip() == proc.stdout.strip()
    assert header.startswith(f"Config `{TINY_CONFIG}`, weights `{os.path.join(trained, 'model_final.pth')}`")
    # the computation that ran (MODEL.PRECISION auto is bf16 where native): here the tiny config's fp32
    assert ", precision fp32 (MODEL.PRECISION fp32 on cpu); evaluated " in header
    assert "[eval] precision fp32 (MODEL.PRECISION fp32 on cpu)" in proc.stderr
    # the benchmarks' logs where the official eval.sh leaves them: its `grep copypaste` finds the numbers
    with open(os.path.join(trained, "eval", "log.txt")) as f:
        copypaste = [line for line in f if "copypaste" in line]
    assert len(copypaste) >= 2 and any("mIoU" in line for line in copypaste)


def test_failing_benchmark_is_listed_and_exit_status_is_1(tiny_benchmark, trained, tmp_path):
    # a label file of the benchmark that cannot be read: the config and checkpoint are valid,
    # the evaluation process fails
    broken = dict(tiny_benchmark, root=str(tmp_path / "datasets"))
    shutil.copytree(tiny_benchmark["root"], broken["root"])
    label = sorted((tmp_path / "datasets" / "synthetic" / "annotations" / "val").iterdir())[0]
    label.write_bytes(b"not a PNG")
    proc = eval_sh(broken, TINY_CONFIG, "1", trained, *geometry(tiny_benchmark, trained),
                   benchmarks="ade150 synthetic")
    assert proc.returncode == 1, proc.stderr[-3000:]
    toy = row(proc.stdout, "Synthetic toy (val)")
    assert toy[1].startswith("failed: ") and f"{label.name}" in toy[1]
    assert "exit code 2" in toy[1] and "stderr.log" in toy[1]  # found by the evaluation's own checks
    assert row(proc.stdout, "ADE20K-150")[1].startswith("skipped: ")
    assert proc.stderr.strip().splitlines()[-1] == ("[eval] 2 benchmark(s): 0 evaluated, 1 skipped (missing data), "
                                                    "1 failed")


MY_TRAIN_NET = """\
import sys

from detectron2.modeling import META_ARCH_REGISTRY

from cat_seg.cli.train_net import main
from cat_seg.modeling import CATSeg


@META_ARCH_REGISTRY.register()
class MyCATSeg(CATSeg):
    pass


if __name__ == "__main__":
    sys.exit(main())
"""


def test_own_train_net_script_evaluates_a_registered_architecture(tiny_benchmark, trained, tmp_path, capsys,
                                                                   monkeypatch):
    """TRAIN_NET=my_train_net.py: the checks before the benchmarks and every benchmark know
    what the script registers (cat-seg's own train_net does not). The two refusals are
    eval.sh's checks run in this process (where nothing registered MyCATSeg); the evaluation
    with the script is a real eval.sh run."""
    from detectron2.modeling import META_ARCH_REGISTRY

    script = tmp_path / "my_train_net.py"
    script.write_text(MY_TRAIN_NET)
    options = [*geometry(tiny_benchmark, trained), "MODEL.META_ARCHITECTURE", "MyCATSeg"]
    monkeypatch.setenv("BENCHMARKS", "synthetic")
    monkeypatch.delenv(evaluate_benchmarks.TRAIN_NET_ENV, raising=False)
    assert "MyCATSeg" not in META_ARCH_REGISTRY  # as in a new eval.sh process
    assert evaluate_benchmarks.main([TINY_CONFIG, "1", trained, *options]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "MODEL.META_ARCHITECTURE='MyCATSeg': not registered" in captured.err
    env = run_env(tiny_benchmark)
    env.update(BENCHMARKS="synthetic", TRAIN_NET=str(script))
    proc = subprocess.run(["sh", os.path.join(REPO, "eval.sh"), TINY_CONFIG, "1", trained, *options], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    miou = row(proc.stdout, "Synthetic toy (val)")[1]
    assert 0.0 <= float(miou) <= 100.0, miou
    assert f" {script} --config-file" in proc.stderr  # each benchmark ran the script (with eval.sh's python)
    monkeypatch.setenv(evaluate_benchmarks.TRAIN_NET_ENV, str(tmp_path / "nope.py"))
    assert evaluate_benchmarks.main([TINY_CONFIG, "1", trained]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"error: TRAIN_NET='{tmp_path / 'nope.py'}': not found")


def test_bad_num_gpus_is_one_line_before_any_benchmark(tiny_benchmark, tmp_path):
    out = str(tmp_path / "run")
    proc = eval_sh(tiny_benchmark, TINY_CONFIG, "abc", out)
    assert proc.returncode == 2
    assert proc.stderr == ("error: NUM_GPUS 'abc': expected a positive integer (processes per benchmark); "
                           "usage: sh eval.sh CONFIG NUM_GPUS OUTPUT_DIR [KEY VALUE ...]\n")
    assert proc.stdout == "" and not os.path.exists(out)


def test_run_sh_checks_its_arguments(tmp_path):
    proc = subprocess.run(["sh", os.path.join(REPO, "run.sh"), TINY_CONFIG, "two", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 2 and proc.stderr.startswith("error: NUM_GPUS 'two': expected a positive integer")
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "o").exists()
    # the evaluation's choice is checked before the training too (it was found after a whole run)
    proc = subprocess.run(["sh", os.path.join(REPO, "run.sh"), TINY_CONFIG, "1", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env={**os.environ, "BENCHMARKS": "ade15"})
    assert proc.returncode == 2 and proc.stderr.startswith("error: BENCHMARKS='ade15': unknown benchmark(s) ade15 "
                                                           "(did you mean ade150?)")
    assert proc.stderr.rstrip().endswith("(checked before training; to train only, run train_net.py)")
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "o").exists()


def test_options_that_eval_sh_sets_itself(capsys, monkeypatch):
    """eval.sh: the dataset or class json of the benchmarks is an error, a protocol setting the
    options replace is said; after training (run.sh), such training options are left out."""
    monkeypatch.delenv(evaluate_benchmarks.FROM_TRAINING_ENV, raising=False)
    with pytest.raises(evaluate_benchmarks.UserError, match=r"^DATASETS.TEST is set by eval.sh for each benchmark "
                                                           r"\(BENCHMARKS=... selects them\); remove 'DATASETS.TEST"):
        evaluate_benchmarks.evaluation_options(["MODEL.PRECISION", "fp32", "DATASETS.TEST", "()"])
    options = ["TEST.SLIDING_WINDOW", "False", "MODEL.PRECISION", "fp32"]
    assert evaluate_benchmarks.evaluation_options(options) == options
    assert capsys.readouterr().err == "[eval] TEST.SLIDING_WINDOW False replaces the protocol's True\n"
    # the pooling at inference is TEST_POOLING_SIZES when set: a protocol setting too (it replaced
    # the protocol's [1,1] without a word)
    options = ["MODEL.SEM_SEG_HEAD.TEST_POOLING_SIZES", "[2,2]"]
    assert evaluate_benchmarks.evaluation_options(options) == options
    assert capsys.readouterr().err == "[eval] MODEL.SEM_SEG_HEAD.TEST_POOLING_SIZES [2,2] replaces the protocol's [1,1]\n"
    # the official eval.sh's pooling key alone: inference pools with TEST_POOLING_SIZES (the
    # protocol's [1,1] won, and the evaluation did not change), so it is set to the same
    options = ["MODEL.SEM_SEG_HEAD.POOLING_SIZES", "[2,2]"]
    assert evaluate_benchmarks.evaluation_options(options) == options + ["MODEL.SEM_SEG_HEAD.TEST_POOLING_SIZES",
                                                                         "[2,2]"]
    assert capsys.readouterr().err == "[eval] MODEL.SEM_SEG_HEAD.POOLING_SIZES [2,2] replaces the protocol's [1,1]\n"
    options = ["MODEL.SEM_SEG_HEAD.POOLING_SIZES", "[2,2]", "MODEL.SEM_SEG_HEAD.TEST_POOLING_SIZES", "[3,3]"]
    assert evaluate_benchmarks.evaluation_options(options) == options
    capsys.readouterr()
    monkeypatch.setenv(evaluate_benchmarks.FROM_TRAINING_ENV, "1")
    training = ["DATASETS.TEST", "()", "SOLVER.MAX_ITER", "10", "MODEL.SEM_SEG_HEAD.POOLING_SIZES", "[2,2]",
                "MODEL.SEM_SEG_HEAD.TEST_POOLING_SIZES", "[3,3]"]
    assert evaluate_benchmarks.evaluation_options(training) == ["SOLVER.MAX_ITER", "10"]
    assert capsys.readouterr().err == (
        "[eval] training options not applied to the evaluation (eval.sh sets them for each benchmark and by the "
        "protocol, and evaluates the trained model): DATASETS.TEST (), MODEL.SEM_SEG_HEAD.POOLING_SIZES [2,2], MODEL.SEM_SEG_HEAD.TEST_POOLING_SIZES "
        "[3,3]\n")
    # a fine-tuning's starting weights given to run.sh: the trained model is evaluated, not those
    # (they came after eval.sh's OUTPUT_DIR/model_final.pth and won)
    assert evaluate_benchmarks.evaluation_options(["MODEL.WEIGHTS", "start.pth", "SOLVER.MAX_ITER", "10"]) == [
        "SOLVER.MAX_ITER", "10"]
    assert capsys.readouterr().err == (
        "[eval] training options not applied to the evaluation (eval.sh sets them for each benchmark and by the "
        "protocol, and evaluates the trained model): MODEL.WEIGHTS start.pth\n")
    # a dataset of one's own given to run.sh: said how it is evaluated
    assert evaluate_benchmarks.evaluation_options(["DATASETS.TEST", "('my_val',)"]) == []
    assert capsys.readouterr().err == (
        "[eval] training options not applied to the evaluation (eval.sh sets them for each benchmark and by the "
        "protocol, and evaluates the trained model): DATASETS.TEST ('my_val',); the benchmarks are evaluated, not DATASETS.TEST (a dataset of your "
        "own: train_net.py --eval-only DATASETS.TEST \"('NAME',)\" with its TEST_CLASS_JSON, docs/datasets.md, "
        "'Your own dataset')\n")
    monkeypatch.setenv("BENCHMARKS", "my_val")
    with pytest.raises(evaluate_benchmarks.UserError, match=r"unknown benchmark\(s\) my_val; expected some of: .*"
                                                           r"\(a dataset of your own: train_net.py --eval-only"):
        evaluate_benchmarks.selected_benchmarks()
    # commas and capitals as people write them; a near miss is named
    monkeypatch.setenv("BENCHMARKS", "ADE150, voc20")
    assert evaluate_benchmarks.selected_benchmarks() == ["ade150", "voc20"]
    monkeypatch.setenv("BENCHMARKS", "ade15 voc20")
    with pytest.raises(evaluate_benchmarks.UserError,
                       match=r"unknown benchmark\(s\) ade15 \(did you mean ade150\?\); "):
        evaluate_benchmarks.selected_benchmarks()


@pytest.mark.parametrize("case", ["no checkpoint", "misspelt key", "missing config", "weights not found",
                                  "output dir option", "bad value", "protocol geometry", "released offline",
                                  "another model's checkpoint"])
def test_config_and_checkpoint_checked_once_before_any_benchmark(case, tmp_path, capsys, monkeypatch,
                                                                 tiny_checkpoint, tiny_model):
    monkeypatch.setenv("BENCHMARKS", "synthetic ade150")
    out = tmp_path / "run"
    out.mkdir()
    config, extra = TINY_CONFIG, []
    if case == "another model's checkpoint":  # the L-like model's: its shapes are read, not its tensors
        torch.save({"model": tiny_model("l").state_dict()}, out / "model_final.pth")
    elif case != "no checkpoint":
        shutil.copy(tiny_checkpoint, out / "model_final.pth")
    if case == "misspelt key":
        extra = ["MODEL.SEM_SEG_HEAD.TEST_CLASS_JSONS", "x.json"]
    elif case == "missing config":
        config = str(tmp_path / "nope.yaml")
    elif case == "weights not found":
        extra = ["MODEL.WEIGHTS", str(tmp_path / "other.pth")]
    elif case == "output dir option":
        extra = ["OUTPUT_DIR", str(tmp_path / "elsewhere")]
    elif case == "bad value":
        extra = ["MODEL.PRECISION", "fp64"]
    elif case == "protocol geometry":  # only wrong with the protocol's TEST.SLIDING_WINDOW True
        extra = ["TEST.SLIDING_WINDOW_CROP", "64", "TEST.SLIDING_WINDOW_CANVAS", "107"]
    elif case == "released offline":  # checked (and downloaded) once, not by every benchmark
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
        config = os.path.join(REPO, "configs", "vitb_384.yaml")  # the release's own (its CLIP is checked first)
        extra = ["MODEL.WEIGHTS", "catseg-vitb"]
    assert evaluate_benchmarks.main([config, "1", str(out), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "[eval]" not in captured.err
    expected = {
        "no checkpoint": f"error: no checkpoint '{out / 'model_final.pth'}': train first",
        "misspelt key": "error: unknown config key 'MODEL.SEM_SEG_HEAD.TEST_CLASS_JSONS' in the command line; "
                        "did you mean 'MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON'?",
        "missing config": f"error: config file '{config}' not found",
        "weights not found": f"error: MODEL.WEIGHTS '{tmp_path / 'other.pth'}' not found",
        "output dir option": f"error: OUTPUT_DIR is eval.sh's third argument ('{out}'); remove 'OUTPUT_DIR ...'",
        "bad value": "error: MODEL.PRECISION='fp64': expected one of auto, fp32, bf16, fp16",
        "protocol geometry": "error: sliding-window crops leave the last 1 pixels of the canvas uncovered",
        "released offline": "error: catseg-vitb: not in the Hugging Face cache and HF_HUB_OFFLINE is set",
        "another model's checkpoint": f"error: MODEL.WEIGHTS: checkpoint {out / 'model_final.pth'} does not fit the "
                                      "model (its CLIP image tower has width",
    }[case]
    assert captured.err.startswith(expected), captured.err
    assert not (out / "eval").exists()  # nothing started, nothing written


def test_a_train_net_script_imports_the_modules_beside_it(tmp_path, monkeypatch):
    """eval.sh runs TRAIN_NET's registrations in its own process: a script importing a module
    of its folder (`import my_method`, as `python my_train_net.py` allows) failed there with
    ModuleNotFoundError."""
    (tmp_path / "eval_sh_sibling_method.py").write_text("REGISTERED = True\n")
    script = tmp_path / "my_train_net.py"
    script.write_text("import eval_sh_sibling_method  # noqa: F401\n")
    monkeypatch.setenv(evaluate_benchmarks.TRAIN_NET_ENV, str(script))
    before = list(sys.path)
    assert evaluate_benchmarks.train_net_command()[-1] == str(script)
    assert sys.path == before  # the folder was on sys.path for the registrations only


def test_an_odd_number_of_options_quotes_the_users_own(tmp_path, capsys):
    """The message listed eval.sh's own overrides (weights, OUTPUT_DIR, the protocol) before
    the user's, who had typed only MODEL.WEIGHTS."""
    assert evaluate_benchmarks.main([TINY_CONFIG, "1", str(tmp_path / "run"), "MODEL.WEIGHTS"]) == 2
    assert capsys.readouterr().err == ("error: config overrides must be KEY VALUE pairs, got an odd number of items: "
                                       "MODEL.WEIGHTS\n")


def test_no_data_for_any_selected_benchmark_is_an_error(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    """A wrong $DETECTRON2_DATASETS skipped every benchmark and ended with exit status 0 and an
    empty results table; it is one error line before any benchmark runs."""
    from cat_seg.data.datasets import register_all

    monkeypatch.setenv("BENCHMARKS", "ade150 voc20")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "no-datasets"))
    register_all()  # as a new eval.sh process registers them, under this root
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(tiny_checkpoint, out / "model_final.pth")
    try:
        assert evaluate_benchmarks.main([TINY_CONFIG, "1", str(out)]) == 2
    finally:
        monkeypatch.undo()
        register_all()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("error: no data for any of the 2 selected benchmark(s) (ade150 voc20; BENCHMARKS= "
                                   "selects them); the first: dataset 'ade20k_150_test_sem_seg': folder "
                                   f"{tmp_path / 'no-datasets' / 'ADEChallengeData2016'}")
    assert not (out / "eval").exists()


def test_a_previous_runs_results_are_never_reported(tmp_path, monkeypatch):
    """A benchmark process that exits 0 without writing results is failed, even where an
    earlier run left its results file."""
    from cat_seg.evaluation.benchmarks import BENCHMARKS

    bench = BENCHMARKS["synthetic"]
    stale = tmp_path / "eval" / "synthetic" / "inference" / bench.dataset / "sem_seg_results.json"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"metrics": {"mIoU": 99.9}}')
    monkeypatch.setattr(evaluate_benchmarks, "missing_data", lambda dataset: "")
    monkeypatch.setattr(evaluate_benchmarks.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, stderr=""))
    rows = evaluate_benchmarks.evaluate(TINY_CONFIG, 1, str(tmp_path), "w.pth", [], ["synthetic"])
    assert rows[0].status == "failed" and "sem_seg_results.json written" in rows[0].reason
    assert not stale.exists()


def test_an_interrupted_run_leaves_its_own_results_not_the_previous_runs(tmp_path, monkeypatch):
    """results.md was written once, at the end: a run stopped during its second benchmark left
    the previous run's table (other options, other numbers) under this run's output folder."""
    from cat_seg.evaluation.benchmarks import BENCHMARKS

    results = tmp_path / "eval" / "results.md"
    results.parent.mkdir(parents=True)
    results.write_text("Config `old.yaml`, options `TEST.SLIDING_WINDOW False`\n\n| Synthetic | 99.9 |\n")
    monkeypatch.setenv("BENCHMARKS", "synthetic voc20")
    monkeypatch.setattr(evaluate_benchmarks, "check_once", lambda *args: ("w.pth", "fp32"))
    monkeypatch.setattr(evaluate_benchmarks, "missing_benchmarks", lambda keys: {})

    def run(cmd, **kwargs):
        out = cmd[cmd.index("OUTPUT_DIR") + 1]
        if out.endswith("voc20"):
            raise KeyboardInterrupt  # Ctrl-C during the second benchmark
        written = os.path.join(out, "inference", BENCHMARKS["synthetic"].dataset, "sem_seg_results.json")
        os.makedirs(os.path.dirname(written), exist_ok=True)
        with open(written, "w") as f:
            f.write('{"metrics": {"mIoU": 12.5, "fwIoU": 20.0, "pACC": 30.0}, "num_images": 4}')
        return subprocess.CompletedProcess(cmd, 0, stderr="")

    monkeypatch.setattr(evaluate_benchmarks.subprocess, "run", run)
    with pytest.raises(KeyboardInterrupt):
        evaluate_benchmarks._main([TINY_CONFIG, "1", str(tmp_path)])
    text = results.read_text()
    assert "old.yaml" not in text and "99.9" not in text
    assert "Incomplete: 1 of 2 benchmark(s) done" in text and "| 12.5 | 20.0 | 30.0 | 4 |" in text


def test_paths_are_taken_from_the_callers_folder(tiny_benchmark, tmp_path, capsys, monkeypatch):
    """eval.sh run from another folder: a config file there is found (and one of the
    repository's by its repository path: eval.sh's checks, run in this process from that
    folder); OUTPUT_DIR is relative to that folder."""
    (tmp_path / "mine.yaml").write_text(f"_BASE_: {TINY_CONFIG}\n")
    env = run_env(tiny_benchmark)
    env["BENCHMARKS"] = "synthetic"
    proc = subprocess.run(["sh", os.path.join(REPO, "eval.sh"), "mine.yaml", "1", "run"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no checkpoint 'run/model_final.pth'"), proc.stderr
    monkeypatch.setenv("BENCHMARKS", "synthetic")
    monkeypatch.chdir(tmp_path)
    assert evaluate_benchmarks.main([os.path.relpath(TINY_CONFIG, REPO), "1", "run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no checkpoint 'run/model_final.pth'"), err
