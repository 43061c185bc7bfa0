"""``python -m cat_seg.data``: prints the catalog's tables; an argument it does not take is the
one-line ``error:`` of the programs and exit status 2 (it was ignored: the tables and status 0)."""
import subprocess
import sys

import pytest

from cat_seg.data import catalog
from cat_seg.data.__main__ import main


def test_prints_the_tables(capsys):
    assert main([]) == 0
    assert capsys.readouterr().out == catalog.markdown_tables()


@pytest.mark.parametrize("argv, unknown", [(["--foo"], "--foo"), (["tables"], "tables")])
def test_an_argument_is_a_one_line_error(argv, unknown, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: unrecognized arguments: {unknown} (see --help)\n"


def test_help_says_what_it_prints(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: python -m cat_seg.data [-h]")
    assert "Print the dataset catalog's tables as Markdown" in out and "docs/datasets.md" in out


def test_module_run_with_an_unknown_option_exits_2():
    run = subprocess.run([sys.executable, "-m", "cat_seg.data", "--foo"], capture_output=True, text=True)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr.strip().splitlines()[-1] == "error: unrecognized arguments: --foo (see --help)"
    assert "Traceback" not in run.stderr
