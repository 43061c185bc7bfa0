"""Checkpoints are written crash-safely: a failure while saving leaves nothing half-written."""
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch
from torch import nn

from cat_seg.checkpoint import CATSegCheckpointer


class Counter:
    def __init__(self):
        self.value = 3

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def _checkpointer(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2))
    return model, CATSegCheckpointer(model, str(tmp_path), counter=Counter())


def test_save_writes_checkpoint_and_tag_without_temporary_files(tmp_path):
    model, ckpt = _checkpointer(tmp_path)
    ckpt.save("model_0000001", iteration=1)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    data = torch.load(tmp_path / "model_0000001.pth", weights_only=False)
    assert data["iteration"] == 1 and data["counter"] == {"value": 3}
    assert torch.equal(data["model"]["0.weight"], model[0].weight)


def test_failure_while_saving_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    _, ckpt = _checkpointer(tmp_path)
    ckpt.save("model_0000001")

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000002")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


# cat_seg/utils.py loaded by its path: it needs only the standard library, and importing the
# cat_seg package would load torch and detectron2 (seconds per killed process)
KILLED_WHILE_SAVING = """
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("catseg_utils", sys.argv[3])
utils = importlib.util.module_from_spec(spec)
spec.loader.exec_module(utils)
atomic_write = utils.atomic_write

def write(f):
    f.write(b"partial checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

atomic_write(os.path.join(sys.argv[1], sys.argv[2]), write)
"""


def _killed_while_saving(folder, name):
    import cat_seg.utils

    proc = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, str(folder), name, cat_seg.utils.__file__],
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL


def test_interrupted_saves_are_removed_and_other_files_kept(tmp_path):
    _, ckpt = _checkpointer(tmp_path)
    ckpt.save("model_0000001")
    _killed_while_saving(tmp_path, "model_0000002.pth")
    _killed_while_saving(tmp_path, "last_checkpoint")
    _killed_while_saving(tmp_path, "metrics.json")  # not a checkpoint: not the checkpointer's
    leftovers = sorted(n for n in os.listdir(tmp_path) if n.endswith(".tmp"))
    assert [n.split(".")[1] for n in leftovers] == ["last_checkpoint", "metrics", "model_0000002"]
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]) as writer:
        try:  # a save of a process still running here is kept
            live = tmp_path / f".model_0000003.pth.{writer.pid}.1.tmp"
            live.write_bytes(b"being written")
            removed = ckpt.remove_interrupted_saves()
        finally:
            writer.kill()
    assert sorted(os.path.basename(p).split(".")[1] for p in removed) == ["last_checkpoint", "model_0000002"]
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["last_checkpoint", "model_0000001.pth", live.name, next(n for n in leftovers if "metrics" in n)]
    )
    # one named with this process's id (a restarted container reuses the killed one's id) is
    # stale; the writer of the other one has ended meanwhile
    own = tmp_path / f".model_0000004.pth.{os.getpid()}.1.tmp"
    own.write_bytes(b"left by a kill")
    assert sorted(ckpt.remove_interrupted_saves()) == sorted([str(live), str(own)])


@pytest.mark.parametrize("stem", ["m" * 245, "é" * 120], ids=["ascii", "two-byte"])
def test_names_near_the_file_system_limit_are_written_and_their_leftovers_found(tmp_path, stem):
    # the temporary name adds a dot, the pid and the thread id (about 30 bytes) to the final
    # name: without shortening, a final name of 250 bytes could never be written
    from cat_seg.utils import atomic_write, temporary_path

    name = f"{stem}.pth"
    assert len(os.fsencode(name)) > 240
    atomic_write(tmp_path / name, lambda f: f.write(b"complete"))
    assert os.listdir(tmp_path) == [name]
    assert (tmp_path / name).read_bytes() == b"complete"
    temp = os.path.basename(temporary_path(str(tmp_path / name)))
    assert len(os.fsencode(temp)) <= 255
    assert temp.endswith(f".pth.{os.getpid()}.{threading.get_ident()}.tmp")
    assert temp != os.path.basename(temporary_path(str(tmp_path / f"x{name[1:]}")))  # another name, another file

    _, ckpt = _checkpointer(tmp_path)
    _killed_while_saving(tmp_path, name)  # its leftover is recognised as a checkpoint's
    leftover = [n for n in os.listdir(tmp_path) if n != name]
    assert len(leftover) == 1 and leftover[0].endswith(".tmp")
    assert ckpt.remove_interrupted_saves() == [str(tmp_path / leftover[0])]
    assert os.listdir(tmp_path) == [name]
