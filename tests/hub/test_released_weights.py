"""Released weights by name (cat_seg.hub), against a Hugging Face Hub file server on loopback."""
import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cat_seg import hub
from cat_seg.api import CATSegError
from cat_seg.checkpoint import CATSegCheckpointer, CheckpointError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_release(monkeypatch, loopback_hub, official_tiny_bytes):
    """A released-weights entry for the tiny model, served by the loopback hub."""
    data, state = official_tiny_bytes
    entry = hub.ReleasedWeights(
        name="catseg-tiny-test", repo_id="tests/tiny-weights", repo_type="space", filename="model_tiny.pth",
        config_file="configs/quick_schedules/tiny_vitb_cpu.yaml",
        size=len(data), sha256=hashlib.sha256(data).hexdigest(),
    )
    monkeypatch.setitem(hub.RELEASED_WEIGHTS, entry.name, entry)
    loopback_hub.add(entry.repo_type, entry.repo_id, entry.filename, data)
    return entry, state


def test_registry_entries_match_the_official_release(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)  # a mirror's URL otherwise
    vitb, vitl = hub.RELEASED_WEIGHTS["catseg-vitb"], hub.RELEASED_WEIGHTS["catseg-vitl"]
    assert vitb.url == "https://huggingface.co/spaces/hamacojr/CAT-Seg-weights/resolve/main/model_base.pth"
    assert vitl.url == "https://huggingface.co/spaces/hamacojr/CAT-Seg-weights/resolve/main/model_large.pth"
    # the CLIP each holds is read from its config (the official release: B/16 at 384, L/14 at 336)
    assert (vitb.clip_arch, vitl.clip_arch) == ("ViT-B/16", "ViT-L/14@336px")
    assert hub.is_released_name("CatSeg-ViTB") and not hub.is_released_name("model_base.pth")


def test_paths_pass_through_untouched(loopback_hub):
    assert hub.resolve_weights("output/model_final.pth") == "output/model_final.pth"
    assert loopback_hub.requests == []


def test_released_name_downloads_once_into_the_hub_cache(loopback_hub):
    data = b"not really a checkpoint, but served under the official name" * 10
    loopback_hub.add("space", "hamacojr/CAT-Seg-weights", "model_base.pth", data)
    path = hub.resolve_weights("catseg-vitb")
    assert Path(path).read_bytes() == data
    assert Path(path).resolve().is_relative_to(Path(os.environ["HF_HUB_CACHE"]).resolve())
    assert [r[1] for r in loopback_hub.downloads("model_base.pth")] == [
        "/spaces/hamacojr/CAT-Seg-weights/resolve/main/model_base.pth"
    ]
    count = len(loopback_hub.requests)
    assert hub.resolve_weights("catseg-vitb") == path  # second call: from the cache, no request at all
    assert len(loopback_hub.requests) == count


def test_checkpointer_loads_released_name_like_the_file(tiny_model, tiny_release, tmp_path, official_tiny_bytes):
    entry, official_state = tiny_release
    by_name = tiny_model("b", seed=1).eval()
    CATSegCheckpointer(by_name).resume_or_load(entry.name, resume=False)
    local = tmp_path / "model_tiny.pth"
    local.write_bytes(official_tiny_bytes[0])
    by_file = tiny_model("b", seed=2).eval()
    CATSegCheckpointer(by_file).load(str(local))
    a, b = by_name.state_dict(), by_file.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a CLIP tensor of the official file landed in the model (the checkpoint carries the full CLIP)
    key = "sem_seg_head.predictor.clip_model.token_embedding.weight"
    assert torch.equal(a["backbone.clip.token_embedding.weight"], official_state[key])


def test_api_segmenter_with_released_name(build_cfg, tiny_release):
    from cat_seg.api import OpenVocabSegmenter

    entry, _ = tiny_release
    cfg = build_cfg("b")
    cfg.MODEL.WEIGHTS = entry.name
    seg = OpenVocabSegmenter(cfg)
    result = seg(torch.randint(0, 256, (40, 56, 3), dtype=torch.uint8).numpy(), "sky, tree")
    assert result.label_map.shape == (40, 56)


def test_interrupted_download_resumes(monkeypatch, loopback_hub, tiny_release):
    """A connection dropped mid-file is resumed with a Range request, and the result is complete."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 500)  # default 10 MB: larger than the tiny file
    entry, _ = tiny_release
    data = loopback_hub.files[(entry.repo_type, entry.repo_id, entry.filename)]
    loopback_hub.cut_next_get_after = 1000
    path = hub.resolve_weights(entry.name)  # also checks size and sha256 of the result
    assert Path(path).read_bytes() == data
    assert [r[2] for r in loopback_hub.downloads(entry.filename)] == [None, "bytes=1000-"]


def test_checksum_mismatch_is_one_line(monkeypatch, loopback_hub, tiny_release):
    entry, _ = tiny_release
    monkeypatch.setitem(hub.RELEASED_WEIGHTS, entry.name, dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(hub.WeightsUnavailableError, match=r"catseg-tiny-test: sha256 of .* expected 0{64}") as info:
        hub.resolve_weights(entry.name)
    assert "\n" not in str(info.value)
    monkeypatch.setitem(hub.RELEASED_WEIGHTS, entry.name, dataclasses.replace(entry, size=entry.size + 1))
    with pytest.raises(hub.WeightsUnavailableError, match=rf"has {entry.size} bytes, expected {entry.size + 1}"):
        hub.resolve_weights(entry.name)


def test_offline_without_cache_says_what_to_download(monkeypatch, loopback_hub):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_ENDPOINT")  # the public hub's URL (with a mirror, the mirror's)
    with pytest.raises(CATSegError) as info:
        hub.resolve_weights("catseg-vitl")
    message = str(info.value)
    assert "\n" not in message
    assert "https://huggingface.co/spaces/hamacojr/CAT-Seg-weights/resolve/main/model_large.pth" in message
    assert "--weights" in message and os.environ["HF_HUB_CACHE"] in message
    assert loopback_hub.requests == []
    assert isinstance(info.value, CheckpointError)  # a ValueError for train_net's one-line errors


def test_unreachable_hub_without_cache_fails_with_one_line(monkeypatch, loopback_hub):
    loopback_hub.close()  # nothing listens on the port any more: connection refused
    with pytest.raises(hub.WeightsUnavailableError, match=r"catseg-vitb: cannot download .*model_base.pth") as info:
        hub.resolve_weights("catseg-vitb")
    assert "\n" not in str(info.value)


def test_offline_with_cache_works(monkeypatch, loopback_hub, tiny_release):
    entry, _ = tiny_release
    path = hub.resolve_weights(entry.name)
    loopback_hub.close()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.resolve_weights(entry.name) == path


def test_train_net_style_error_for_missing_name_on_hub(loopback_hub):
    """A name whose file the hub does not have (404) is a user error, not a crash."""
    with pytest.raises(hub.WeightsUnavailableError, match="catseg-vitb: cannot download"):
        hub.resolve_weights("catseg-vitb")


def test_offline_message_from_a_fresh_process_is_fast_and_one_line(tmp_path, loopback_hub):
    """The user-facing path: a fresh interpreter, HF_HUB_OFFLINE, empty cache -> one line, and
    fast: the hub (HF_ENDPOINT, the loopback one) is not asked anything, so nothing is retried."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "cache"))
    assert env["HF_ENDPOINT"] == loopback_hub.endpoint
    code = "from cat_seg.hub import resolve_weights; resolve_weights('catseg-vitb')"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("cat_seg.hub.WeightsUnavailableError: catseg-vitb: not in the Hugging Face cache")
    assert loopback_hub.requests == []


def test_build_config_takes_a_released_name_without_config_file(tiny_release):
    """``build_config(weights=NAME)``: the release's own config, no CLIP download (CLIP_WEIGHTS none:
    the checkpoint holds CLIP, whatever CLIP_WEIGHTS says), no "file not found" for the name;
    ``train_net`` does the same."""
    from types import SimpleNamespace

    from cat_seg.api import build_config
    from cat_seg.cli.train_net import load_config

    entry, _ = tiny_release
    cfg = build_config(weights=entry.name, device="cpu")
    assert cfg.MODEL.WEIGHTS == entry.name
    assert cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED.endswith("tiny-vit-b16.json")  # from the release's config
    assert cfg.MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS == "none"
    cfg = build_config(weights=entry.name, device="cpu", opts=["MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", "clip.pt"])
    assert cfg.MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS == "none"
    with pytest.raises(CATSegError, match="weights file 'catseg-nope' not found"):
        build_config(entry.config_file, weights="catseg-nope", device="cpu")

    args = SimpleNamespace(config_file=entry.config_file, opts=["MODEL.WEIGHTS", entry.name])
    cfg = load_config(args)
    assert cfg.MODEL.WEIGHTS == entry.name and cfg.MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS == "none"


def test_demo_default_config_follows_the_released_name(tiny_release):
    from cat_seg.cli.demo import default_config
    from cat_seg.utils import resolve_path

    entry, _ = tiny_release
    assert default_config(entry.name) == resolve_path(entry.config_file)
    assert default_config(None) == resolve_path("configs/vitb_384.yaml")
    assert default_config("model_final.pth") == resolve_path("configs/vitb_384.yaml")


def test_check_released_weights_downloads_nothing(monkeypatch, loopback_hub, tiny_release):
    """train_net's check of a released name: passes when the hub has the file (one metadata
    request, no download) or the cache does; offline without the cache it is the one-line error
    resolve_weights gives, before any process starts."""
    entry, _ = tiny_release
    hub.check_released_weights(entry.name)
    assert loopback_hub.downloads(entry.filename) == []
    hub.check_released_weights("output/model_final.pth")  # not a released name: nothing to check
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.WeightsUnavailableError, match="catseg-tiny-test: not in the Hugging Face cache and "
                                                          "HF_HUB_OFFLINE is set"):
        hub.check_released_weights(entry.name)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.resolve_weights(entry.name)
    loopback_hub.close()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.check_released_weights(entry.name)  # cached


def test_the_reachability_probe_waits_as_long_as_hf_hub_etag_timeout_says(monkeypatch):
    """A slow connection's HF_HUB_ETAG_TIMEOUT (huggingface_hub's own setting) also applies to
    the probe before a download; unset or not a number: 5 s."""
    from cat_seg import hub

    monkeypatch.delenv("HF_HUB_ETAG_TIMEOUT", raising=False)
    assert hub._metadata_timeout() == hub.METADATA_TIMEOUT_S == 5.0
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "60")
    assert hub._metadata_timeout() == 60.0
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "slow")
    assert hub._metadata_timeout() == 5.0


def test_the_download_waits_as_long_as_hf_hub_etag_timeout_says(monkeypatch, loopback_hub, tiny_release):
    """The download itself was given the 5 s default, overriding HF_HUB_ETAG_TIMEOUT."""
    import huggingface_hub

    from cat_seg import hub

    entry, _ = tiny_release
    real, seen = huggingface_hub.hf_hub_download, []

    def recording(*args, **kwargs):
        seen.append(kwargs.get("etag_timeout"))
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", recording)
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "60")
    hub.resolve_weights(entry.name)
    assert seen == [60.0]


def test_a_config_of_another_clip_is_refused_before_the_download(tiny_release, loopback_hub, tmp_path, capsys):
    """A released name with a config of another CLIP (catseg-vitl with configs/vitb_384.yaml)
    was found out by the load, after the download (900 MB for ViT-L)."""
    from cat_seg.api import build_config
    from cat_seg.cli import train_net

    entry, _ = tiny_release
    other = str(REPO / "configs/quick_schedules/tiny_vitl_cpu.yaml")
    message = (f"MODEL.WEIGHTS {entry.name} holds a CAT-Seg with CLIP {entry.clip_arch} ({entry.config_file}), but "
               "this config's CLIP is ")
    with pytest.raises(CATSegError) as info:
        build_config(other, weights=entry.name, device="cpu")
    assert str(info.value).startswith(message) and str(info.value).endswith(f"use --config-file {entry.config_file}")
    assert train_net.main(["--config-file", other, "--check-only", "--eval-only", "OUTPUT_DIR", str(tmp_path / "o"),
                           "MODEL.WEIGHTS", entry.name]) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")
    # a CLIP name that is no CLIP at all: the value check's one line (it escaped as a ValueError)
    with pytest.raises(CATSegError, match=r"^MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED='ViT-Q/99' is neither"):
        build_config(weights=entry.name, device="cpu", opts=["MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED", "ViT-Q/99"])
    assert loopback_hub.requests == []  # nothing asked of the hub, nothing downloaded


def test_without_its_config_file_the_clip_check_is_left_to_the_load(monkeypatch, tmp_path):
    """The package installed without a checkout has no configs/: the entry's CLIP is unknown
    (None) and a user's config of any CLIP passes the check instead of failing to read it."""
    from detectron2.config import get_cfg

    from cat_seg.config import add_cat_seg_config

    entry = hub.ReleasedWeights(name="catseg-elsewhere", repo_id="x/y", repo_type="space", filename="m.pth",
                                config_file=str(tmp_path / "not_here.yaml"))
    monkeypatch.setitem(hub.RELEASED_WEIGHTS, entry.name, entry)
    assert entry.clip_arch is None
    cfg = add_cat_seg_config(get_cfg())
    cfg.MODEL.WEIGHTS = entry.name
    hub.check_released_config(cfg)  # no error


def test_a_damaged_cached_file_is_downloaded_again(tiny_release, loopback_hub, caplog):
    """A cut-short blob in the cache (a disk fault, a copy by hand) was returned, or refused
    with "delete it and run again", which did not help: the hub links the same blob again."""
    entry, _ = tiny_release
    path = hub.resolve_weights(entry.name)
    blob = os.path.realpath(path)
    data = Path(blob).read_bytes()
    Path(blob).write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING", logger="cat_seg"):
        assert hub.resolve_weights(entry.name) == path
    assert Path(path).read_bytes() == data
    assert f"{entry.name}: the cached file is damaged (" in caplog.text
    assert len(loopback_hub.downloads(entry.filename)) == 2


@pytest.mark.parametrize("status, server_message, hint", [
    (401, "Invalid credentials in Authorization header", "hf auth login"),
    (403, "Access to space hamacojr/CAT-Seg-weights is restricted and you are not in the authorized list. "
          "Visit https://huggingface.co/spaces/hamacojr/CAT-Seg-weights to ask for access.", "terms accepted"),
])
def test_a_refused_download_says_the_status_and_the_hubs_reason(loopback_hub, status, server_message, hint):
    """The hub's own reason and what the status means, whole, on one line (a 160-character
    cut of huggingface_hub's several-line message lost the reason), and the URL to fetch by
    hand on the hub HF_ENDPOINT names."""
    loopback_hub.refuse = (status, server_message)
    with pytest.raises(hub.WeightsUnavailableError) as info:
        hub.resolve_weights("catseg-vitb")
    message = str(info.value)
    assert "\n" not in message
    assert f"catseg-vitb: cannot download (HTTP {status} - {server_message} - " in message
    assert hint in message
    assert f"download {loopback_hub.endpoint}/spaces/hamacojr/CAT-Seg-weights/resolve/main/model_base.pth " in message


def test_the_url_follows_hf_endpoint_when_called(monkeypatch):
    """A mirror given with a trailing slash, and HF_ENDPOINT unset after huggingface_hub read it
    at import: the URL is the mirror's without a double slash, then huggingface.co's."""
    entry = hub.RELEASED_WEIGHTS["catseg-vitb"]
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    assert entry.url == "https://hf-mirror.example/spaces/hamacojr/CAT-Seg-weights/resolve/main/model_base.pth"
    monkeypatch.delenv("HF_ENDPOINT")
    assert entry.url == "https://huggingface.co/spaces/hamacojr/CAT-Seg-weights/resolve/main/model_base.pth"
