"""User errors in files: one line naming the file and the key (or option) that gave it, and no
file left behind.

- class-name jsons (``read_class_json``) and the demo's vocabulary files: text that is not
  UTF-8, a byte-order mark, JSON errors.
"""
import json
from pathlib import Path

import pytest

from cat_seg.api import CATSegError, read_vocabulary_file
from cat_seg.cli import train_net
from cat_seg.utils import read_class_json

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
    ("{\"classes\": [\"cat\"]}", "expected a non-empty JSON array of non-empty class-name strings"),
    ("[\"cat\", \" \"]", "expected a non-empty JSON array of non-empty class-name strings"),
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
