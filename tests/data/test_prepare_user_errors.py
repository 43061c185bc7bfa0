"""The prepare scripts' dataset root and the scripts under the official code's names: a
``--root`` that is a file or (for the scripts that read raw data) missing is one line naming
it, checked before anything else; ``prepare_ade20k_150.py --help`` says what it prepares.

The real scripts' runs are made in one process (``PREPARE_SCRIPT_RUNS``, the
``prepare_script_runs`` fixture of tests/data/conftest.py)."""
import os
import re
from pathlib import Path

import pytest

from cat_seg.data import synthetic
from cat_seg.data.catalog import ENV_VAR
from cat_seg.data.prepare import ade20k, cli, coco_stuff, voc

REPO = Path(__file__).resolve().parents[2]
RAW_DATA_SCRIPTS = {"ade20k": ade20k.main, "voc": voc.main, "coco-stuff": coco_stuff.main}
EXPECTED_FOLDER = ("expected the folder holding the downloaded datasets (--download downloads the public "
                   "ones into it)")

# runs of the real scripts, all made in one process by the prepare_script_runs fixture; "{root}"
# is each run's own folder, holding "files"
PREPARE_SCRIPT_RUNS = {
    "user errors: prepare_voc.py with a file as root": {
        "script": "datasets/prepare_voc.py", "cwd": REPO, "files": {"afile": "x"},
        "args": ["--root", "{root}/afile"]},
    "user errors: prepare_ade20k_150.py --help": {
        "script": "datasets/prepare_ade20k_150.py", "cwd": REPO, "args": ["--help"]},
}


def run_script(main, *args):
    """Exit status of a prepare script's ``main`` run as the scripts run it (:func:`cli.run`)."""
    return cli.run(main, [*args, "--no-progress"] if main is not synthetic.main else list(args))


@pytest.mark.parametrize("main", [*RAW_DATA_SCRIPTS.values(), synthetic.main], ids=[*RAW_DATA_SCRIPTS, "synthetic"])
def test_root_that_is_a_file(main, tmp_path, capsys):
    """It was "error: FILE: File exists" (synthetic) or the first missing raw file under it."""
    regular = tmp_path / "afile"
    regular.write_text("notes\n")
    assert run_script(main, "--root", str(regular)) == 2
    assert capsys.readouterr().err == f"error: --root {regular} is a file; expected the dataset folder\n"
    assert regular.read_text() == "notes\n" and sorted(tmp_path.iterdir()) == [regular]


@pytest.mark.parametrize("name", list(RAW_DATA_SCRIPTS))
def test_missing_root_of_a_script_that_reads_raw_data(name, tmp_path, capsys):
    """It was "missing id list <root>/VOCdevkit/...: download ..." as if one download were missing."""
    missing = tmp_path / "nothere"
    assert run_script(RAW_DATA_SCRIPTS[name], "--root", str(missing)) == 2
    assert capsys.readouterr().err == f"error: --root {missing} does not exist; {EXPECTED_FOLDER}\n"
    assert not missing.exists()


def test_missing_root_named_by_the_variable_or_the_default(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nothere"
    monkeypatch.setenv(ENV_VAR, str(missing))
    assert run_script(voc.main) == 2
    assert capsys.readouterr().err == f"error: ${ENV_VAR}={missing} does not exist; {EXPECTED_FOLDER}\n"
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.chdir(tmp_path)
    assert run_script(ade20k.main) == 2
    assert capsys.readouterr().err == (f"error: the dataset root {tmp_path / 'datasets'} (the default: no --root "
                                       f"given, ${ENV_VAR} not set) does not exist; {EXPECTED_FOLDER}\n")


def test_download_and_the_generator_may_create_the_root(tmp_path, capsys):
    """``--download`` writes the raw data into a missing root, the synthetic generator its data."""
    missing = tmp_path / "nothere"
    assert cli.checked_root(str(missing), create=True) == missing and not missing.exists()
    assert run_script(synthetic.main, "--root", str(missing), "--num-train", "1", "--num-val", "1",
                      "--image-size", "64") == 0
    assert (missing / "synthetic").is_dir()
    assert "written to" in capsys.readouterr().out


def test_real_script_with_a_file_as_root_is_one_line(prepare_script_runs):
    proc = prepare_script_runs["user errors: prepare_voc.py with a file as root"]
    regular = proc.root / "afile"
    assert (proc.returncode, proc.stderr) == (2, f"error: --root {regular} is a file; expected the dataset folder\n")


# ------------------------------------------------------------- the official code's script names
def official_scripts_in_datasets_folder():
    """``{script: name it passes to run_official_script}`` for the scripts in datasets/ that are one."""
    found = {}
    for path in sorted((REPO / "datasets").glob("prepare_*.py")):
        match = re.search(r'run_official_script\("([^"]+)"\)', path.read_text())
        if match:
            found[path.name] = match.group(1)
    return found


def test_every_official_name_is_a_script_that_names_itself():
    assert official_scripts_in_datasets_folder() == {name: name for name in cli.OFFICIAL_SCRIPTS}
    assert sorted(cli.OFFICIAL_SCRIPTS) == ["prepare_ade20k_150.py", "prepare_ade20k_847.py", "prepare_ade20k_full.py",
                                            "prepare_pascal_context_459.py", "prepare_pascal_context_59.py"]


@pytest.mark.parametrize("script, title, same_as", [
    ("prepare_ade20k_150.py", "ADE20K-150", "python datasets/prepare_ade20k.py --benchmark 150"),
    ("prepare_ade20k_847.py", "ADE20K-847", "python datasets/prepare_ade20k.py --benchmark 847"),
    ("prepare_ade20k_full.py", "ADE20K-847", "python datasets/prepare_ade20k.py --benchmark 847"),
    ("prepare_pascal_context_59.py", "PASCAL Context-59", "python datasets/prepare_voc.py --benchmark pc59"),
    ("prepare_pascal_context_459.py", "PASCAL Context-459", "python datasets/prepare_voc.py --benchmark pc459"),
])
def test_official_name_help_says_which_benchmark_and_offers_no_choice(script, title, same_as, capsys):
    """``prepare_ade20k_150.py --help`` offered ``--benchmark {150,847}`` (default: all of 150, 847)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run_official_script(script, ["--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"Prepare {title} labels for detectron2 (this benchmark only). The script keeps its name from the " \
           f"official CAT-Seg code; it is the same as `{same_as}`." in help_text
    assert "[--benchmark" not in help_text and "--benchmark {" not in help_text
    assert ("--val-list" in help_text) == (script == "prepare_pascal_context_459.py")


def test_official_name_refuses_another_benchmark(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run_official_script("prepare_ade20k_150.py", ["--root", str(tmp_path), "--benchmark", "847"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: unrecognized arguments: --benchmark 847 (see --help)\n"


def test_official_script_help_names_the_script(prepare_script_runs):
    proc = prepare_script_runs["user errors: prepare_ade20k_150.py --help"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: prepare_ade20k_150.py [-h] [--root ROOT]")
    assert "Prepare ADE20K-150 labels for detectron2 (this benchmark only)" in " ".join(proc.stdout.split())


def test_general_script_keeps_its_benchmark_choice(capsys):
    with pytest.raises(SystemExit):
        cli.main(["ade20k", "--help"])
    assert "--benchmark {150,847}" in capsys.readouterr().out


def test_data_one_folder_off_is_found_and_no_download_is_advised(tmp_path, capsys, monkeypatch):
    """An archive extracted one folder too deep, or a root that is the dataset's own folder,
    got "missing folder ...: download ... or rerun with --download" (a large archive the user
    has); the prepare scripts and the dataset loader now say where the data is."""
    from cat_seg.data.catalog import get_layout
    from cat_seg.data.datasets import DatasetNotFoundError
    from cat_seg.data.datasets.loader import load_sem_seg_files

    root = tmp_path / "data"
    nested = root / "ADEChallengeData2016" / "ADEChallengeData2016"
    for sub in ("annotations/validation", "images/validation"):
        (nested / sub).mkdir(parents=True)
    assert run_script(ade20k.main, "--root", str(root), "--benchmark", "150") == 2
    assert capsys.readouterr().err.strip() == (
        f"error: missing folder {root}/ADEChallengeData2016/annotations/validation; found "
        f"{nested}/annotations/validation: the data is one folder too deep (move the contents of {nested} up "
        f"into {root}/ADEChallengeData2016)")

    layout = get_layout("ade20k_150_test_sem_seg")
    with pytest.raises(DatasetNotFoundError, match=re.escape(
            f"found {nested}/images/validation: the data is one folder too deep")):
        load_sem_seg_files("ade20k_150_test_sem_seg", str(root / layout.label_dir), str(root / layout.image_dir),
                           dataset_root=str(root))

    # extracted into a folder of its own; and a root that is the dataset's folder
    other = tmp_path / "other"
    (other / "unzipped" / "ADEChallengeData2016" / "annotations" / "validation").mkdir(parents=True)
    assert run_script(ade20k.main, "--root", str(other), "--benchmark", "150") == 2
    assert capsys.readouterr().err.strip().endswith(
        f"found {other}/unzipped/ADEChallengeData2016/annotations/validation: the data is one folder too deep "
        f"(move {other}/unzipped/ADEChallengeData2016 up into {other})")
    own = root / "ADEChallengeData2016"
    for sub in ("annotations/validation", "images/validation"):
        (own / sub).mkdir(parents=True, exist_ok=True)
    (own / "ADEChallengeData2016").rename(tmp_path / "moved")  # only the folder's own contents now
    monkeypatch.setenv(ENV_VAR, str(own))
    with pytest.raises(DatasetNotFoundError, match=re.escape(
            f"; {own} is the dataset's own folder: the root is the folder that holds it, {root}")):
        load_sem_seg_files("ade20k_150_test_sem_seg", str(own / layout.label_dir), str(own / layout.image_dir))


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "datasets").glob("prepare_*.py")))
def test_ctrl_c_while_the_libraries_load_is_one_line(script, tmp_path):
    """Ctrl-C in the seconds a script spends importing torch printed an import traceback; a
    library whose import is interrupted (numpy, which cat_seg imports through torch, on
    PYTHONPATH before the installed one) stands in for it here."""
    import subprocess
    import sys

    fake = tmp_path / "numpy"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise KeyboardInterrupt\n")
    proc = subprocess.run([sys.executable, str(REPO / "datasets" / script), "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=600)  # hang guard
    assert (proc.returncode, proc.stderr) == (130, "interrupted\n")


def test_coco_stuff_in_a_folder_named_coco_is_found(tmp_path, capsys):
    """The official README's tree names COCO-Stuff's folder coco/, its loader (and the catalog)
    coco-stuff/: "coco-stuff/... not found" with a download advised, while the data was there."""
    from cat_seg.data.catalog import get_layout
    from cat_seg.data.datasets import DatasetNotFoundError
    from cat_seg.data.datasets.loader import load_sem_seg_files
    from cat_seg.data.prepare import coco_stuff

    root = tmp_path / "data"
    for sub in ("images/val2017", "annotations/val2017"):
        (root / "coco" / sub).mkdir(parents=True)
    hint = f"found {root / 'coco'}: cat-seg reads {root / 'coco-stuff'} (rename coco to coco-stuff)"
    assert run_script(coco_stuff.main, "--root", str(root), "--split", "val2017") == 2
    assert hint in capsys.readouterr().err
    layout = get_layout("coco_2017_test_stuff_all_sem_seg")
    with pytest.raises(DatasetNotFoundError, match=re.escape(hint)):
        load_sem_seg_files(layout.name, str(root / layout.label_dir), str(root / layout.image_dir),
                           dataset_root=str(root))


def test_a_download_folder_that_is_a_file_is_one_line_before_any_download(tmp_path, capsys):
    """--download-dir naming a file failed after "downloading ..." with the OS's "File exists"."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert run_script(voc.main, "--root", str(tmp_path / "data"), "--download", "--download-dir", str(afile),
                      "--benchmark", "voc") == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: --download-dir {afile}: a file, not a folder; give a folder for the archives"
