"""Prepare scripts: a bad argument or an output folder that cannot be written is one
``error:`` line and exit status 2 (missing inputs are covered in tests/data)."""
import subprocess
import sys
from pathlib import Path

import pytest

from cat_seg.data import synthetic
from cat_seg.data.prepare import ade20k, cli

REPO = Path(__file__).resolve().parents[2]


def test_root_under_a_regular_file_is_one_line(tmp_path, capsys):
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    assert cli.run(synthetic.main, ["--root", str(regular), "--num-train", "2", "--num-val", "1"]) == 2
    assert capsys.readouterr().err == f"error: --root {regular} is a file; expected the dataset folder\n"


@pytest.mark.parametrize("workers", ["0", "-2", "many"])
def test_bad_workers_value_is_rejected_by_the_parser(workers, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(ade20k.main, ["--root", str(tmp_path), "--workers", workers])
    assert exit_info.value.code == 2
    assert f"argument --workers: {workers!r}: expected a positive integer" in capsys.readouterr().err


def test_internal_os_error_without_a_file_keeps_its_traceback():
    def broken(argv):
        raise OSError("no file involved")

    with pytest.raises(OSError, match="no file involved"):
        cli.run(broken, [])


def test_synthetic_script_without_sys_path_edit_reports_one_line(tmp_path):
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    proc = subprocess.run([sys.executable, "datasets/prepare_synthetic.py", "--root", str(regular)], cwd=REPO,
                          capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          timeout=1800)  # hang guard only
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_cat_seg_prepare_dispatches_to_each_dataset(capsys):
    """``cat-seg-prepare DATASET ...`` runs DATASET's script; no or an unknown DATASET is a user error."""
    from cat_seg.data.prepare.cli import PROGRAMS, main

    assert main([]) == 2
    assert "usage: cat-seg-prepare DATASET" in capsys.readouterr().err
    assert main(["nope"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: unknown dataset 'nope': expected one of coco-stuff, ade20k, voc, synthetic")
    for name in PROGRAMS:
        with pytest.raises(SystemExit) as exit_info:  # argparse --help of that dataset's script
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "--root" in capsys.readouterr().out
