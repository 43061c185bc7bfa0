"""User errors of ``cat-seg-convert`` (an existing OUT.pth) and of misspelt released-weights
names and CLIP model-config fields: one line naming the file, field or value, nothing
destroyed."""
import json
from pathlib import Path

import pytest
import torch

from cat_seg.cli import convert_official_checkpoint as convert

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    """A checkpoint in the official layout: a decoder-guidance upsampler tensor and the
    aggregator's cost embedding convert."""
    path = tmp_path_factory.mktemp("official") / "model_official.pth"
    torch.save({"model": {"upsample1.weight": torch.zeros(1),
                          "sem_seg_head.predictor.transformer.conv1.weight": torch.zeros(1)}}, path)
    return str(path)


def test_existing_out_is_not_replaced(official_file, tmp_path, capsys):
    """Swapped or mistyped arguments (``model.pth configs/vitb_384.yaml``) destroyed OUT: exit 0."""
    config = tmp_path / "vitb_384.yaml"
    config.write_text("_BASE_: base.yaml\n")
    assert convert.main([official_file, str(config)]) == 2
    assert capsys.readouterr().err == (f"error: OUT.pth '{config}' already exists; expected a new file path "
                                       f"(--force replaces it)\n")
    assert config.read_text() == "_BASE_: base.yaml\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vitb_384.yaml"]  # no temporary file either


def test_existing_checkpoint_out_is_not_replaced_either(official_file, tmp_path, capsys):
    """A readable checkpoint as OUT is refused too: ``model_base.pth model_large.pth`` must not
    replace the other official checkpoint."""
    other = tmp_path / "model_large.pth"
    torch.save({"model": {"w": torch.ones(2)}}, other)
    before = other.read_bytes()
    assert convert.main([official_file, str(other)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert other.read_bytes() == before


def test_dangling_link_as_out_is_refused(official_file, tmp_path, capsys):
    link = tmp_path / "out.pth"
    link.symlink_to(tmp_path / "nowhere.pth")
    assert convert.main([official_file, str(link)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert link.is_symlink() and not (tmp_path / "nowhere.pth").exists()


def test_force_replaces_an_existing_out(official_file, tmp_path, capsys):
    out = tmp_path / "converted.pth"
    out.write_text("old")
    assert convert.main([official_file, str(out), "--force"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert sorted(torch.load(out, weights_only=True)["model"]) == ["sem_seg_head.aggregator.cost_embed.weight",
                                                                   "sem_seg_head.guidance_upsample.0.weight"]


def test_help_describes_the_rule(capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--force replace OUT.pth if it exists (without it an existing OUT.pth is an error" in help_text


# ------------------------------------------------------------------ misspelt released names
TINY = str(REPO / "configs/quick_schedules/tiny_vitb_cpu.yaml")


@pytest.mark.parametrize("weights, suggestion", [
    ("catseg-vit-b", " (did you mean catseg-vitb?)"),
    ("CATSEG_VITL", " (did you mean catseg-vitl?)"),
    ("catseg-vitb.pth", " (did you mean catseg-vitb?)"),
    ("weights/catseg-vit-b", ""),  # a path: a file of the user's, not a name
    ("model_final.pth", ""),
])
def test_released_name_suggestion(weights, suggestion):
    from cat_seg.hub import released_name_suggestion

    assert released_name_suggestion(weights) == suggestion


def test_train_net_suggests_the_released_name(tmp_path, monkeypatch, capsys):
    """``MODEL.WEIGHTS catseg-vit-b`` said only "not found; expected a checkpoint file"."""
    from cat_seg.cli import train_net

    monkeypatch.chdir(tmp_path)  # no file of that name
    assert train_net.main(["--config-file", TINY, "--eval-only", "OUTPUT_DIR", str(tmp_path / "o"),
                           "MODEL.WEIGHTS", "catseg-vit-b"]) == 2
    assert capsys.readouterr().err == ("error: MODEL.WEIGHTS 'catseg-vit-b' not found (did you mean catseg-vitb?); "
                                       "expected a checkpoint file (.pth/.pkl) for --eval-only\n")


def test_api_suggests_the_released_name(tmp_path, monkeypatch):
    from cat_seg.api import CATSegError, build_config

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CATSegError) as info:
        build_config(TINY, weights="catseg-vitl-", device="cpu")
    assert str(info.value) == "weights file 'catseg-vitl-' not found (did you mean catseg-vitl?)"


# ------------------------------------------------------------- CLIP model-config JSON files
TINY_CLIP = REPO / "configs/clip_models/tiny-vit-b16.json"


def write_clip_config(tmp_path, change):
    """The tiny ViT-B/16 model config with ``change(cfg)`` applied, written to tmp_path/clip.json."""
    cfg = json.loads(TINY_CLIP.read_text())
    cfg = change(cfg) or cfg
    path = tmp_path / "clip.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def set_field(full, value):
    def change(cfg):
        *parts, name = full.split(".")
        node = cfg
        for part in parts:
            node = node[part]
        node[name] = value
    return change


@pytest.mark.parametrize("change, problem", [
    (set_field("vision_cfg.width", "x"), 'vision_cfg.width is "x"; expected a positive integer'),
    (set_field("embed_dim", 0), "embed_dim is 0; expected a positive integer"),
    (set_field("text_cfg.heads", True), "text_cfg.heads is true; expected a positive integer"),
    (set_field("text_cfg.layers", 2.5), "text_cfg.layers is 2.5; expected a positive integer"),
    (set_field("vision_cfg.mlp_ratio", -4), "vision_cfg.mlp_ratio is -4; expected a positive number"),
    (set_field("vision_cfg.image_size", [64]),
     "vision_cfg.image_size is [64]; expected a positive integer or a list of two ([height, width])"),
    (set_field("quick_gelu", "false"), 'quick_gelu is "false"; expected true or false'),
    (set_field("vision_cfg.widht", 48), "unknown field vision_cfg.widht; did you mean vision_cfg.width?"),
    (set_field("embed_dims", 32), "unknown field embed_dims; did you mean embed_dim?"),
    (set_field("vision_cfg.width", 50), "vision_cfg.width 50 is not a multiple of vision_cfg.head_width 16"),
    (set_field("text_cfg.width", 33), "text_cfg.width 33 is not a multiple of text_cfg.heads 2"),
    (set_field("text_cfg", "small"), 'text_cfg is "small"; expected a JSON object'),
    (lambda cfg: cfg.pop("text_cfg") and None, "lacks key(s) text_cfg"),
    (lambda cfg: [cfg], "holds a JSON list; expected an object with embed_dim, vision_cfg and text_cfg"),
])
def test_clip_model_config_fields_are_checked(change, problem, tmp_path):
    """A wrongly typed field failed inside open_clip.CLIP(...), reported as the architecture not building."""
    from cat_seg.modeling.clip.model_configs import resolve_clip_arch

    path = write_clip_config(tmp_path, change)
    with pytest.raises(ValueError) as info:
        resolve_clip_arch(path)
    assert str(info.value) == f"{path} (the open_clip model config of MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED): {problem}"


def test_train_net_names_the_file_and_the_field(tmp_path, capsys):
    """The audit's case: it was "MODEL.META_ARCHITECTURE='CATSeg' with ... cannot be built:
    unsupported operand type(s) for //: 'str' and 'int'"."""
    from cat_seg.cli import train_net

    path = write_clip_config(tmp_path, set_field("vision_cfg.width", "x"))
    assert train_net.main(["--config-file", TINY, "OUTPUT_DIR", str(tmp_path / "o"),
                           "MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED", path]) == 2
    assert capsys.readouterr().err == (f"error: {path} (the open_clip model config of "
                                       f"MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED): vision_cfg.width is \"x\"; "
                                       f"expected a positive integer\n")


def test_clip_model_configs_that_build_still_resolve(tmp_path):
    """The shipped tiny configs, a rectangular image size, and a model of a kind CAT-Seg cannot
    use, which is named as such (CoCa's multimodal_cfg is no field of a CLIP)."""
    from cat_seg.modeling.clip.model_configs import resolve_clip_arch

    for path in sorted((REPO / "configs/clip_models").glob("*.json")):
        assert resolve_clip_arch(str(path)).model_cfg["embed_dim"] > 0
    rectangular = write_clip_config(tmp_path, set_field("vision_cfg.image_size", [64, 48]))
    assert resolve_clip_arch(rectangular).model_cfg["vision_cfg"]["image_size"] == [64, 48]
    coca = write_clip_config(tmp_path, set_field("multimodal_cfg", {"width": 32}))
    with pytest.raises(ValueError, match="a CoCa model"):
        resolve_clip_arch(coca)
