"""eval.sh on the toy benchmark prints the Markdown table; missing benchmarks are skipped, not crashed on."""
import os
import subprocess

from engine_helpers import REPO, TINY_CONFIG, run_env, run_train_net, train_opts


def test_eval_sh_prints_table_and_skips_missing_benchmarks(tiny_benchmark, tmp_path):
    out = str(tmp_path / "run")
    run_train_net(tiny_benchmark, *train_opts(tiny_benchmark, out, **{"SOLVER.MAX_ITER": 2, "DATASETS.TEST": "()"}))
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    env = run_env(tiny_benchmark)
    env["BENCHMARKS"] = "synthetic ade150"
    # the tiny model's input geometry; eval.sh itself sets each benchmark's class json and dataset
    opts = train_opts(tiny_benchmark, out)
    geometry = [x for key, value in zip(opts[::2], opts[1::2]) if key.startswith(("INPUT.", "MODEL.SEM_SEG_HEAD.F",
                                                                                  "MODEL.SEM_SEG_HEAD.W"))
                for x in (key, value)]
    proc = subprocess.run(["sh", os.path.join(REPO, "eval.sh"), TINY_CONFIG, "1", out, *geometry],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "| benchmark | mIoU | fwIoU | pACC | images | seconds |"
    toy = next(line for line in lines if line.startswith("| Synthetic toy (val) |"))
    cells = [c.strip() for c in toy.strip("|").split("|")]
    assert 0.0 <= float(cells[1]) <= 100.0 and 0.0 <= float(cells[3]) <= 100.0
    assert cells[4] == "6"  # images evaluated
    ade = next(line for line in lines if line.startswith("| ADE20K-150 |"))
    assert "skipped" in ade and "ADEChallengeData2016" in ade and "prepare_ade20k.py" in ade
    with open(os.path.join(out, "eval", "results.md")) as f:
        assert f.read().strip() == proc.stdout.strip()
