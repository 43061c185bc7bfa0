"""`pip install .` into a fresh virtual environment that already has torch and detectron2 gives
the package and working console commands.

Cheap by construction: the fresh venv sees this environment's site-packages through a
``.pth`` file (that is how "torch and detectron2 are already installed" is provided; pip and
setuptools come from there too), and pip runs with ``--no-index`` and no configuration, so every declared dependency must be resolved from what is
installed, nothing is downloaded, and a missing or misspelt dependency fails the install.
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


def test_installed_package_is_the_copy_not_the_source(installed_venv):
    venv, env = installed_venv
    out = _run([venv / "bin" / "python", "-c", "import cat_seg.cli.app as m; print(m.__file__)"],
               env=env, cwd=venv).stdout.strip()
    assert Path(out).resolve().is_relative_to(venv.resolve()), out


@pytest.mark.parametrize("command", sorted(PYPROJECT["project"]["scripts"]))
def test_console_command_runs(installed_venv, command):
    module = PYPROJECT["project"]["scripts"][command].split(":")[0]
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.is_file() or not re.search(r"^def main\(", path.read_text(), re.M):
        pytest.skip(f"{module}.main is not in this source tree yet")
    venv, env = installed_venv
    proc = _run([venv / "bin" / command, "--help"], env=env, cwd=venv)
    assert "usage:" in proc.stdout.lower()


def test_installed_package_has_every_data_file(installed_venv):
    """Every non-Python file of the source package (vocabularies, raw label ids, ...) is in
    the installed package with the same bytes, and the installed code reads them."""
    venv, env = installed_venv
    out = _run([venv / "bin" / "python", "-c", "import cat_seg, os; print(os.path.dirname(cat_seg.__file__))"],
               env=env, cwd=venv).stdout.strip()
    installed = Path(out)
    data_files = sorted(p.relative_to(REPO / "cat_seg") for p in (REPO / "cat_seg").rglob("*")
                        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts)
    assert data_files
    missing = [str(p) for p in data_files if not (installed / p).is_file()]
    assert not missing, f"not installed: {missing}"
    assert all((installed / p).read_bytes() == (REPO / "cat_seg" / p).read_bytes() for p in data_files)
    names = _run([venv / "bin" / "python", "-c",
                  "from cat_seg.api import read_vocabulary_file; print(len(read_vocabulary_file('ade847.json')))"],
                 env=env, cwd=venv).stdout.strip()
    assert names == "847"
