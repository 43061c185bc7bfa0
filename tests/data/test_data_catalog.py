"""Class-name lists: counts, known entries, consistency with the committed json files."""
import json

import pytest

from cat_seg.data import class_names as cn


@pytest.mark.parametrize("key,count", sorted(cn.EXPECTED_COUNTS.items()))
def test_counts(key, count):
    names = cn.get_class_names(key)
    assert len(names) == count
    assert all(isinstance(n, str) and n for n in names)


def test_no_duplicates_where_names_are_unique():
    for key in ("coco", "ade150", "ade847", "pc59", "pc459", "voc20", "voc20b"):
        names = cn.get_class_names(key)
        assert len(set(names)) == len(names), key


def test_coco_stuff_ids_and_names():
    ids = [i for i, _ in cn.COCO_STUFF_171_CATEGORIES]
    assert ids == sorted(ids) and len(ids) == 171
    things = [i for i in ids if i <= 90]
    assert len(things) == 80 and ids[80:] == list(range(92, 183))
    names = cn.get_class_names("coco")
    assert names[0] == "person" and names[80] == "banner" and names[-1] == "wood"
    assert "wall-other" in names and "floor-wood" in names
    mapping = cn.coco_stuff_id_to_contiguous_id()
    assert mapping[1] == 0 and mapping[13] == 11 and mapping[182] == 170 and 12 not in mapping


def test_ade_lists():
    ade150 = cn.get_class_names("ade150")
    assert ade150[7] == "bed " and ade150[0] == "wall" and ade150[-1] == "flag"
    ade847 = cn.get_class_names("ade847")
    assert sum(", " in n for n in ade847) == 217
    assert ade847[:3] == ["wall", "building, edifice", "sky"]
    raw = cn.ade847_id_to_train_id()
    assert len(raw) == 847 and raw[2978] == 0 and raw[312] == 1


def test_pascal_context_lists():
    pc459 = cn.get_class_names("pc459")
    assert pc459[0] == "accordion" and pc459[430] == "unknown"
    ids = [i for i, _ in cn.PC59_CATEGORIES]
    assert ids == sorted(ids) and len(ids) == 59 and ids[0] == 2 and ids[-1] == 458
    # the 59 names are the 459 names of those ids, except "table" (id 397) -> "diningtable"
    differ = [(pc459[i - 1], n) for i, n in cn.PC59_CATEGORIES if pc459[i - 1] != n]
    assert differ == [("table", "diningtable")]
    assert cn.pc59_id_to_train_id()[458] == 58


def test_voc20b_is_voc20_plus_39_context_prompts():
    voc20b = cn.get_class_names("voc20b")
    assert voc20b[:20] == cn.get_class_names("voc20")
    assert len(voc20b[20:]) == 39 and voc20b[20] == "bag" and voc20b[-1] == "wood"
    assert set(voc20b[20:]) <= set(cn.get_class_names("pc59"))


def test_committed_jsons_equal_the_module(raw):
    """datasets/*.json are written from cat_seg.data.class_names (flat JSON arrays)."""
    assert cn.check_class_jsons(raw.REPO / "datasets") == []
    for key in cn.class_json_keys():
        on_disk = json.loads((raw.REPO / cn.class_json_name(key)).read_text())
        assert on_disk == cn.get_class_names(key)


def test_write_and_check_cli(tmp_path, capsys):
    assert cn.main(["--write", str(tmp_path)]) == 0
    assert cn.main(["--check", str(tmp_path)]) == 0
    (tmp_path / "pc59.json").write_text(json.dumps(cn.get_class_names("pc59")[::-1]))
    assert cn.main(["--check", str(tmp_path)]) == 1
    assert "pc59.json differs" in capsys.readouterr().err


def test_unknown_key():
    with pytest.raises(KeyError, match="unknown class list"):
        cn.get_class_names("cityscapes")
    assert cn.get_class_names("datasets/ade150.json") == cn.get_class_names("ade150")
