"""tools/convert_official_checkpoint.py: round trip, report, one-line errors, atomic writes."""
import importlib.util
import os
from pathlib import Path

import pytest
import torch


REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "convert_official_checkpoint.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("convert_official_checkpoint", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_round_trip_official_to_ours_is_lossless(tool, official_tiny_file, load_tiny, tmp_path, capsys):
    out = tmp_path / "converted.pth"
    assert tool.main([official_tiny_file, str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "mapped 230 tensor(s), dropped 2, unknown 0" in stdout
    assert "dropped: sem_seg_head.predictor.transformer.layers.1.swin_block.block_2.attn_mask" in stdout
    assert "not copied (training state of the official run): optimizer, scheduler, iteration" in stdout
    assert f"wrote {out}" in stdout
    assert "not checked against a model: --config-file CFG" in stdout
    assert [p.name for p in tmp_path.iterdir()] == ["converted.pth"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual permissions, as training's checkpoints

    saved = torch.load(out, weights_only=True)
    assert saved["matching_heuristics"] is False and "official CAT-Seg" in saved["__author__"]
    assert set(saved) == {"model", "__author__", "matching_heuristics"}

    direct = load_tiny()  # official file loaded directly
    via_tool = load_tiny(str(out))  # our checkpoint written by the tool
    direct_state, tool_state = direct.state_dict(), via_tool.state_dict()
    assert set(saved["model"]) == set(direct_state)
    for key in direct_state:
        assert torch.equal(direct_state[key], tool_state[key]) and torch.equal(saved["model"][key], direct_state[key])

    image = torch.randint(0, 256, (3, 128, 128), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        a = direct([{"image": image}])[0]["sem_seg"]
        b = via_tool([{"image": image}])[0]["sem_seg"]
    assert torch.equal(a, b)


def test_config_check_before_writing(tool, official_tiny_file, tmp_path, capsys):
    out = tmp_path / "x.pth"
    code = tool.main([official_tiny_file, str(out), "--config-file", str(REPO / "configs/quick_schedules/tiny_vitl_cpu.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: checkpoint") and "shape mismatch" in err and err.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("meta_build", [True, False])
def test_config_check_on_the_meta_device_or_else_the_cpu(tool, official_tiny_file, tmp_path, capsys, monkeypatch,
                                                         meta_build):
    """--config-file checks against the meta-device model, or a CPU build where a model cannot
    be built on the meta device (as before the meta build)."""
    import detectron2.modeling

    import cat_seg.config

    if not meta_build:
        monkeypatch.setattr(cat_seg.config, "check_model_builds", lambda cfg: None)
    cpu_builds = []
    build_model = detectron2.modeling.build_model
    monkeypatch.setattr(detectron2.modeling, "build_model", lambda cfg: cpu_builds.append(cfg) or build_model(cfg))
    out = tmp_path / "x.pth"
    code = tool.main([official_tiny_file, str(out), "--config-file", str(REPO / "configs/quick_schedules/tiny_vitl_cpu.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "shape mismatch" in err and not out.exists()
    assert len(cpu_builds) == (0 if meta_build else 1)  # the meta model was used, or else one CPU build


def _bad_inputs(tmp_path, official_tiny):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    unknown = tmp_path / "unknown.pth"
    torch.save({"model": {"encoder.weight": torch.zeros(2)}}, unknown)
    ours = tmp_path / "ours.pth"
    torch.save({"model": {"backbone.clip.logit_scale": torch.zeros(())}}, ours)
    extra = tmp_path / "extra.pth"
    torch.save({**official_tiny, "sem_seg_head.predictor.foo": torch.zeros(1)}, extra)
    not_state = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_state)
    return [
        (tmp_path / "missing.pth", "checkpoint file not found"),
        (text, "is not a readable torch checkpoint"),
        (unknown, "is not an official CAT-Seg checkpoint"),
        (ours, "already in the cat-seg layout"),
        (extra, "1 unknown official key(s): sem_seg_head.predictor.foo"),
        (not_state, "holds a list, not a checkpoint dict"),
        ("catseg-vitb", "catseg-vitb names a released official checkpoint, which MODEL.WEIGHTS catseg-vitb downloads "
                        "and loads as it is (converted on loading): nothing to convert"),
        ("https://example.com/model_base.pth", "the converter reads local files: download https://example.com/"),
    ]


def test_bad_input_one_line_error_exit_2(tool, official_tiny, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for path, fragment in _bad_inputs(tmp_path, official_tiny):
        code = tool.main([str(path), str(out_dir / "out.pth")])
        err = capsys.readouterr().err
        assert code == 2, path
        assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
    assert os.listdir(out_dir) == []
    code = tool.main([str(tmp_path / "extra.pth"), str(out_dir)])  # a folder as OUT.pth
    err = capsys.readouterr().err
    assert code == 2 and err == (f"error: OUT.pth '{out_dir}' is a directory; expected a file path "
                                 f"(e.g. {out_dir / 'model_converted.pth'})\n")
    assert os.listdir(out_dir) == []


def test_a_detectron2_pkl_converts_as_the_pth(tool, official_tiny, official_tiny_file, tmp_path, capsys):
    """MODEL.WEIGHTS reads a detectron2 .pkl of numpy arrays; the converter said it was "neither a
    torch.save zip archive nor a pickle of tensors"."""
    import pickle

    arrays = {key: value.numpy() for key, value in official_tiny.items()}
    authored = tmp_path / "official.pkl"
    authored.write_bytes(pickle.dumps({"model": arrays, "__author__": "me"}))
    assert tool.main([str(authored), str(tmp_path / "from_pkl.pth")]) == 0
    assert tool.main([official_tiny_file, str(tmp_path / "from_pth.pth")]) == 0
    capsys.readouterr()
    from_pkl = torch.load(tmp_path / "from_pkl.pth", weights_only=True)["model"]
    from_pth = torch.load(tmp_path / "from_pth.pth", weights_only=True)["model"]
    assert from_pkl.keys() == from_pth.keys() and all(torch.equal(from_pkl[k], from_pth[k]) for k in from_pth)
    zoo = tmp_path / "zoo.pkl"  # detectron2's model-zoo marking: keys matched by heuristics
    zoo.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}))
    assert tool.main([str(zoo), str(tmp_path / "zoo.pth")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {zoo}: a .pkl with 'matching_heuristics': True (detectron2 model-zoo weights matched by name "
        "heuristics); CAT-Seg checkpoints are matched exactly: save {'model': state_dict} with torch.save as a .pth, "
        "or set 'matching_heuristics' to False in the pickled dict")
