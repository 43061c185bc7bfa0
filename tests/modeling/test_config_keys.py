"""``cat_seg/config.py`` holds only keys that the code reads; official configs still load.

Keys that official configs set but cat-seg ignores are accepted through yacs' deprecated-key
registry (``add_official_compat_keys``): merged with a log line, absent from the config.
"""
import logging
import os
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


def test_the_reason_an_official_key_is_not_read_is_said(tmp_path, caplog):
    """yacs says only "Deprecated config key (ignoring)" for keys the official configs still
    use; the merge of the command lines says why each is not read."""
    from cat_seg.cli.errors import merge_config

    path = tmp_path / "official.yaml"
    path.write_text(OFFICIAL_ONLY)
    with caplog.at_level(logging.WARNING, logger="cat_seg.config"):
        merge_config(add_cat_seg_config(get_cfg()), str(path), ["MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_DIM", "1024"])
    said = [r.getMessage() for r in caplog.records if r.name == "cat_seg.config"]
    assert "MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_DIM: not read by cat-seg (derived from the CLIP model (its embedding " \
           "dim))" in said
    assert "MODEL.SWIN.* (MODEL.SWIN.EMBED_DIM ...): not read by cat-seg (Swin feature backbone of the arXiv-v1 model (removed from " \
           "the official code's model))" in said
    assert len([m for m in said if m.startswith("MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_DIM")]) == 2  # file, command line


def test_unknown_keys_still_fail(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("MODEL:\n  SEM_SEG_HEAD:\n    PAD_LENGTH: 100\n")
    cfg = add_cat_seg_config(get_cfg())
    with pytest.raises(KeyError):
        cfg.merge_from_file(str(path))


def test_paths_in_a_config_are_found_near_it_from_any_folder(tmp_path, monkeypatch):
    """A relative path written in a config file (``configs/clip_models/...json``) that exists
    neither from the working folder nor the repository is taken from a folder above the config
    file: a checkout's configs work from any folder, with a non-editable install too (whose
    "repository" is site-packages). Command-line values and values found as given stay."""
    import cat_seg.utils
    from cat_seg.cli.errors import merge_config

    checkout = tmp_path / "checkout"
    (checkout / "configs" / "models").mkdir(parents=True)
    (checkout / "configs" / "models" / "m.json").write_text("{}")
    (checkout / "configs" / "runs").mkdir()
    config = checkout / "configs" / "runs" / "r.yaml"
    config.write_text("MODEL:\n  SEM_SEG_HEAD:\n    CLIP_PRETRAINED: configs/models/m.json\n"
                      "    TEST_CLASS_JSON: datasets/ade150.json\n    CLIP_WEIGHTS: openai\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(cat_seg.utils, "REPO_ROOT", str(tmp_path / "site-packages"))
    cfg = merge_config(add_cat_seg_config(get_cfg()), str(config))
    head = cfg.MODEL.SEM_SEG_HEAD
    assert head.CLIP_PRETRAINED == str(checkout / "configs" / "models" / "m.json")
    assert head.TEST_CLASS_JSON == "datasets/ade150.json"  # nowhere near: the packaged list, at use
    assert head.CLIP_WEIGHTS == "openai"
    cfg = merge_config(add_cat_seg_config(get_cfg()), str(config),
                       ["MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED", "configs/models/m.json"])
    assert cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED == "configs/models/m.json"  # the command line's, as given
    (elsewhere / "configs" / "models").mkdir(parents=True)
    (elsewhere / "configs" / "models" / "m.json").write_text("{}")
    cfg = merge_config(add_cat_seg_config(get_cfg()), str(config))
    assert cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED == "configs/models/m.json"  # found from the working folder

    # a config of one's own outside the checkout inheriting the checkout's (_BASE_): the path the
    # base file holds is found near the base file
    mine = tmp_path / "project" / "configs" / "mine.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text(f"_BASE_: {os.path.relpath(config, mine.parent)}\nSOLVER:\n  MAX_ITER: 7\n")
    monkeypatch.chdir(tmp_path / "project")
    cfg = merge_config(add_cat_seg_config(get_cfg()), str(mine))
    assert cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED == str(checkout / "configs" / "models" / "m.json")
    assert cfg.SOLVER.MAX_ITER == 7


def test_a_method_built_on_cat_seg_registers_its_own_keys(tmp_path, monkeypatch, capsys):
    """register_config_keys: the tools that build cat-seg's config accept the new method's keys
    in config files and on command lines (strict key checks otherwise refuse them)."""
    from detectron2.config import CfgNode

    from cat_seg import config as config_module
    from cat_seg.api import CATSegError, build_config
    from cat_seg.cli import train_net

    monkeypatch.setattr(config_module, "CONFIG_EXTENSIONS", [])
    (tmp_path / "mine.yaml").write_text(f"_BASE_: {REPO / 'configs/quick_schedules/tiny_vitb_cpu.yaml'}\n"
                                        "MODEL:\n  MY_METHOD:\n    WEIGHT: 0.5\n")
    with pytest.raises(CATSegError, match="unknown config key 'MODEL.MY_METHOD"):
        build_config(str(tmp_path / "mine.yaml"), device="cpu")

    @config_module.register_config_keys
    def add_my_method_config(cfg):
        cfg.MODEL.MY_METHOD = CfgNode()
        cfg.MODEL.MY_METHOD.WEIGHT = 0.1

    config_module.register_config_keys(add_my_method_config)  # a second registration: no effect
    assert config_module.CONFIG_EXTENSIONS == [add_my_method_config]
    assert build_config(str(tmp_path / "mine.yaml"), device="cpu").MODEL.MY_METHOD.WEIGHT == 0.5
    args = train_net.build_parser().parse_args(["--config-file", str(tmp_path / "mine.yaml"),
                                                "MODEL.MY_METHOD.WEIGHT", "0.25"])
    assert train_net.load_config(args).MODEL.MY_METHOD.WEIGHT == 0.25


def test_the_default_clip_weights_are_the_official_codes_for_every_official_architecture():
    """CLIP_WEIGHTS (new here) defaulted to 'openai', which ViT-H and ViT-G do not have: the
    official commands for them stopped; the default is now the official code's tag."""
    from detectron2.config import get_cfg

    from cat_seg import add_cat_seg_config
    from cat_seg.modeling.clip.builder import clip_weights_source

    default = add_cat_seg_config(get_cfg()).MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS
    for arch, tag in (("ViT-B/16", "ViT-B-16/openai"), ("ViT-L/14@336px", "ViT-L-14-336/openai"),
                      ("ViT-H", "ViT-H-14/laion2b_s32b_b79k"), ("ViT-G", "ViT-bigG-14/laion2b_s39b_b160k")):
        kind, source, _ = clip_weights_source(arch, default)
        assert (kind, source) == ("pretrained", tag)
    # open_clip's own model names: openai where open_clip has it, else its first tag
    assert clip_weights_source("ViT-B-16", default)[1] == "ViT-B-16/openai"
    assert clip_weights_source("ViT-H-14", default)[1] == "ViT-H-14/laion2b_s32b_b79k"


def test_the_precision_auto_resolves_to_is_logged_once_per_device_type(caplog, monkeypatch):
    """MODEL.PRECISION auto runs bf16 where the device computes it natively: which computation
    ran is in the run's log (it was visible only as 'auto' in the config dump)."""
    import torch

    from cat_seg.modeling import precision

    for native in (True, False):
        monkeypatch.setattr(precision, "_told", set())
        monkeypatch.setattr(precision, "supports_native", lambda dtype, device, native=native: native)
        with caplog.at_level("INFO", logger="cat_seg.modeling.precision"):
            caplog.clear()
            assert precision.resolve_precision("auto", "cpu") == (torch.bfloat16 if native else None)
            precision.resolve_precision("auto", "cpu")  # once per process and device type
        lines = [r.getMessage() for r in caplog.records]
        assert lines == (["MODEL.PRECISION=auto on cpu: bf16 autocast (native bf16 here); MODEL.PRECISION fp32 "
                          "computes as the official code"] if native else
                         ["MODEL.PRECISION=auto on cpu: fp32 (no native bf16 here), the official computation"])


def test_a_misspelt_official_key_that_is_not_read_is_suggested_as_such():
    """TEXT_GUIDANCE_DIMS was matched to TEXT_GUIDANCE_PROJ_DIM, not to the official
    TEXT_GUIDANCE_DIM it misspells (accepted and not read: the embedding dim is CLIP's)."""
    from cat_seg.cli.errors import UserError, merge_config

    with pytest.raises(UserError) as info:
        merge_config(add_cat_seg_config(get_cfg()), None, ["MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_DIMS", "5"])
    assert str(info.value) == (
        "unknown config key 'MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_DIMS' in the command line; did you mean "
        "'MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_DIM' (an official key cat-seg accepts and does not read)?")


def test_a_key_of_an_existing_node_is_matched_among_that_nodes_keys():
    """MODEL.FOO was "corrected" to MODEL.FPN.NORM, a key of another node sharing the prefix:
    under an existing node only its own keys are candidates (none close: the generic hint)."""
    from cat_seg.cli.errors import closest_key

    cfg = add_cat_seg_config(get_cfg())
    assert closest_key(cfg, "MODEL.FOO") is None
    assert closest_key(cfg, "MODEL.WIEGHTS") == "MODEL.WEIGHTS"
    assert closest_key(cfg, "MODEL.SEM_SEG_HEAD.PAD_LENGTH") == "MODEL.SEM_SEG_HEAD.PAD_LEN"
    assert closest_key(cfg, "MODEL.SEM_SEG_HAED.PAD_LEN") == "MODEL.SEM_SEG_HEAD.PAD_LEN"  # a misspelt node
    assert closest_key(cfg, "OUTPUT_DR") == "OUTPUT_DIR"
