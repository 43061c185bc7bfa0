"""Two CPU processes (gloo) train in lock-step, with the schedule scaled from a 1-process config
(SOLVER.REFERENCE_WORLD_SIZE); the checkpoint loads in a 1-process evaluation, whose metrics
equal those of the training's own final evaluation by the two processes."""
import json
import os
import subprocess
import sys

from engine_helpers import REPO, TINY_CONFIG, run_env, run_train_net, train_opts

STEPS = 4


def test_two_process_training_keeps_ranks_identical_and_checkpoint_evaluates(tiny_benchmark, tmp_path):
    out = str(tmp_path / "ddp")
    env = run_env(tiny_benchmark)
    env["CATSEG_REPO"] = REPO
    cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "ddp_worker.py"), "--num-gpus", "2",
           "--config-file", TINY_CONFIG,
           # written for 1 process: detectron2's auto-scaling gives 2 processes batch 2 and STEPS iterations
           *train_opts(tiny_benchmark, out, **{"SOLVER.MAX_ITER": 2 * STEPS, "SOLVER.IMS_PER_BATCH": 1,
                                               "SOLVER.REFERENCE_WORLD_SIZE": 1})]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)  # hang guard only
    assert proc.returncode == 0, proc.stderr[-3000:]
    # DistributedDataParallel is built with the buffer-sync argument this torch has: no
    # deprecation warning from each process
    assert "`broadcast_buffers` is deprecated" not in proc.stderr
    with open(os.path.join(out, "parity.json")) as f:
        parity = json.load(f)
    assert parity["world_size"] == 2
    assert parity["identical_after_step"] == [True] * STEPS

    eval_dir = str(tmp_path / "eval")
    run_train_net(tiny_benchmark, "--eval-only",
                  *train_opts(tiny_benchmark, eval_dir, **{"MODEL.WEIGHTS": os.path.join(out, "model_final.pth")}))
    with open(os.path.join(eval_dir, "inference", "synthetic_val_sem_seg", "sem_seg_results.json")) as f:
        results = json.load(f)
    assert results["num_images"] == 6
    assert 0.0 <= results["metrics"]["pACC"] <= 100.0

    assert results["throughput"]["images"] == 5  # one process: all 6 images, the first untimed

    # the training's final evaluation (detectron2's EvalHook after the last step, DATASETS.TEST
    # of the config) by the two processes, of the same weights: the same metrics
    with open(os.path.join(out, "inference", "synthetic_val_sem_seg", "sem_seg_results.json")) as f:
        results2 = json.load(f)
    assert results2["throughput"]["images"] == 4  # two processes: 3 images each, the first of each untimed
    assert results2["num_images"] == 6
    assert results2["metrics"] == results["metrics"]
    assert results2["per_class"] == results["per_class"]
