"""User errors in files: one line naming the file and the key (or option) that gave it, and no
file left behind.

- class-name jsons (``read_class_json``) and the demo's vocabulary files: text that is not
  UTF-8, a byte-order mark, JSON errors;
- files written through ``atomic_write`` (``cat-seg-convert``, the prepare scripts) into a folder
  that cannot be written: the message names the file asked for, not the temporary file;
- config files and ``KEY VALUE`` overrides (``merge_config``): a section given a value, a value
  of the wrong type (and a whole number for a float key, which is accepted), a ``_BASE_`` that
  names no file or leads back to itself.
"""
import errno
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg

from cat_seg.api import CATSegError, read_vocabulary_file
from cat_seg.cli import convert_official_checkpoint, train_net
from cat_seg.cli.errors import UserError, merge_config
from cat_seg.config import add_cat_seg_config
from cat_seg.data import synthetic
from cat_seg.data.prepare import cli as prepare_cli
from cat_seg.utils import WriteError, atomic_write, read_class_json

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs/quick_schedules/tiny_vitb_cpu.yaml")
NOT_UTF8 = b"\xff\xfe[\x00]\x00"  # UTF-16 with its byte-order mark, as Windows Notepad may save it


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


# ----------------------------------------------------------------------------- class jsons
def test_class_json_that_is_not_utf8_names_key_and_file(tmp_path):
    path = tmp_path / "binary.json"
    path.write_bytes(NOT_UTF8)
    with pytest.raises(ValueError) as info:
        read_class_json(str(path), "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON")
    assert str(info.value) == (f"MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON '{path}': not UTF-8 text (invalid start byte at "
                               f"byte 0); expected a UTF-8 file of class names")


def test_class_json_with_a_byte_order_mark_is_read(tmp_path):
    """Windows editors write a UTF-8 byte-order mark; json.load refused it ("Unexpected UTF-8 BOM")."""
    path = tmp_path / "bom.json"
    path.write_bytes(json.dumps(["cat", "dog"]).encode("utf-8-sig"))
    assert read_class_json(str(path)) == ["cat", "dog"]


@pytest.mark.parametrize("text, problem", [
    ("[\"cat\", ", "not valid JSON (Expecting value: line 1 column 9 (char 8))"),
    ("{\"classes\": [\"cat\"]}", "expected a non-empty JSON array of non-empty class-name strings, got a JSON object"),
    ("[\"cat\", \" \"]", "expected a non-empty JSON array of non-empty class-name strings, got ' ' at position 1"),
    ("[]", "expected a non-empty JSON array of non-empty class-name strings, got an empty array"),
    ("\"cat\"", "expected a non-empty JSON array of non-empty class-name strings, got a JSON string"),
])
def test_class_json_errors_name_key_and_file(tmp_path, text, problem):
    path = tmp_path / "classes.json"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        read_class_json(str(path), "--class-json")
    assert str(info.value) == f"--class-json '{path}': {problem}"


def test_train_net_class_json_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "binary.json"
    path.write_bytes(NOT_UTF8)
    assert train_net.main(["--config-file", TINY, "--check-only", "OUTPUT_DIR", str(tmp_path / "o"),
                           "MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON", str(path)]) == 2
    assert one_error_line(capsys) == (f"error: MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON '{path}': not UTF-8 text "
                                      f"(invalid start byte at byte 0); expected a UTF-8 file of class names")
    assert not (tmp_path / "o").exists()


def test_demo_vocabulary_file_reads_like_the_class_jsons(tmp_path):
    """read_vocabulary_file (the demo's --vocab-file) reads the text as read_class_json does."""
    binary = tmp_path / "binary.txt"
    binary.write_bytes(NOT_UTF8)
    with pytest.raises(CATSegError) as info:
        read_vocabulary_file(str(binary))
    assert str(info.value) == (f"vocabulary file '{binary}': not UTF-8 text (invalid start byte at byte 0); "
                               f"expected a UTF-8 file of class names")
    broken = tmp_path / "broken.json"
    broken.write_text("[\"cat\",")
    with pytest.raises(CATSegError, match=r"^vocabulary file '.*broken\.json': not valid JSON \(Expecting value"):
        read_vocabulary_file(str(broken))
    null = tmp_path / "null.json"  # JSON, but no array: not read as a one-line text of classes
    null.write_text("null")
    with pytest.raises(CATSegError) as info:
        read_vocabulary_file(str(null))
    assert str(info.value) == f"vocabulary file '{null}': expected a JSON array of class-name strings"
    mixed = tmp_path / "mixed.json"  # the entry that is no string is named
    mixed.write_text('["red striped", 3]')
    with pytest.raises(CATSegError) as info:
        read_vocabulary_file(str(mixed))
    assert str(info.value) == f"class names must be strings, got int 3 at position 1 of file {mixed}"
    from cat_seg.api import parse_vocabulary

    with pytest.raises(CATSegError) as info:
        parse_vocabulary(["sky", None])
    assert str(info.value) == "class names must be strings, got NoneType None at position 1 of the class list"


# ----------------------------------------------------------------------------- atomic writes
@pytest.fixture
def read_only_folder(tmp_path, monkeypatch):
    """A folder in which creating a file fails with EACCES, as in a read-only folder. Tests may
    run as root, whom chmod does not stop, so the OS's answer is simulated: ``os.open`` (which
    ``atomic_write`` creates its temporary file with) refuses to create files there."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and os.path.dirname(os.path.abspath(path)) == str(folder):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    return folder


def test_atomic_write_in_a_read_only_folder_names_the_file(read_only_folder):
    target = read_only_folder / "a.pth"
    with pytest.raises(WriteError) as info:
        atomic_write(target, lambda f: f.write(b"x"))
    assert str(info.value) == f"cannot write {target}: Permission denied"
    assert info.value.errno == errno.EACCES and info.value.filename == str(target)
    assert list(read_only_folder.iterdir()) == []


def test_atomic_write_that_fails_while_writing_names_the_file_and_leaves_the_old_one(tmp_path):
    """A full disk: the OS error of the write names no file at all."""
    target = tmp_path / "results.md"
    target.write_text("previous")

    def fill_the_disk(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError) as info:
        atomic_write(target, fill_the_disk)
    assert str(info.value) == f"cannot write {target}: No space left on device"
    assert [p.name for p in tmp_path.iterdir()] == ["results.md"] and target.read_text() == "previous"


def test_atomic_write_keeps_the_errors_of_other_files(tmp_path):
    """An error that ``write`` raises about another file (a source it reads) is not about the
    file written."""
    source = tmp_path / "missing-source.bin"

    def copy_source(f):
        f.write(source.read_bytes())

    with pytest.raises(FileNotFoundError) as info:
        atomic_write(tmp_path / "copy.bin", copy_source)
    assert not isinstance(info.value, WriteError) and info.value.filename == str(source)
    assert list(tmp_path.iterdir()) == []


def test_convert_into_a_read_only_folder_is_one_line_naming_the_output(tmp_path, read_only_folder, capsys):
    sys.path.insert(0, str(REPO / "tests" / "reference"))
    try:
        from official_reference import make_official_state_dict
    finally:
        sys.path.remove(str(REPO / "tests" / "reference"))
    official = tmp_path / "official.pth"
    torch.save({"model": make_official_state_dict("tiny-b", seed=0)}, official)
    out = read_only_folder / "a.pth"
    assert convert_official_checkpoint.main([str(official), str(out)]) == 2
    assert one_error_line(capsys) == f"error: cannot write {out}: Permission denied"
    assert list(read_only_folder.iterdir()) == []


def test_prepare_into_a_read_only_folder_is_one_line_naming_the_output(read_only_folder, capsys):
    argv = ["--root", str(read_only_folder), "--num-train", "2", "--num-val", "1"]
    assert prepare_cli.run(synthetic.main, argv) == 2
    assert one_error_line(capsys) == f"error: cannot write {read_only_folder / 'synthetic_train.json'}: Permission denied"
    assert list(read_only_folder.iterdir()) == []


# ----------------------------------------------------------------------------- config merging
@pytest.fixture
def cfg():
    """The tiny config, merged: the config every command line starts from."""
    return merge_config(add_cat_seg_config(get_cfg()), TINY)


def write_config(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


SECTION = r"SOLVER is a section \(a group of keys: SOLVER\.\w+, SOLVER\.\w+, SOLVER\.\w+ \(\+\d+ more\)\), not a value"


def test_section_given_a_value_in_a_file_says_it_is_a_section(tmp_path, capsys):
    """yacs printed its "Type mismatch" with the whole SOLVER section (800 characters)."""
    config = write_config(tmp_path / "mine.yaml", f"_BASE_: {TINY}\nSOLVER: 5\n")
    assert train_net.main(["--config-file", config, "--check-only", "OUTPUT_DIR", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys)
    assert re.fullmatch(f"error: {SECTION}; got 5 \\(in config file '{re.escape(config)}'\\); set the keys under "
                        f"it instead", line), line
    assert len(line) - len(config) < 200 and not (tmp_path / "o").exists()


def test_section_given_a_value_on_the_command_line(cfg):
    with pytest.raises(UserError) as info:
        merge_config(cfg, None, ["SOLVER", "5"])
    assert re.fullmatch(f"{SECTION}; got 5 \\(in the command line\\); set the keys under it instead", str(info.value))


@pytest.mark.parametrize("key, value, expected", [
    ("MODEL.SEM_SEG_HEAD.POOLING_SIZES", "[2,2", "a list such as [2, 2], got '[2,2'"),
    ("SOLVER.MAX_ITER", "abc", "a whole number, got 'abc'"),
    ("SOLVER.MAX_ITER", "1.5", "a whole number, got 1.5"),
    ("SOLVER.BASE_LR", "True", "a number, got True"),  # True is no number, although Python's bool is an int
    ("TEST.SLIDING_WINDOW", "1", "True or False, got 1"),
    ("MODEL.WEIGHTS", "5", "a string, got 5"),
])
def test_value_of_the_wrong_type_on_the_command_line_says_what_the_key_takes(cfg, key, value, expected):
    before = cfg.clone()
    with pytest.raises(UserError) as info:
        merge_config(cfg, None, ["SOLVER.MAX_ITER", "7", key, value])
    assert str(info.value) == f"{key}: expected {expected} (in the command line)"
    assert cfg == before  # the good pair before it is not merged either


def test_value_of_the_wrong_type_in_a_file_names_key_and_file(cfg, tmp_path):
    config = write_config(tmp_path / "mine.yaml", "SOLVER:\n  MAX_ITER: 7\nMODEL:\n  SEM_SEG_HEAD:\n"
                                                  "    POOLING_SIZES: '[2,2'\n")
    before = cfg.clone()
    with pytest.raises(UserError) as info:
        merge_config(cfg, config)
    assert str(info.value) == (f"MODEL.SEM_SEG_HEAD.POOLING_SIZES: expected a list such as [2, 2], got '[2,2' "
                               f"(in config file '{config}')")
    assert cfg == before


def test_whole_number_for_a_float_key_is_that_float(cfg, tmp_path):
    """yacs refused SOLVER.BASE_LR 1 ("Type mismatch (<class 'float'> vs. <class 'int'>)")."""
    merge_config(cfg, None, ["SOLVER.BASE_LR", "1", "SOLVER.WEIGHT_DECAY", "0"])
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY) == (1.0, 0.0)
    assert type(cfg.SOLVER.BASE_LR) is float and type(cfg.SOLVER.WEIGHT_DECAY) is float
    config = write_config(tmp_path / "mine.yaml", f"_BASE_: {TINY}\nSOLVER:\n  BASE_LR: 2\n  MAX_ITER: 9\n")
    merge_config(cfg, config)
    assert type(cfg.SOLVER.BASE_LR) is float and cfg.SOLVER.BASE_LR == 2.0
    assert type(cfg.SOLVER.MAX_ITER) is int and cfg.SOLVER.MAX_ITER == 9


def test_a_misspelt_config_file_name_gets_the_closest_one(capsys):
    """Config keys, dataset and weights names got a "did you mean"; config file names did not."""
    assert train_net.main(["--config-file", "configs/quick_schedules/toy_synthetc.yaml", "--check-only"]) == 2
    assert one_error_line(capsys) == ("error: config file 'configs/quick_schedules/toy_synthetc.yaml' not found; "
                                      "did you mean 'configs/quick_schedules/toy_synthetic.yaml'?")


def test_base_that_names_no_file_says_base_and_where_it_looked(tmp_path, capsys):
    config = write_config(tmp_path / "bad" / "missbase.yaml", "_BASE_: ../configs/nothere.yaml\n")
    assert train_net.main(["--config-file", config, "--check-only"]) == 2
    assert one_error_line(capsys) == (f"error: _BASE_ '../configs/nothere.yaml' of config file '{config}' not found: "
                                      f"'{tmp_path / 'configs' / 'nothere.yaml'}' does not exist")


def test_base_in_a_list_and_a_base_that_is_a_folder_or_no_path(tmp_path):
    (tmp_path / "folder.yaml").mkdir()
    for base, problem in ((f"[{TINY}, nothere.yaml]", f"_BASE_ 'nothere.yaml' of config file '{{config}}' not found: "
                                                     f"'{tmp_path / 'nothere.yaml'}' does not exist"),
                          ("folder.yaml", f"_BASE_ 'folder.yaml' of config file '{{config}}' not found: "
                                          f"'{tmp_path / 'folder.yaml'}' is a directory"),
                          ("5", "_BASE_ 5 of config file '{config}': expected the path of a YAML config file (or a "
                                "list of paths)")):
        config = write_config(tmp_path / "mine.yaml", f"_BASE_: {base}\n")
        with pytest.raises(UserError) as info:
            merge_config(add_cat_seg_config(get_cfg()), config)
        assert str(info.value) == problem.format(config=config)


def test_base_chain_that_leads_back_to_itself_names_the_cycle(tmp_path, capsys):
    """detectron2 recursed until "RecursionError: maximum recursion depth exceeded"."""
    first = write_config(tmp_path / "first.yaml", "_BASE_: second.yaml\n")
    second = write_config(tmp_path / "second.yaml", "_BASE_: first.yaml\n")
    assert train_net.main(["--config-file", first, "--check-only"]) == 2
    assert one_error_line(capsys) == (f"error: _BASE_ 'first.yaml' of config file '{second}' leads back to '{first}', "
                                      f"a cycle of _BASE_ files: {first} -> {second} -> {first}")
    itself = write_config(tmp_path / "itself.yaml", "_BASE_: ./itself.yaml\nSOLVER:\n  MAX_ITER: 3\n")
    with pytest.raises(UserError, match=f"^_BASE_ './itself.yaml' of config file '{re.escape(itself)}' leads back to "
                                        f"'{re.escape(itself)}', a cycle of _BASE_ files: "):
        merge_config(add_cat_seg_config(get_cfg()), itself)


def test_two_bases_sharing_a_base_are_no_cycle(tmp_path):
    write_config(tmp_path / "common.yaml", "SOLVER:\n  MAX_ITER: 5\n")
    write_config(tmp_path / "a.yaml", "_BASE_: common.yaml\nSOLVER:\n  CHECKPOINT_PERIOD: 6\n")
    write_config(tmp_path / "b.yaml", "_BASE_: common.yaml\nTEST:\n  EVAL_PERIOD: 7\n")
    config = write_config(tmp_path / "mine.yaml", "_BASE_: [a.yaml, b.yaml]\n")
    cfg = merge_config(add_cat_seg_config(get_cfg()), config)
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.TEST.EVAL_PERIOD) == (5, 6, 7)
