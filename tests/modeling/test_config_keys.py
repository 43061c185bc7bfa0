"""``cat_seg/config.py`` holds only keys that the code reads; official configs still load.

Keys that official configs set but cat-seg ignores are accepted through yacs' deprecated-key
registry (``add_official_compat_keys``): merged with a log line, absent from the config.
"""
import logging
import re
from pathlib import Path

import pytest
from detectron2.config import get_cfg
from detectron2.projects.deeplab import add_deeplab_config

from cat_seg.config import IGNORED_KEYS, add_cat_seg_config

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "cat_seg"


def flatten(node, prefix=""):
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def added_keys():
    """Keys that ``add_cat_seg_config`` adds to detectron2's defaults (with DeepLab's keys)."""
    base = get_cfg()
    add_deeplab_config(base)
    ours = add_cat_seg_config(get_cfg())
    return sorted(set(flatten(ours)) - set(flatten(base)))


def test_every_added_key_is_read_by_the_package():
    sources = {path: path.read_text() for path in PACKAGE.rglob("*.py") if path.name != "config.py"}
    keys = added_keys()
    assert len(keys) > 30
    unread = []
    for key in keys:
        leaf = key.rsplit(".", 1)[-1]
        # an attribute read (``head.PAD_LEN``, ``cfg.TEST.CLASS_CHUNK_SIZE``) or a string key
        pattern = re.compile(rf"\.{leaf}\b|[\"']{leaf}[\"']")
        if not any(pattern.search(text) for text in sources.values()):
            unread.append(key)
    assert not unread, f"config keys no code reads: {unread}"


def test_config_has_no_removed_keys():
    keys = set(flatten(add_cat_seg_config(get_cfg())))
    for removed in ("MODEL.FAST.TOKEN_LAYOUT", "SOLVER.AMP.PRECISION", "MODEL.SWIN.EMBED_DIM", "DATASETS.VAL_ALL",
                    "MODEL.PROMPT_ENSEMBLE", "MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_DIM"):
        assert removed not in keys
    for kept in ("MODEL.PRECISION", "MODEL.COMPILE", "MODEL.CHECKPOINT_ACTIVATIONS", "TEST.CLASS_CHUNK_SIZE"):
        assert kept in keys


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")))
def test_shipped_configs_load(path):
    cfg = add_cat_seg_config(get_cfg())
    cfg.merge_from_file(str(REPO / path))
    assert cfg.MODEL.META_ARCHITECTURE == "CATSeg"


OFFICIAL_ONLY = """
MODEL:
  PROMPT_ENSEMBLE: False
  SWIN:
    EMBED_DIM: 128
    DEPTHS: [2, 2, 18, 2]
  SEM_SEG_HEAD:
    TRAIN_CLASS_INDEXES: "datasets/coco/coco_stuff/split/seen_indexes.json"
    TEXT_GUIDANCE_DIM: 768
    APPEARANCE_GUIDANCE_DIM: 768
    PAD_LEN: 100
  FAST:
    TOKEN_LAYOUT: False
DATASETS:
  VAL_ALL: ("coco_2017_val_all_stuff_sem_seg",)
SOLVER:
  AMP:
    PRECISION: "fp16"
"""


def test_official_only_keys_are_ignored_with_a_log_line(tmp_path, caplog):
    path = tmp_path / "official.yaml"
    path.write_text(OFFICIAL_ONLY)
    cfg = add_cat_seg_config(get_cfg())
    with caplog.at_level(logging.WARNING):
        cfg.merge_from_file(str(path))
        cfg.merge_from_list(["MODEL.SWIN.EMBED_DIM", "96", "MODEL.FAST.INFERENCE_AUTOCAST", "True"])
    assert cfg.MODEL.SEM_SEG_HEAD.PAD_LEN == 100  # the keys we use are merged
    keys = set(flatten(cfg))
    assert not any(key == ignored or key.startswith(ignored + ".") for key in keys for ignored in IGNORED_KEYS)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for key in ("MODEL.SWIN", "MODEL.PROMPT_ENSEMBLE", "MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_DIM", "DATASETS.VAL_ALL",
                "SOLVER.AMP.PRECISION", "MODEL.FAST"):
        assert key in logged


def test_unknown_keys_still_fail(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("MODEL:\n  SEM_SEG_HEAD:\n    PAD_LENGTH: 100\n")
    cfg = add_cat_seg_config(get_cfg())
    with pytest.raises(KeyError):
        cfg.merge_from_file(str(path))
