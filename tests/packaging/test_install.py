"""`pip install .` into a fresh virtual environment that already has torch and detectron2 gives
the package and working console commands.

Cheap by construction: the fresh venv sees this environment's site-packages through a
``.pth`` file (that is how "torch and detectron2 are already installed" is provided; pip and
setuptools come from there too), and pip runs with ``--no-index`` and no configuration, so every declared dependency must be resolved from what is
installed, nothing is downloaded, and a missing or misspelt dependency fails the install.

What the installed package does is run in ONE process of the venv (``installed_runs``: every
console command's launcher with ``--help``, and the package facts the tests check), each run as
in a process of its own (tests/script_driver.py), instead of one process per command that
imports torch, detectron2 and cat_seg; one launcher is also started as a process of its own.
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 1800
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

pytestmark = pytest.mark.packaging


def _run(cmd, **kwargs):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=HANG_GUARD_S, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _requirement_name(line: str) -> str:
    return re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_requirements_txt_matches_pyproject():
    """requirements.txt (read by scripts/setup_env.sh) lists exactly the declared runtime
    dependencies; pytest is a test extra, not a runtime requirement."""
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    listed = sorted(_requirement_name(line) for line in lines if line)
    declared = sorted(_requirement_name(d) for d in PYPROJECT["project"]["dependencies"])
    assert listed == declared
    assert "pytest" not in declared
    assert "pytest" in {_requirement_name(d) for d in PYPROJECT["project"]["optional-dependencies"]["test"]}
    assert "gradio" in {_requirement_name(d) for d in PYPROJECT["project"]["optional-dependencies"]["app"]}


def test_console_commands_point_at_main_functions():
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts["cat-seg-app"] == "cat_seg.cli.app:main"
    for target in scripts.values():
        module, function = target.split(":")
        assert function == "main" and module.startswith("cat_seg.")


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory):
    """A fresh venv seeing this environment's packages, with cat-seg[app] installed from a copy
    of the source tree (not editable: the installed package must stand on its own)."""
    root = tmp_path_factory.mktemp("pkg")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "cat_seg", source / "cat_seg", ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    # no pip/setuptools of its own: this environment's (current) ones are used through the .pth
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # torch, detectron2 and the declared dependencies: visible from this environment
    shared = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "shared_site_packages.pth").write_text("\n".join(sorted(shared)) + "\n")
    # no pip configuration (no find-links or extra indexes): resolve from what is installed only
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_CONFIG_FILE=os.devnull)
    for key in [k for k in env if k.startswith("PIP_") and k not in ("PIP_DISABLE_PIP_VERSION_CHECK", "PIP_CONFIG_FILE")]:
        env.pop(key)
    env.pop("PYTHONPATH", None)
    _run([python, "-m", "pip", "install", "--no-index", "--no-build-isolation", "-q", f"{source}[app]"],
         env=env, cwd=root)
    return venv, env


# code run in the installed venv (each as `python -c CODE` in the venv's folder would run it)
PACKAGE_FACTS = {
    "cat_seg.cli.app file": "import cat_seg.cli.app as m; print(m.__file__)",
    "package folder": "import cat_seg, os; print(os.path.dirname(cat_seg.__file__))",
    "ade847 vocabulary size": "from cat_seg.api import read_vocabulary_file; print(len(read_vocabulary_file('ade847.json')))",
}
# the launcher started as a process of its own
OWN_PROCESS_COMMAND = "cat-seg-prepare"


@pytest.fixture(scope="module")
def installed_runs(installed_venv, run_scripts_in_one_process):
    """``{run id: record}`` (``returncode``, ``stdout``, ``stderr``) of the :data:`PACKAGE_FACTS`
    code and of every console command's launcher ``venv/bin/COMMAND --help`` (id: the command),
    all run in one process of the installed venv's python, each as in a process of its own."""
    venv, env = installed_venv
    runs = [{"id": key, "code": code, "cwd": str(venv)} for key, code in PACKAGE_FACTS.items()]
    runs += [{"id": command, "script": str(venv / "bin" / command), "argv": ["--help"], "cwd": str(venv)}
             for command in sorted(PYPROJECT["project"]["scripts"])]
    return run_scripts_in_one_process(runs, preload="import cat_seg", python=venv / "bin" / "python", env=env,
                                      cwd=venv, timeout=HANG_GUARD_S)


def _ok(record, what):
    """``record``'s stdout, after checking that it exited with status 0 (as :func:`_run` does)."""
    assert record.returncode == 0, f"{what} failed ({record.returncode}):\n{record.stdout[-3000:]}\n{record.stderr[-3000:]}"
    return record.stdout


def test_installed_package_is_the_copy_not_the_source(installed_venv, installed_runs):
    venv, _ = installed_venv
    out = _ok(installed_runs["cat_seg.cli.app file"], PACKAGE_FACTS["cat_seg.cli.app file"]).strip()
    assert Path(out).resolve().is_relative_to(venv.resolve()), out


def _skip_unless_main_in_source(command):
    module = PYPROJECT["project"]["scripts"][command].split(":")[0]
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.is_file() or not re.search(r"^def main\(", path.read_text(), re.M):
        pytest.skip(f"{module}.main is not in this source tree yet")


@pytest.mark.parametrize("command", sorted(PYPROJECT["project"]["scripts"]))
def test_console_command_runs(installed_runs, command):
    _skip_unless_main_in_source(command)
    stdout = _ok(installed_runs[command], f"venv/bin/{command} --help")
    assert "usage:" in stdout.lower()


def test_console_command_launcher_as_its_own_process(installed_venv, installed_runs):
    """A generated launcher started as a process of its own (its shebang names the venv's
    python) runs its command, and prints the help it printed in the one-process run."""
    _skip_unless_main_in_source(OWN_PROCESS_COMMAND)
    venv, env = installed_venv
    proc = _run([venv / "bin" / OWN_PROCESS_COMMAND, "--help"], env=env, cwd=venv)
    assert "usage:" in proc.stdout.lower()
    assert proc.stdout == installed_runs[OWN_PROCESS_COMMAND].stdout


def test_installed_package_has_every_data_file(installed_runs):
    """Every non-Python file of the source package (vocabularies, raw label ids, ...) is in
    the installed package with the same bytes, and the installed code reads them."""
    installed = Path(_ok(installed_runs["package folder"], PACKAGE_FACTS["package folder"]).strip())
    data_files = sorted(p.relative_to(REPO / "cat_seg") for p in (REPO / "cat_seg").rglob("*")
                        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts)
    assert data_files
    missing = [str(p) for p in data_files if not (installed / p).is_file()]
    assert not missing, f"not installed: {missing}"
    assert all((installed / p).read_bytes() == (REPO / "cat_seg" / p).read_bytes() for p in data_files)
    names = _ok(installed_runs["ade847 vocabulary size"], PACKAGE_FACTS["ade847 vocabulary size"]).strip()
    assert names == "847"


@pytest.mark.parametrize("script", ["demo/demo.py", "datasets/prepare_voc.py", "tools/evaluate_benchmarks.py"])
def test_a_checkouts_scripts_run_the_checkouts_code(tmp_path, script):
    """The scripts in demo/, datasets/ and tools/ stopped with "No module named 'cat_seg'" in a
    checkout that was not pip-installed (only train_net.py, in the root, found it), and ran
    another copy's code where one was installed. A cat_seg earlier on the path than the
    installed one (PYTHONPATH) stands in for that other copy: the checkout's comes first."""
    other = tmp_path / "other" / "cat_seg"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("raise ImportError('another copy of cat_seg was imported')\n")
    env = dict(os.environ, PYTHONPATH=str(other.parent))
    proc = subprocess.run([sys.executable, str(REPO / script), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]
