"""--resume after SIGKILL reproduces the uninterrupted run exactly."""
import json
import os
import signal
import subprocess

import torch

from engine_helpers import run_env, run_train_net, train_net_cmd, train_opts

MAX_ITER = 12
PERIOD = 4


def _final_state(output_dir):
    state = torch.load(os.path.join(output_dir, "model_final.pth"), map_location="cpu", weights_only=False)
    return state["model"], state["iteration"]


# train_net.py whose training process SIGKILLs itself right after the optimizer step of
# iteration $KILL_AFTER_ITER: the kill lands at the same point however slow the machine is
KILLED_AFTER_A_STEP = """
import os, signal, sys
from cat_seg.cli.train_net import main
from cat_seg.engine.trainer import Trainer

step = Trainer.run_step

def run_step(self):
    step(self)
    if self.iter == int(os.environ["KILL_AFTER_ITER"]):
        os.kill(os.getpid(), signal.SIGKILL)

Trainer.run_step = run_step
sys.exit(main(sys.argv[1:]))
"""


def test_kill_and_resume_matches_uninterrupted_run(tiny_benchmark, tmp_path):
    def opts(out):
        return train_opts(tiny_benchmark, out, **{"SOLVER.MAX_ITER": MAX_ITER, "SOLVER.CHECKPOINT_PERIOD": PERIOD,
                                                  "DATASETS.TEST": "()"})

    reference_dir = str(tmp_path / "uninterrupted")
    run_train_net(tiny_benchmark, *opts(reference_dir))

    killed_dir = str(tmp_path / "killed")
    # killed after iteration PERIOD + 1: past the checkpoint of iteration PERIOD - 1, with two
    # steps of training in memory only
    env = dict(run_env(tiny_benchmark), KILL_AFTER_ITER=str(PERIOD + 1))
    cmd = train_net_cmd(*opts(killed_dir))
    cmd[1:2] = ["-c", KILLED_AFTER_A_STEP]  # instead of train_net.py
    with subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        try:
            _, stderr = proc.communicate(timeout=1800)  # hang guard only
        except subprocess.TimeoutExpired:
            proc.kill()  # else leaving the with block waits for it forever
            raise
    assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
    with open(os.path.join(killed_dir, "last_checkpoint")) as f:
        assert f.read().strip() == f"model_{PERIOD - 1:07d}.pth"
    assert not os.path.exists(os.path.join(killed_dir, "model_final.pth"))
    # what a kill inside a checkpoint save leaves (the killed process's pid in the name)
    interrupted_save = os.path.join(killed_dir, f".model_{2 * PERIOD - 1:07d}.pth.{proc.pid}.1.tmp")
    with open(interrupted_save, "wb") as f:
        f.write(b"partial checkpoint")

    # what a periodic metrics write between the checkpoint and the kill leaves (detectron2 writes
    # every 20 iterations), and a line the kill cut short
    metrics = os.path.join(killed_dir, "metrics.json")
    with open(metrics, "a") as f:
        f.write(json.dumps({"iteration": PERIOD - 1, "total_loss": 1.0}) + "\n")
        f.write(json.dumps({"iteration": PERIOD, "total_loss": 2.0}) + "\n")  # the first step resumed
        f.write(json.dumps({"iteration": PERIOD + 1, "total_loss": 2.0}) + "\n")
        f.write('{"iteration": %d, "total_lo' % (PERIOD + 2))

    run_train_net(tiny_benchmark, "--resume", *opts(killed_dir))
    assert not os.path.exists(interrupted_save)
    # metrics.json: each iteration once, those before the checkpoint's step kept
    with open(metrics) as f:
        entries = [json.loads(line) for line in f]
    with open(os.path.join(reference_dir, "metrics.json")) as f:
        reference_entries = [json.loads(line) for line in f]
    assert [e["iteration"] for e in entries] == [PERIOD - 1] + [e["iteration"] for e in reference_entries]
    assert entries[0]["total_loss"] == 1.0
    reference, ref_iter = _final_state(reference_dir)
    resumed, resumed_iter = _final_state(killed_dir)
    assert ref_iter == resumed_iter == MAX_ITER - 1
    assert reference.keys() == resumed.keys()
    changed = [k for k in reference if not torch.equal(reference[k], resumed[k])]
    assert not changed, f"{len(changed)} tensors differ after resume, e.g. {changed[:3]}"
    # and training did move the weights (the comparison is not between two initialisations)
    first = torch.load(os.path.join(killed_dir, f"model_{PERIOD - 1:07d}.pth"), map_location="cpu", weights_only=False)
    assert any(not torch.equal(first["model"][k], resumed[k]) for k in resumed)


def test_resuming_a_finished_run_says_nothing_is_left_to_train(tiny_benchmark, tmp_path):
    """detectron2 resumes a checkpoint at or past SOLVER.MAX_ITER by training nothing, without
    a word, then ran the final evaluation again and logged a metrics row at MAX_ITER + 1; the
    trainer warns and does nothing."""
    out = str(tmp_path / "run")
    opts = train_opts(tiny_benchmark, out, **{"SOLVER.MAX_ITER": 1, "TEST.EVAL_PERIOD": 1})
    run_train_net(tiny_benchmark, *opts)
    with open(os.path.join(out, "metrics.json")) as f:
        rows = f.read()
    assert '"sem_seg/mIoU"' in rows  # the run's final evaluation
    # another learning rate too: detectron2 keeps the checkpoint's schedule; the trainer says so
    proc = run_train_net(tiny_benchmark, "--resume", *opts, "SOLVER.BASE_LR", "0.05")
    assert ("the checkpoint resumed from is at iteration 1 and SOLVER.MAX_ITER is 1: nothing is left to train "
            "(raise SOLVER.MAX_ITER to train longer; --eval-only evaluates the checkpoint)") in proc.stdout + proc.stderr
    assert "Start inference" not in proc.stdout + proc.stderr
    assert "--resume continues the learning-rate schedule of the checkpoint (base LR " in proc.stdout + proc.stderr
    assert "(SOLVER.BASE_LR 0.05, CLIP_MULTIPLIER, BACKBONE_MULTIPLIER) differ and are not used" in \
        proc.stdout + proc.stderr
    with open(os.path.join(out, "metrics.json")) as f:
        assert f.read() == rows
    opts = train_opts(tiny_benchmark, out, **{"SOLVER.MAX_ITER": 1, "DATASETS.TEST": "()"})
    # resuming past the end of the schedule (all LRs were 0): the logged lr is still the head's
    longer = opts[:opts.index("SOLVER.MAX_ITER") + 1] + ["3"] + opts[opts.index("SOLVER.MAX_ITER") + 2:]
    fresh_dir = str(tmp_path / "fresh")
    fresh = longer[:longer.index("OUTPUT_DIR") + 1] + [fresh_dir] + longer[longer.index("OUTPUT_DIR") + 2:]
    run_train_net(tiny_benchmark, *fresh)
    run_train_net(tiny_benchmark, "--resume", *longer)
    with open(os.path.join(out, "metrics.json")) as f:
        extended = [json.loads(line) for line in f]
    # the first run's final evaluation (logged at MAX_ITER 1, where the longer run starts) is kept
    assert [e["iteration"] for e in extended if "sem_seg/mIoU" in e] == [1]
    assert len({e["iteration"] for e in extended if "total_loss" in e}) == len([e for e in extended if "total_loss" in e])

    def logged_lrs(folder):
        with open(os.path.join(folder, "metrics.json")) as f:
            return {r["iteration"]: r["lr"] for r in map(json.loads, f) if "lr" in r}

    assert logged_lrs(out)[2] == logged_lrs(fresh_dir)[2]
    # the same checkpoint with another optimizer or other trainable parameters: one line, exit 2
    for change, problem in ((["SOLVER.OPTIMIZER", "SGD"], "its optimizer state lacks dampening, momentum of SGD"),
                            (["MODEL.SEM_SEG_HEAD.CLIP_FINETUNE", "full"], "parameter tensors in")):
        more = opts[:opts.index("SOLVER.MAX_ITER") + 1] + ["2"] + opts[opts.index("SOLVER.MAX_ITER") + 2:]
        proc = subprocess.run(train_net_cmd("--resume", *more, *change), env=run_env(tiny_benchmark),
                              capture_output=True, text=True, timeout=1800)  # hang guard only
        assert proc.returncode == 2, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: --resume: the checkpoint in {out} cannot continue with this config: ")
        assert problem in last and "MODEL.WEIGHTS <checkpoint> without --resume" in last


def test_optimizer_state_problem():
    """What torch's Optimizer.load_state_dict lets through: another optimizer type (fails at
    its first step) and other parameters of the same count (fails on the moments' shapes)."""
    from cat_seg.engine.trainer import optimizer_state_problem

    def groups(*shapes):
        return [{"params": [torch.nn.Parameter(torch.zeros(shape))]} for shape in shapes]

    adamw = torch.optim.AdamW(groups((2, 3), (4,)))
    for group in adamw.param_groups:
        group["params"][0].grad = torch.ones_like(group["params"][0])
    adamw.step()
    saved = adamw.state_dict()
    assert optimizer_state_problem(torch.optim.AdamW(groups((2, 3), (4,))), saved) is None
    assert optimizer_state_problem(torch.optim.AdamW(groups((2, 3), (4,))), None) is None
    assert optimizer_state_problem(torch.optim.SGD(groups((2, 3), (4,)), lr=0.1, momentum=0.9), saved) == (
        "its optimizer state lacks dampening, momentum of SGD (another SOLVER.OPTIMIZER)")
    assert optimizer_state_problem(torch.optim.AdamW(groups((2, 3), (4,), (5,))), saved) == (
        "it trained 2 parameter tensors in 2 groups, this config trains 3 in 3")
    assert optimizer_state_problem(torch.optim.AdamW(groups((2, 3), (5,))), saved) == (
        "its optimizer state holds a (4,) moment for a parameter of shape (5,)")


def test_a_drawn_seed_is_recorded_in_config_yaml_and_kept_on_resume(tiny_benchmark, tmp_path):
    """SEED -1 (the official configs'): the run's config.yaml recorded -1, so it could not
    repeat the run; the seed is now drawn once, given to every process and recorded, and
    --resume keeps it."""
    import yaml

    out = str(tmp_path / "run")
    opts = train_opts(tiny_benchmark, out, **{"SOLVER.MAX_ITER": 1, "DATASETS.TEST": "()", "SEED": -1})
    proc = run_train_net(tiny_benchmark, *opts)

    def recorded():
        with open(os.path.join(out, "config.yaml")) as f:
            return yaml.safe_load(f)["SEED"]

    seed = recorded()
    assert isinstance(seed, int) and seed >= 0
    assert f"SEED -1: this run's seed is {seed} (recorded in" in proc.stdout
    checkpoint = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["data_seed"]["seed"] == seed  # the data stream's seed is the recorded one
    longer = [("2" if previous == "SOLVER.MAX_ITER" else value) for previous, value in zip([None] + opts, opts)]
    run_train_net(tiny_benchmark, "--resume", *longer)
    assert recorded() == seed


def test_on_several_machines_every_process_takes_rank_0s_seed_before_config_yaml(tmp_path, monkeypatch, capsys):
    """SEED -1 on several machines (no one process starts them all): rank 0 chooses the seed
    (drawn, or on --resume the one its config.yaml records), the others take it from the
    collective; config.yaml recorded -1 there."""
    import argparse

    from detectron2.config import get_cfg
    from detectron2.utils import comm

    from cat_seg import add_cat_seg_config
    from cat_seg.cli.train_net import agree_on_seed

    gathered = []

    def fake_gather(value, rank0_value):
        gathered.append(value)
        return [rank0_value, value]

    def run(rank, rank0_value=None, resume=False, machines=2):
        cfg = add_cat_seg_config(get_cfg())
        cfg.OUTPUT_DIR, cfg.SEED = str(tmp_path), -1
        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        monkeypatch.setattr(comm, "is_main_process", lambda: rank == 0)
        monkeypatch.setattr(comm, "all_gather", lambda value: fake_gather(value, value if rank == 0 else rank0_value))
        args = argparse.Namespace(num_machines=machines, eval_only=False, resume=resume)
        agree_on_seed(args, cfg)
        return cfg.SEED

    seed = run(rank=0)
    assert 0 <= seed < 2 ** 31 - 1 and gathered == [seed]
    assert f"SEED -1: this run's seed is {seed} (recorded in" in capsys.readouterr().out
    assert run(rank=1, rank0_value=seed) == seed and gathered[-1] is None  # rank 1 chooses nothing
    assert capsys.readouterr().out == ""  # said once, by rank 0
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    (tmp_path / "config.yaml").write_text("SEED: 1234\n")
    assert run(rank=0, resume=True) == 1234
    (tmp_path / "config.yaml").write_text("SEED: -1\n")  # a run that recorded -1: left to the checkpoint
    assert run(rank=0, resume=True) == -1
    count = len(gathered)
    assert run(rank=0, machines=1) == -1 and len(gathered) == count  # one machine: chosen before the launch


RESUME_IN_PROCESS = """
import sys
from detectron2.config import get_cfg
import cat_seg.data  # registers the datasets
from cat_seg.checkpoint import CheckpointError
from cat_seg.cli.errors import merge_config
from cat_seg.config import add_cat_seg_config
from cat_seg.engine.trainer import Trainer

cfg = merge_config(add_cat_seg_config(get_cfg()), sys.argv[1], sys.argv[2:])
try:
    Trainer(cfg).resume_or_load(resume=True)
except CheckpointError as e:
    print(e)
"""


def test_the_trainer_does_not_resume_from_a_file_without_training_state(tiny_benchmark, tmp_path):
    """A last_checkpoint naming weights only (an official release, a bare state dict) was resumed
    "from iteration 1": detectron2 adds 1 to an iteration the file does not have. train_net
    refuses it before launching; the trainer itself does too (for scripts of one's own)."""
    import sys

    from engine_helpers import TINY_CONFIG

    out = tmp_path / "run"
    opts = train_opts(tiny_benchmark, str(out), **{"SOLVER.MAX_ITER": 2, "DATASETS.TEST": "()"})
    run_train_net(tiny_benchmark, *opts)  # a run, then its final checkpoint made weights-only
    final = torch.load(out / "model_final.pth", weights_only=False)
    torch.save({"model": final["model"]}, out / "model_final.pth")
    proc = subprocess.run([sys.executable, "-c", RESUME_IN_PROCESS, TINY_CONFIG, *opts], env=run_env(tiny_benchmark),
                          capture_output=True, text=True, timeout=1800)  # hang guard only
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith(
        f"--resume: the checkpoint in {out} ({out / 'model_final.pth'}) holds no training state")
