"""The catalog: packaged vocabularies (counts, known entries), raw label ids, layouts,
benchmarks and downloads, and that every cat_seg.data module imports on its own."""
import json
import os
import pkgutil
import re
import subprocess
import sys

import pytest

import cat_seg.data
from cat_seg.data import catalog
from cat_seg.utils import read_class_json

# number of names of each vocabulary: the scored classes of its layout, except VOC-20b
# (20 VOC classes + 39 background prompts)
VOCABULARY_SIZES = {layout.class_key: layout.num_classes for layout in catalog.LAYOUTS}
VOCABULARY_SIZES["voc20b"] = 59


def test_every_vocabulary_is_packaged_with_its_size():
    assert sorted(VOCABULARY_SIZES) == catalog.vocabulary_keys()
    for key, count in VOCABULARY_SIZES.items():
        names = catalog.class_names(key)
        assert len(names) == count, key
        assert all(isinstance(n, str) and n for n in names)
        assert len(set(names)) == len(names), key


def test_vocabularies_are_package_data():
    """pyproject ships the jsons: the package-data globs match every file the catalog reads."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from fnmatch import fnmatch
    from pathlib import Path

    repo = Path(cat_seg.data.__file__).resolve().parents[2]
    package_data = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["cat_seg.data"]
    data_dir = Path(cat_seg.data.__file__).parent
    shipped = [p for p in data_dir.rglob("*.json")]
    assert len(shipped) == len(VOCABULARY_SIZES) + 1  # + raw_label_ids.json
    for path in shipped:
        rel = path.relative_to(data_dir).as_posix()
        assert any(fnmatch(rel, pattern) for pattern in package_data), rel


def test_coco_stuff_ids_and_names():
    ids = catalog.raw_label_ids("coco")
    assert ids == sorted(ids) and len(ids) == 171
    things = [i for i in ids if i <= 90]
    assert len(things) == 80 and ids[80:] == list(range(92, 183))
    names = catalog.class_names("coco")
    assert names[0] == "person" and names[80] == "banner" and names[-1] == "wood"
    assert "wall-other" in names and "floor-wood" in names
    mapping = catalog.raw_id_to_label("coco")
    assert mapping[1] == 0 and mapping[13] == 11 and mapping[182] == 170 and 12 not in mapping


def test_ade_lists():
    ade150 = catalog.class_names("ade150")
    assert ade150[7] == "bed " and ade150[0] == "wall" and ade150[-1] == "flag"
    ade847 = catalog.class_names("ade847")
    assert sum(", " in n for n in ade847) == 217
    assert ade847[:3] == ["wall", "building, edifice", "sky"]
    raw = catalog.raw_id_to_label("ade847")
    assert len(raw) == 847 and raw[2978] == 0 and raw[312] == 1


def test_pascal_context_lists():
    pc459 = catalog.class_names("pc459")
    assert pc459[0] == "accordion" and pc459[430] == "unknown"
    ids = catalog.raw_label_ids("pc59")
    assert ids == sorted(ids) and len(ids) == 59 and ids[0] == 2 and ids[-1] == 458
    # the 59 names are the 459 names of those ids, except "table" (id 397) -> "diningtable"
    pc59 = catalog.class_names("pc59")
    differ = [(pc459[i - 1], n) for i, n in zip(ids, pc59) if pc459[i - 1] != n]
    assert differ == [("table", "diningtable")]
    assert catalog.raw_id_to_label("pc59")[458] == 58
    with pytest.raises(KeyError, match="no raw label ids for 'voc20'"):
        catalog.raw_label_ids("voc20")


def test_voc20b_is_voc20_plus_39_context_prompts():
    voc20b = catalog.class_names("voc20b")
    assert voc20b[:20] == catalog.class_names("voc20")
    assert len(voc20b[20:]) == 39 and voc20b[20] == "bag" and voc20b[-1] == "wood"
    assert set(voc20b[20:]) <= set(catalog.class_names("pc59"))


def test_unknown_key_and_config_style_names():
    with pytest.raises(KeyError, match="unknown class list"):
        catalog.class_names("cityscapes")
    assert catalog.class_names("datasets/ade150.json") == catalog.class_names("ade150")
    assert catalog.class_names("coco.json") == catalog.class_names("coco")


def test_a_missing_file_of_ones_own_never_reads_a_packaged_list(tmp_path):
    """data/mine/pc59.json (a mistyped path of one's own) read the packaged 59 classes
    silently; only a bare name or datasets/<name>.json names a packaged list."""
    for path, where in ((str(tmp_path / "voc20.json"), ""),
                        ("data/mine/pc59.json", f" (relative to the working folder {os.getcwd()})")):
        with pytest.raises(FileNotFoundError, match=f"class json '{re.escape(path)}' not found{re.escape(where)}, and "
                                                    r"it names no packaged vocabulary \(only a name or "
                                                    r"datasets/<name>\.json"):
            read_class_json(path)


def test_read_class_json_resolves_official_config_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no datasets/ folder here
    assert read_class_json("datasets/pc59.json") == catalog.class_names("pc59")
    # an existing file wins over the packaged vocabulary of the same name
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "pc59.json").write_text(json.dumps(["a", "b"]))
    assert read_class_json("datasets/pc59.json") == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="datasets/cityscapes.json"):
        read_class_json("datasets/cityscapes.json")


def test_layouts_benchmarks_and_archives_agree():
    assert list(catalog.BENCHMARKS) == catalog.PAPER_BENCHMARKS + ["synthetic"]
    for key, layout in catalog.BENCHMARKS.items():
        assert layout.benchmark == key and layout.title
        assert catalog.get_layout(layout.name) is layout
    for layout in catalog.LAYOUTS:
        for archive in layout.archives:
            assert archive in catalog.ARCHIVES, (layout.name, archive)
        assert len(layout.stuff_classes()) == layout.num_classes
    # every archive is used by some layout
    used = {key for layout in catalog.LAYOUTS for key in layout.archives}
    assert used == set(catalog.ARCHIVES)
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        catalog.get_layout("nope")


DATA_MODULES = sorted(m.name for m in pkgutil.walk_packages(cat_seg.data.__path__, prefix="cat_seg.data."))

# Imports each module given on the command line in a process of its own that has imported no
# cat_seg module before it. The third-party libraries (a few seconds of start-up, none of them
# imports cat_seg) are imported once and shared by forking; without fork (not Linux), each
# module gets a new interpreter. Prints one "<module> <exit status>" line per module, after its
# traceback if it failed.
IMPORT_EACH_ON_ITS_OWN = r"""
import importlib, os, subprocess, sys, traceback
modules = sys.argv[1:]
if sys.platform.startswith("linux"):
    import numpy, torch, torchvision, open_clip, detectron2.data, detectron2.engine, detectron2.evaluation
    for module in modules:
        pid = os.fork()
        if pid == 0:
            try:
                importlib.import_module(module)
                status = 0
            except BaseException:
                traceback.print_exc(file=sys.stdout)
                status = 1
            sys.stdout.flush()
            os._exit(status)
        print(module, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
else:
    for module in modules:
        proc = subprocess.run([sys.executable, "-c", "import " + module], capture_output=True, text=True)
        print(proc.stderr, end="")
        print(module, proc.returncode, flush=True)
"""


@pytest.fixture(scope="module")
def import_results():
    """module -> (exit status, output before its status line) of IMPORT_EACH_ON_ITS_OWN."""
    proc = subprocess.run([sys.executable, "-c", IMPORT_EACH_ON_ITS_OWN, *DATA_MODULES, "cat_seg.data.no_such"],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results, output = {}, []
    for line in proc.stdout.splitlines():
        name, _, status = line.rpartition(" ")
        if name in DATA_MODULES or name == "cat_seg.data.no_such":
            results[name] = (int(status), "\n".join(output))
            output = []
        else:
            output.append(line)
    return results


def test_a_module_that_fails_to_import_is_seen(import_results):
    status, output = import_results["cat_seg.data.no_such"]
    assert status == 1 and "No module named 'cat_seg.data.no_such'" in output


@pytest.mark.parametrize("module", DATA_MODULES)
def test_module_imports_on_its_own(module, import_results):
    """No import cycle: each module of cat_seg.data imports first in a process that has imported
    no cat_seg module."""
    status, output = import_results[module]
    assert status == 0, output[-2000:]


def test_docs_tables_are_current():
    """docs/datasets.md holds the output of ``python -m cat_seg.data``."""
    from pathlib import Path

    docs = (Path(cat_seg.data.__file__).resolve().parents[2] / "docs" / "datasets.md").read_text()
    begin, end = "<!-- catalog tables: begin -->\n", "<!-- catalog tables: end -->"
    assert docs[docs.index(begin) + len(begin):docs.index(end)] == catalog.markdown_tables()


def test_the_tables_command_prints_them_without_warnings():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "cat_seg.data"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout == catalog.markdown_tables()
    assert "Warning" not in run.stderr, run.stderr  # running the catalog module itself got a RuntimeWarning


@pytest.mark.parametrize("layout", catalog.LAYOUTS, ids=lambda layout: layout.name)
def test_each_layout_names_a_preparation_that_runs_in_a_checkout_and_installed(layout, monkeypatch, tmp_path, capsys):
    """The command a missing-data message names: the checkout's script from a checkout, the
    installed ``cat-seg-prepare`` elsewhere; both parse their arguments (``--help`` added)."""
    from pathlib import Path

    from cat_seg.data.prepare.cli import main

    repo = Path(cat_seg.data.__file__).resolve().parents[2]
    monkeypatch.chdir(repo)
    in_checkout = layout.prepare_command.split()
    assert in_checkout[0] == "python" and in_checkout[1].startswith("datasets/prepare_")
    assert (repo / in_checkout[1]).is_file()
    monkeypatch.chdir(tmp_path)
    installed = layout.prepare_command.split()
    assert installed[0] == "cat-seg-prepare" and installed[2:] == in_checkout[2:]
    with pytest.raises(SystemExit) as exit_info:
        main(installed[1:] + ["--help"])
    assert exit_info.value.code == 0
    assert "--root" in capsys.readouterr().out
