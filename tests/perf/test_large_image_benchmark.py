"""``tools/large_image_benchmark.py`` runs its cases (one subprocess each) and prints one JSON
record per case; vocabularies beyond the small built-in list come from the packaged ADE lists."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_tiny_cases_print_records():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "tools/large_image_benchmark.py", "--config", "tiny", "--classes", "4", "200",
         "--size", "320x240", "--overlay-classes", "4"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=1800)  # hang guard only
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["classes"] for r in records] == [4, 200]
    for record in records:
        assert "error" not in record, record
        assert (record["height"], record["width"]) == (240, 320)
        assert record["segment_s"] > 0 and record["segment_peak_beyond_gb"] >= 0
    assert records[0]["overlay_size"] == [240, 320] and "overlay_s" not in records[1]


def test_bad_arguments_are_one_line_before_any_case(capsys):
    """A bad size, class count or override was found by each case's subprocess, which printed a
    traceback and an error record per case; --size's line lacked the 'error:' of the others."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("large_image_benchmark", REPO / "tools" / "large_image_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for argv, message in ((["--size", "abc"], "error: --size 'abc': expected WIDTHxHEIGHT, e.g. 6000x4000"),
                          (["--size", "0x400"], "error: --size '0x400': expected a positive width and height"),
                          (["--classes", "4", "0"], "error: --classes 0: expected a positive number of classes"),
                          (["--opts", "FOO.BAR", "1"], "error: unknown config key 'FOO.BAR' in the command line")):
        assert module.main(argv) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(message) and captured.err.count("\n") == 1 and not captured.out
