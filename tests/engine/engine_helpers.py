"""Helpers shared by the engine tests: tiny training options and train_net.py subprocesses."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CONFIG = os.path.join(REPO, "configs", "quick_schedules", "tiny_vitb_cpu.yaml")


def train_opts(bench, output_dir, **overrides):
    """KEY VALUE options of a tiny, fast training run on ``bench``."""
    opts = {
        "OUTPUT_DIR": output_dir,
        "MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON": bench["train_json"],
        "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON": bench["val_json"],
        "INPUT.MIN_SIZE_TRAIN": "(64,)",
        "INPUT.CROP.SIZE": "(64,64)",
        "INPUT.SIZE_DIVISIBILITY": "64",
        "INPUT.MIN_SIZE_TEST": "64",
        "MODEL.SEM_SEG_HEAD.FEATURE_RESOLUTION": "[4,4]",
        "MODEL.SEM_SEG_HEAD.WINDOW_SIZES": "2",
        "SOLVER.IMS_PER_BATCH": "2",
        "SEED": "5",
    }
    opts.update({k: str(v) for k, v in overrides.items()})
    return [x for kv in opts.items() for x in kv]


def run_env(bench):
    env = dict(os.environ)
    env["DETECTRON2_DATASETS"] = bench["root"]
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("PYTHONPATH", REPO)
    return env


def train_net_cmd(*args):
    return [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", TINY_CONFIG, *args]


def run_train_net(bench, *args, timeout=1800):  # hang guard only, never a pass/fail time limit
    proc = subprocess.run(train_net_cmd(*args), env=run_env(bench), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
