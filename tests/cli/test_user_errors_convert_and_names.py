"""User errors of ``cat-seg-convert`` (an existing OUT.pth) and of misspelt released-weights
names: one line naming the file or value, nothing destroyed."""
from pathlib import Path

import pytest
import torch

from cat_seg.cli import convert_official_checkpoint as convert

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    """A checkpoint in the official layout: one decoder-guidance upsampler tensor converts."""
    path = tmp_path_factory.mktemp("official") / "model_official.pth"
    torch.save({"model": {"upsample1.weight": torch.zeros(1)}}, path)
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
    assert list(torch.load(out, weights_only=True)["model"]) == ["sem_seg_head.guidance_upsample.0.weight"]


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
