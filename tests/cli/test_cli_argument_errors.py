"""Every program's argument errors (unknown option, bad choice, bad number, missing argument)
are one ``error: ... (see --help)`` line on stderr and exit status 2, without argparse's usage
block; ``--help`` still prints the usage."""
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# (importable main, arguments, what the error line must say)
CASES = [
    ("cat_seg.cli.benchmark:main", ["--mode", "fast"], "argument --mode: invalid choice: 'fast'"),
    ("cat_seg.cli.demo:main", ["--input", "a.jpg", "--vocab", "cat", "--bogus"], "unrecognized arguments: --bogus"),
    ("cat_seg.cli.app:main", ["--port", "many"], "argument --port: invalid int value: 'many'"),
    ("cat_seg.cli.train_net:main", ["--num-gpus", "x"], "argument --num-gpus: invalid int value: 'x'"),
    ("cat_seg.cli.convert_official_checkpoint:main", [], "the following arguments are required: IN.pth, OUT.pth"),
    ("cat_seg.data.prepare.cli:main", ["ade20k", "--workers", "0"], "argument --workers: '0': expected a positive"),
    ("cat_seg.data.synthetic:main", ["--num-train", "x"], "argument --num-train: invalid int value: 'x'"),
    ("tools/run_toy.py:main", ["--max-iter", "x"], "argument --max-iter: 'x': expected an integer >= 1"),
    ("tools/run_toy.py:main", ["--clip-steps", "0"], "argument --clip-steps: '0': expected an integer >= 1"),
    ("tools/run_toy.py:main", ["--overlays", "-1"], "argument --overlays: '-1': expected an integer >= 0"),
    ("tools/large_image_benchmark.py:main", ["--config", "huge"], "argument --config: invalid choice: 'huge'"),
]


def _load(target: str):
    module_name, function = target.split(":")
    if module_name.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(module_name).stem, REPO / module_name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    return getattr(module, function)


@pytest.mark.parametrize("target,argv,expected", CASES, ids=[case[0].split(":")[0] for case in CASES])
def test_argument_error_is_one_line(target, argv, expected, capsys):
    main = _load(target)
    try:
        status = main(argv)  # the demo returns its exit status
    except SystemExit as exit_info:
        status = exit_info.code
    assert status == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {expected}"), captured.err
    assert captured.err.rstrip("\n").endswith("(see --help)") and captured.err.count("\n") == 1, captured.err
    assert "usage:" not in captured.err and captured.out == ""


def test_help_still_prints_the_usage(capsys):
    from cat_seg.cli.benchmark import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: cat-seg-benchmark")


def test_parser_built_elsewhere_gets_the_one_line_errors(capsys):
    import argparse

    from cat_seg.cli.errors import one_line_argument_errors

    parser = one_line_argument_errors(argparse.ArgumentParser(prog="other"))
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--n", "two"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: argument --n: invalid int value: 'two' (see --help)\n"
