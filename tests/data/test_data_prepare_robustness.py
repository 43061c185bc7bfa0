"""Idempotence, --force, worker processes, crash safety (SIGKILL mid-run) and the real CLI.

The real scripts' runs that only check what they print and return are made in one process
(``PREPARE_SCRIPT_RUNS``, the ``prepare_script_runs`` fixture of tests/data/conftest.py); the
killed run is a process of its own."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cat_seg.data.datasets import PrepareError
from cat_seg.data.prepare import ade20k
from cat_seg.data.prepare.io import LOCK_FILE, exclusive_folders

REPO = Path(__file__).resolve().parents[2]
N = 40
OUT = "ADEChallengeData2016/annotations_detectron2/validation"

# the official code's script names, with the raw file each asks for first on an empty root
OFFICIAL_NAMES = [
    ("prepare_ade20k_150.py", "ADEChallengeData2016/annotations/validation"),
    ("prepare_ade20k_full.py", "ADE20K_2021_17_01/index_ade20k.pkl"),
    ("prepare_ade20k_847.py", "ADE20K_2021_17_01/index_ade20k.pkl"),
    ("prepare_pascal_context_59.py", "VOCdevkit/VOC2010/trainval_merged.json"),
    ("prepare_pascal_context_459.py", "VOCdevkit/VOC2010/pascalcontext_val.txt"),
]

# runs of the real scripts, all made in one process by the prepare_script_runs fixture; "{root}"
# is each run's own empty folder
PREPARE_SCRIPT_RUNS = {
    "robustness: prepare_voc.py without raw data": {
        "script": "datasets/prepare_voc.py", "cwd": REPO,
        "args": ["--root", "{root}", "--benchmark", "voc", "--no-progress"]},
    **{f"robustness: {script} on an empty root": {"script": REPO / "datasets" / script, "args": ["--root", "{root}"]}
       for script, _ in OFFICIAL_NAMES},
}


def make_raw(raw, root: Path):
    rng = np.random.default_rng(0)
    raw.make_ade150(root, {f"ADE_val_{i:08d}": rng.integers(0, 151, (24, 32)) for i in range(N)})


def snapshot(folder: Path):
    """{name: (bytes, mtime_ns)} of every file, hidden (temporary, lock) ones included."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def prepare(root, *args):
    return ade20k.main(["--root", str(root), "--benchmark", "150", "--no-progress", *args])


def test_second_run_writes_nothing_and_force_redoes(tmp_path, raw, capsys):
    make_raw(raw, tmp_path)
    assert prepare(tmp_path, "--workers", "1") == 0
    assert f"{N} written, 0 skipped" in capsys.readouterr().out
    first = snapshot(tmp_path / OUT)
    assert len(first) == N
    time.sleep(0.01)
    assert prepare(tmp_path, "--workers", "1") == 0
    assert f"0 written, {N} skipped" in capsys.readouterr().out
    assert snapshot(tmp_path / OUT) == first  # same bytes, untouched files
    (tmp_path / OUT / "ADE_val_00000003.png").unlink()
    assert prepare(tmp_path, "--workers", "1") == 0
    assert f"1 written, {N - 1} skipped" in capsys.readouterr().out
    assert prepare(tmp_path, "--workers", "1", "--force") == 0
    assert f"{N} written, 0 skipped" in capsys.readouterr().out
    forced = snapshot(tmp_path / OUT)
    assert {k: v[0] for k, v in forced.items()} == {k: v[0] for k, v in first.items()}
    assert all(forced[k][1] != first[k][1] for k in first if k != "ADE_val_00000003.png")
    # a label no input of this run makes (an earlier run's, with other inputs) is pointed out
    (tmp_path / OUT / "ADE_val_99999999.png").write_bytes(forced["ADE_val_00000001.png"][0])
    assert prepare(tmp_path, "--workers", "1") == 0
    assert (f"note: 1 file(s) in {tmp_path / OUT} are not made from these inputs (left by an earlier run with other "
            "inputs?), e.g. ADE_val_99999999.png") in capsys.readouterr().out


def test_worker_processes_give_identical_outputs(tmp_path, raw, capsys):
    make_raw(raw, tmp_path / "a")
    make_raw(raw, tmp_path / "b")
    assert prepare(tmp_path / "a", "--workers", "1") == 0
    assert prepare(tmp_path / "b", "--workers", "2") == 0
    out = capsys.readouterr().out
    assert "150/150 classes present" in out and f"{N} written" in out
    a, b = snapshot(tmp_path / "a" / OUT), snapshot(tmp_path / "b" / OUT)
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}


# Runs the real script's code with every output write interrupted half-way (patched into the
# one writer the preparation uses): half the bytes are written and flushed to the temporary
# file, then, once 6 outputs are finished under their final names, the writer SIGKILLs its
# whole process group (the script and its worker processes; the test runs it in a session of
# its own) right there, mid-write, whatever the machine's load. A file written in place would
# then be left truncated under its final name.
KILLED_AFTER = 6
KILLING_DRIVER = """
import multiprocessing, os, signal, sys
# the workers must inherit the patch below: forked, not started afresh (spawn, forkserver:
# the default of Python 3.14 on Linux and of macOS re-import the module unpatched)
multiprocessing.set_start_method("fork")
from cat_seg.data.prepare import io as prepare_io
atomic_write = prepare_io.atomic_write
def killing_atomic_write(path, write, mode="wb", durable=True):
    def half_then_kill(f):
        data = []
        class Half:
            def write(self, b):
                data.append(bytes(b))
        write(Half())
        blob = b"".join(data)
        f.write(blob[: len(blob) // 2])
        f.flush()
        finished = sum(not name.startswith(".") for name in os.listdir(os.path.dirname(os.path.abspath(path))))
        if finished >= %d:
            os.killpg(0, signal.SIGKILL)  # the script and its workers, mid-write
        f.write(blob[len(blob) // 2:])
    return atomic_write(path, half_then_kill, mode, durable)
prepare_io.atomic_write = killing_atomic_write  # the writer every output goes through
from cat_seg.data.prepare import ade20k, cli
sys.exit(cli.run(ade20k.main, sys.argv[1:]))
""" % KILLED_AFTER


def test_killed_run_leaves_no_partial_file_and_rerun_completes(tmp_path, raw):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    make_raw(raw, clean)
    make_raw(raw, killed)
    assert prepare(clean, "--workers", "1") == 0
    reference = {k: v[0] for k, v in snapshot(clean / OUT).items()}

    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(  # a session of its own: the kill of its process group spares pytest
            [sys.executable, "-c", KILLING_DRIVER, "--root", str(killed), "--benchmark", "150",
             "--workers", "2", "--no-progress"],
            cwd=raw.REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        proc.wait(timeout=1800)  # hang guard only
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"not killed mid-run: {log.read_text()[-2000:]}"

    out = killed / OUT
    after_kill = {k: v[0] for k, v in snapshot(out).items()}
    finals = {k: v for k, v in after_kill.items() if not k.startswith(".")}
    temporary = {k for k in after_kill if k.endswith(".tmp")}
    assert set(after_kill) - set(finals) <= {LOCK_FILE} | temporary
    assert temporary  # the killing write's half-written file, under its temporary name
    assert KILLED_AFTER <= len(finals) < N
    for name, data in finals.items():  # every file under a final name is complete
        assert data == reference[name], name

    assert prepare(killed, "--workers", "1") == 0
    assert {k: v[0] for k, v in snapshot(out).items()} == reference  # no temp files left


# Ctrl-C as a terminal sends it: SIGINT to the process group (the script and its workers),
# once 3 outputs are finished
INTERRUPTING_DRIVER = """
import multiprocessing, os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background test run may ignore it
multiprocessing.set_start_method("fork")  # the workers inherit the patch (see KILLING_DRIVER)
from cat_seg.data.prepare import io as prepare_io
atomic_write = prepare_io.atomic_write
def interrupting_atomic_write(path, write, mode="wb", durable=True):
    result = atomic_write(path, write, mode, durable)
    folder = os.path.dirname(os.path.abspath(path))
    if sum(not name.startswith(".") for name in os.listdir(folder)) >= 3:
        try:  # once, by the first worker that gets here (two may finish their 3rd and 4th together)
            os.close(os.open(os.path.join(os.path.dirname(folder), "interrupted"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return result
        os.killpg(0, signal.SIGINT)
    return result
prepare_io.atomic_write = interrupting_atomic_write
from cat_seg.data.prepare import ade20k, cli
sys.exit(cli.run(ade20k.main, sys.argv[1:]))
"""


def test_ctrl_c_with_workers_is_one_line_without_worker_tracebacks(tmp_path, raw):
    make_raw(raw, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", INTERRUPTING_DRIVER, "--root", str(tmp_path), "--benchmark", "150",
         "--workers", "2", "--no-progress"],
        cwd=raw.REPO, start_new_session=True, capture_output=True, text=True, timeout=1800)  # hang guard only
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert proc.stderr == "interrupted: finished files are kept; rerun the same command to resume\n"
    # a worker stopped mid-write may leave its temporary file (never a partial file under a
    # final name): the rerun removes it and completes
    assert prepare(tmp_path, "--workers", "1") == 0
    assert not [name for name in os.listdir(tmp_path / OUT) if name.endswith(".tmp")]


def test_real_script_user_error_exits_2_without_traceback(prepare_script_runs):
    result = prepare_script_runs["robustness: prepare_voc.py without raw data"]
    assert result.returncode == 2
    assert result.stderr.startswith("error: missing id list ")
    assert "val.txt" in result.stderr and "Traceback" not in result.stderr


def test_concurrent_run_on_the_same_folder_is_refused(tmp_path, raw):
    make_raw(raw, tmp_path)
    out = tmp_path / OUT
    out.mkdir(parents=True)
    with exclusive_folders([out]):
        with pytest.raises(PrepareError, match="another preparation is writing into"):
            prepare(tmp_path, "--workers", "1")
    assert not (out / LOCK_FILE).exists()
    assert prepare(tmp_path, "--workers", "1") == 0


@pytest.mark.parametrize("script, needs", OFFICIAL_NAMES)
def test_the_official_script_names_prepare_their_benchmark(script, needs, prepare_script_runs):
    """datasets/prepare_ade20k_150.py etc. (the official code's names) run our preparation of
    that benchmark: on an empty root they ask for its own raw files."""
    proc = prepare_script_runs[f"robustness: {script} on an empty root"]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: missing ") and str(proc.root / needs) in proc.stderr
