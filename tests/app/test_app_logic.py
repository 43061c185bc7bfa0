"""The web app's request handling without a browser: vocabulary and model parsing, the
segmenter cache, outputs against the API, and the command line's one-line errors."""
import json
import os
from pathlib import Path
import shutil
import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cat_seg.api import CATSegError, OpenVocabSegmenter, parse_vocabulary
from cat_seg.cli import app as app_cli


def test_vocabulary_box_follows_the_cli_rules():
    assert app_cli.vocabulary_from_text("cat, dog") == parse_vocabulary("cat, dog") == ["cat", "dog"]
    assert app_cli.vocabulary_from_text("person, human; dog") == ["person, human", "dog"]
    # one class per line, each may carry synonyms (the --vocab-file text format)
    assert app_cli.vocabulary_from_text("person, human\n\n# comment\ndog\n") == ["person, human", "dog"]
    for bad in ("", "  \n ", "cat\nCat"):
        with pytest.raises(CATSegError) as ours:
            app_cli.vocabulary_from_text(bad)
        lines = [x for x in bad.splitlines() if x.strip()]
        with pytest.raises(CATSegError) as library:
            parse_vocabulary(lines if len(lines) > 1 else (lines[0] if lines else ""))
        assert str(ours.value) == str(library.value)


def test_a_class_box_of_comments_only_says_so():
    with pytest.raises(CATSegError, match=r"^empty vocabulary \(the text holds only # comments\)"):
        app_cli.vocabulary_from_text("# classes come here\n")


def test_benchmark_vocabularies_are_read_from_the_class_jsons():
    # the catalog's benchmarks under their eval.sh titles (VOC-20b left out), and COCO-Stuff's classes
    assert list(app_cli.BENCHMARK_VOCABULARIES) == [
        "ADE20K-150", "ADE20K-847", "PASCAL VOC-20", "PASCAL Context-59", "PASCAL Context-459",
        "COCO-Stuff-171 (the training classes)"]
    ade = app_cli.benchmark_vocabulary("ADE20K-150")
    assert len(ade) == 150 and ade[0] == "wall"
    assert len(app_cli.benchmark_vocabulary("PASCAL Context-59")) == 59
    assert len(app_cli.benchmark_vocabulary("COCO-Stuff-171 (the training classes)")) == 171
    assert len(app_cli.benchmark_vocabulary(app_cli.TOY_VOCABULARY)) == 16
    assert app_cli.benchmark_vocabulary(app_cli.CUSTOM_VOCABULARY) is None


def test_model_choices():
    choices = app_cli.model_choices()
    vitb = next(c for c in choices if c.startswith("catseg-vitb:"))
    config, weights = app_cli.model_spec(vitb, "", "")
    assert config.endswith("configs/vitb_384.yaml") and weights == "catseg-vitb"
    assert app_cli.model_spec(app_cli.LOCAL_MODEL, " a.yaml ", " none ") == ("a.yaml", None)
    assert app_cli.model_spec(app_cli.LOCAL_MODEL, "a.yaml", "w.pth") == ("a.yaml", "w.pth")


def test_threshold_and_click_readout():
    assert app_cli.parse_threshold(0) is None and app_cli.parse_threshold(0.25) == 0.25
    click = {"label_map": np.array([[0, -1]]), "confidence": np.array([[0.875, 0.1]]), "classes": ["cat", "dog"]}
    assert app_cli.describe_pixel(click, 0, 0) == "(0, 0): cat (confidence 0.88)"
    assert app_cli.describe_pixel(click, 1, 0) == "(1, 0): unlabeled"
    assert app_cli.describe_pixel(click, 5, 0) == "(5, 0) is outside the image"


def test_clicks_on_a_downscaled_overlay_read_the_label_under_them():
    """Large images are shown as an overlay drawn at display resolution: a click is scaled from
    the overlay's pixels to the label map's (which the text gives)."""
    from cat_seg.api import SegmentationResult

    height, width = 1500, 2000  # 3 megapixels: drawn smaller
    labels = np.zeros((height, width), np.int32)
    labels[:, width // 2:] = 1  # right half: dog
    labels[height - 10:, width - 10:] = -1  # bottom-right corner: unlabeled
    probs = torch.full((2, height, width), 0.5)
    result = SegmentationResult(image=np.zeros((height, width, 3), np.uint8), classes=["cat", "dog"],
                                label_map=labels, probs=probs)
    overlay, (shown, masks), _, _, click = app_cli._view(result, result.overlay())
    overlay_height, overlay_width = overlay.shape[:2]
    assert overlay_width < width and click["overlay_size"] == (overlay_height, overlay_width)
    # the segments view is drawn at the overlay's size too (not 2 full-size float masks)
    assert shown.shape[:2] == (overlay_height, overlay_width)
    assert [m.shape for m, _ in masks] == [(overlay_height, overlay_width)] * 2
    assert app_cli.describe_pixel(click, overlay_width // 4, 10).endswith(": cat (confidence 0.50)")
    x = 3 * overlay_width // 4
    right = app_cli.describe_pixel(click, x, 10)
    assert right == (f"({int((x + 0.5) * width / overlay_width)}, {int(10.5 * height / overlay_height)}): dog "
                     "(confidence 0.50)")
    assert app_cli.describe_pixel(click, overlay_width - 1, overlay_height - 1).endswith(": unlabeled")
    assert app_cli.describe_pixel(click, overlay_width, 0) == f"({overlay_width}, 0) is outside the image"


def test_upload_names_are_unique_after_numbering():
    assert app_cli._stems(["a/x.jpg", "b/x_2.jpg", "c/x.png", "d/X.png"]) == ["x", "x_2", "x_3", "X_4"]
    assert app_cli._stems(["a/.png", "b/..jpg"]) == ["image", "image_2"]  # no hidden output files


def test_the_output_folder_keeps_the_last_requests(tmp_path):
    app = app_cli.App(device="cpu", output_root=str(tmp_path))
    for i in range(app_cli.KEPT_REQUESTS + 5):
        folder = tmp_path / f"request{i:02d}"
        folder.mkdir()
        os.utime(folder, (i, i))
    app._prune_requests()  # before a request: room for its folder
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [f"request{i:02d}" for i in range(6, app_cli.KEPT_REQUESTS + 5)]


@pytest.fixture(scope="module")
def local_app(tiny_checkpoint, tmp_path_factory):
    return app_cli.App(device="cpu", output_root=str(tmp_path_factory.mktemp("app-out")))


def test_segment_matches_the_api_and_caches_the_model(local_app, tiny_checkpoint, tmp_path):
    from cat_seg.data.synthetic import render_sample, val_class_names

    image, _ = render_sample(np.random.default_rng(5), 96, [1, 2], val_class_names())
    paths = [tmp_path / "a.png", tmp_path / "sub_a.png"]
    Image.fromarray(image).save(paths[0])
    Image.fromarray(image[:, ::-1]).save(paths[1])
    config = str(app_cli.resolve_path("configs/quick_schedules/tiny_vitb_cpu.yaml"))
    args = ([str(p) for p in paths], "red dotted\nred speckled\nsky", app_cli.LOCAL_MODEL, config, tiny_checkpoint)
    results, stems, files, status, overlays = local_app.segment(*args, 0.3, False)
    assert stems == ["a", "sub_a"] and len(files) == 6 and "2 image(s), 3 class(es)" in status
    assert "\n\nClasses as read: red dotted; red speckled; sky" in status
    api = OpenVocabSegmenter.from_config(config, weights=tiny_checkpoint, device="cpu")
    expected = api([str(p) for p in paths], ["red dotted", "red speckled", "sky"], background=0.3)
    for result, want, stem in zip(results, expected, stems):
        np.testing.assert_array_equal(result.label_map, want.label_map)
        folder = [f for f in files if f.endswith(f"/{stem}_labels.png")][0].rsplit("/", 1)[0]
        np.testing.assert_array_equal(np.asarray(Image.open(f"{folder}/{stem}_labels.png")), want.label_png())
        info = json.load(open(f"{folder}/{stem}.json"))
        assert info["background"] == 0.3
        assert info["input"] == f"{stem}.png"  # the upload's name (the stem alone lost its extension)
        # the demo's "model" entry (it lacked the CLIP weights, the sliding window and the precision)
        assert info["model"] == api.model_info(config, []) == {
            "config_file": config, "weights": tiny_checkpoint, "device": "cpu", "opts": [],
            "clip": api.cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED, "sliding_window": False, "precision": api.precision}
        for got, ref in zip(info["per_class"], want.to_json()["per_class"]):  # app: one image per forward
            assert got["area"] == ref["area"] and got["mean_probability"] == pytest.approx(ref["mean_probability"])
        rows = app_cli.class_table(result)
        assert [r[0] for r in rows if r[0] != "(unlabeled)"] == sorted(
            [n for n, a in want.areas().items() if a], key=lambda n: -want.areas()[n])
        # the click readout holds the label's probability, read without the [T, H, W] maps
        click = app_cli._view(result, overlays[stems.index(stem)])[-1]
        np.testing.assert_array_equal(overlays[stems.index(stem)], np.asarray(Image.open(f"{folder}/{stem}_overlay.png")))
        assert result._probs is None
        labeled = want.label_map >= 0
        own = want.probs.gather(0, torch.from_numpy(want.label_map).long().clamp(min=0)[None])[0].numpy()
        np.testing.assert_allclose(click["confidence"][labeled], own[labeled], rtol=1e-6, atol=1e-7)
    segmenter = next(iter(local_app.segmenters._items.values()))
    local_app.segment(*args, 0.0, False)  # same model: no new segmenter, text features reused
    assert len(local_app.segmenters) == 1 and next(iter(local_app.segmenters._items.values())) is segmenter


def test_a_checkpoint_rewritten_while_the_app_runs_is_loaded_again(tiny_checkpoint, tmp_path):
    app = app_cli.App(device="cpu", output_root=str(tmp_path / "out"))
    weights = tmp_path / "model_final.pth"
    shutil.copy(tiny_checkpoint, weights)
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    config = str(app_cli.resolve_path("configs/quick_schedules/tiny_vitb_cpu.yaml"))
    args = ([str(image)], "sky", app_cli.LOCAL_MODEL, config, str(weights), 0, False)
    app.segment(*args)
    first = list(app.segmenters._items.values())
    os.utime(weights, ns=(time.time_ns(), os.stat(weights).st_mtime_ns + 10**9))  # retrained (make demo)
    app.segment(*args)
    assert len(app.segmenters) == 1 and list(app.segmenters._items.values())[0] is not first[0]  # replaced
    second = list(app.segmenters._items.values())[0]
    app.segment(*args)  # unchanged since: the cached one
    assert list(app.segmenters._items.values()) == [second]


def test_a_repository_config_path_is_accepted_from_any_folder(monkeypatch, tmp_path, capsys):
    """--config-file configs/... is the repository's from any folder, as for every other program."""
    monkeypatch.chdir(tmp_path)

    def stop(*args, **kwargs):  # the check before it passed: stop before the server starts
        raise CATSegError("reached the app")

    monkeypatch.setattr(app_cli, "build_app", stop)
    with socket.socket() as probe:  # a free port: the address check comes first
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    assert app_cli.main(["--config-file", "configs/quick_schedules/tiny_vitb_cpu.yaml", "--device", "cpu",
                         "--port", port]) == 2
    assert capsys.readouterr().err == "error: reached the app\n"


def test_bad_inputs_raise_the_library_errors(local_app, tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    config = str(app_cli.resolve_path("configs/quick_schedules/tiny_vitb_cpu.yaml"))
    with pytest.raises(CATSegError, match="no image given"):
        local_app.segment([], "cat", app_cli.LOCAL_MODEL, config, tiny_checkpoint, 0, False)
    with pytest.raises(CATSegError) as error:  # named as uploaded, without the folder it was uploaded to
        local_app.segment([str(broken)], "cat", app_cli.LOCAL_MODEL, config, tiny_checkpoint, 0, False)
    assert str(error.value).startswith("cannot read image 'broken.png': ") and str(tmp_path) not in str(error.value)
    with pytest.raises(CATSegError) as error:
        local_app.segment([str(broken), str(broken)], "cat", app_cli.LOCAL_MODEL, config, tiny_checkpoint, 0, False)
    assert str(error.value).startswith("none of the 2 uploads is a readable image: cannot read image 'broken.png': ")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    # one bad upload among good ones: the others are segmented, the bad one is named in the status
    results, stems, files, status, _ = local_app.segment(
        [str(broken), str(good)], "cat", app_cli.LOCAL_MODEL, config, tiny_checkpoint, 0, False)
    assert stems == ["good"] and len(results) == 1 and len(files) == 3
    assert status.startswith("1 image(s), 1 class(es)")
    assert "**Note:** skipped: cannot read image 'broken.png': " in status and str(tmp_path) not in status
    with pytest.raises(CATSegError, match=r"weights file '.*missing\.pth' not found"):
        local_app.segment([str(good)], "cat", app_cli.LOCAL_MODEL, config, str(tmp_path / "missing.pth"), 0, False)
    with pytest.raises(CATSegError, match=r"config file 'nope\.yaml' not found"):
        local_app.segment([str(good)], "cat", app_cli.LOCAL_MODEL, "nope.yaml", "", 0, False)


def test_classes_sharing_their_first_synonym_are_noted_on_the_page(local_app, tiny_checkpoint, tmp_path):
    """The API logs the note for the server's console; the page's user sees it in the status."""
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    config = str(app_cli.resolve_path("configs/quick_schedules/tiny_vitb_cpu.yaml"))
    vocabulary = "screen, silver screen\nscreen, crt screen\nsky"
    *_, status, _ = local_app.segment([str(good)], vocabulary, app_cli.LOCAL_MODEL, config, tiny_checkpoint, 0, False)
    assert status.endswith("**Note:** 1 class(es) of the class list share their first synonym, the name the model "
                           "sees, with an earlier class ('screen, crt screen' after 'screen, silver screen'): they "
                           "get the same scores, and the earlier class wins their pixels")
    *_, status, _ = local_app.segment([str(good)], "sky, grass", app_cli.LOCAL_MODEL, config, tiny_checkpoint, 0, False)
    assert "Note" not in status


def test_command_line_errors_are_one_line(capsys):
    assert app_cli.main(["--model", "nonsense"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --model must be one of catseg-vitb, catseg-vitl, toy, local") and "\n" not in err
    assert app_cli.main(["--config-file", "missing.yaml"]) == 2
    assert capsys.readouterr().err.strip() == "error: config file 'missing.yaml' not found"
    # checked before the server starts, not at the first segmentation
    assert app_cli.main(["--device", "tpu"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown device 'tpu'")
    assert app_cli.main(["--opts", "TEST.SLIDING_WINDOWS", "True"]) == 2
    assert capsys.readouterr().err.strip() == ("error: unknown config key 'TEST.SLIDING_WINDOWS' in the command line; "
                                               "did you mean 'TEST.SLIDING_WINDOW'?")
    assert app_cli.main(["--opts", "MODEL.WEIGHTS"]) == 2
    assert "KEY VALUE pairs" in capsys.readouterr().err


def test_a_bad_local_model_is_one_line_before_the_server_starts(capsys, tmp_path, tiny_checkpoint, monkeypatch):
    """--config-file / --weights with a mistake started the server; the error showed only in
    the browser at the first segmentation. They are checked as the demo checks them."""
    monkeypatch.setattr(app_cli, "build_app", lambda *a, **k: pytest.fail("the page was built"))
    config = str(app_cli.resolve_path("configs/quick_schedules/tiny_vitb_cpu.yaml"))
    base = ["--config-file", config, "--device", "cpu"]
    assert app_cli.main([*base, "--weights", str(tmp_path / "nothere.pth")]) == 2
    assert capsys.readouterr().err.strip() == f"error: weights file '{tmp_path / 'nothere.pth'}' not found"
    data = open(tiny_checkpoint, "rb").read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    assert app_cli.main([*base, "--weights", str(tmp_path / "cut.pth")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --weights: {tmp_path / 'cut.pth'} is not a readable torch "
                                               "checkpoint: a damaged or truncated torch.save zip archive")
    (tmp_path / "bad.yaml").write_text(f"_BASE_: {os.path.abspath(config)}\nSOLVER:\n  BASE_LRR: 0.1\n")
    assert app_cli.main(["--config-file", str(tmp_path / "bad.yaml"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown config key 'SOLVER.BASE_LRR'") and "\n" not in err


def test_gradio_older_than_the_pages_api_is_one_line():
    """The page calls Gradio 6's launch(footer_links=...): Gradio 5 would fail at launch with a
    TypeError, so it is refused first, naming the version and the upgrade."""
    with pytest.raises(CATSegError) as info:
        app_cli.check_gradio("5.49.1")
    assert str(info.value) == ("the web app needs Gradio 6 or later, this environment has 5.49.1: "
                               "pip install -U 'gradio>=6'")
    app_cli.check_gradio("6.0.0")
    app_cli.check_gradio()  # the installed one (the test extra requires 6)


def test_address_the_server_cannot_listen_at_is_one_line_before_loading(capsys):
    """A port in use, out of range or privileged, or a host that is not this machine's: one
    line before the model is loaded (Gradio's own error came after it, with a traceback)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert app_cli.main(["--model", "nonsense", "--port", str(port)]) == 2  # checked first
        assert capsys.readouterr().err == (f"error: --host 127.0.0.1 --port {port}: port {port} is in use (by another "
                                           "run or program)\n")
    assert app_cli.main(["--port", "70000"]) == 2
    assert capsys.readouterr().err == "error: --port 70000: expected a port in 1..65535\n"
    assert app_cli.main(["--host", "192.0.2.1"]) == 2  # TEST-NET-1: no machine's own address
    assert capsys.readouterr().err == ("error: --host 192.0.2.1 --port 7860: 192.0.2.1 is not an address of this "
                                       "machine\n")


def test_page_events_follow_the_users_choices_only(tmp_path):
    """The page's wiring (the browser tests drive it): the result and vocabulary dropdowns react
    to the user's input only (a run setting the result dropdown rendered its first result a
    second time), editing the class box resets the vocabulary choice, Gradio's cached files are
    deleted after a day, and errors stay until closed."""
    import gradio as gr

    page = app_cli.build_app(app_cli.App(device="cpu", output_root=str(tmp_path)), app_cli.LOCAL_MODEL)
    config = page.get_config_file()
    names = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    triggers = {(names.get(target), event) for d in config["dependencies"] for target, event in d["targets"]}
    assert {("which", "input"), ("vocab-choice", "input"), ("vocab", "input"), ("run", "click")} <= triggers
    assert not {("which", "change"), ("vocab-choice", "change")} & triggers
    assert page.delete_cache == (3600, 86400)
    captured = {}
    real_error = gr.Error

    def error(*args, **kwargs):
        captured.update(kwargs)
        return real_error(*args, **kwargs)

    run = next(fn for fn in page.fns.values() if getattr(fn, "name", "") == "run")
    original = gr.Error
    try:
        gr.Error = error
        with pytest.raises(real_error):
            run.fn([], "cat", app_cli.LOCAL_MODEL, "", "", 0.0, False)
    finally:
        gr.Error = original
    assert captured.get("duration", 10) is None


def test_the_start_up_model_is_checked_whatever_it_is(capsys, monkeypatch):
    """--weights without --config-file was ignored (the page came up on another model),
    --model local without a config and an unreachable released model started the server; the
    mistake showed only at the first segmentation."""
    from cat_seg import hub

    monkeypatch.setattr(app_cli, "build_app", lambda *a, **k: pytest.fail("the page was built"))
    assert app_cli.main(["--weights", "/nope.pth", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --weights '/nope.pth' needs --config-file, the config of the model it holds (or give a released "
        "name: catseg-vitb, catseg-vitl)")
    assert app_cli.main(["--model", "local", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --model local needs --config-file, the config of the model "
                                               "(and --weights, its checkpoint)")
    checked = []

    def unavailable(name):
        checked.append(name)
        raise hub.WeightsUnavailableError(f"{name}: not in the hub cache and the hub cannot be reached")

    monkeypatch.setattr(hub, "check_released_weights", unavailable)
    for argv in (["--weights", "catseg-vitl"], ["--model", "catseg-vitl"]):  # a released name picks its model
        assert app_cli.main([*argv, "--device", "cpu"]) == 2
        assert capsys.readouterr().err.strip() == ("error: catseg-vitl: not in the hub cache and the hub cannot be "
                                                   "reached")
    assert checked == ["catseg-vitl", "catseg-vitl"]


def test_the_apps_own_output_folder_is_removed_at_its_end(tmp_path):
    """Each start left a /tmp/cat-seg-app-* folder behind (the last requests' files)."""
    app = app_cli.App(device="cpu")
    own = app.output_root
    (Path(own) / "request").mkdir()
    app.close()
    assert not os.path.exists(own)
    given = app_cli.App(device="cpu", output_root=str(tmp_path / "mine"))
    given.close()
    assert (tmp_path / "mine").is_dir()  # a folder given to the app is the user's


def test_sigterm_ends_the_app_as_ctrl_c_does(monkeypatch, capsys):
    """SIGTERM (kill, docker stop) exited at once, without removing the app's output folder:
    it now raises KeyboardInterrupt, which Gradio's server loop and the app's clean-up handle
    (the browser tests' server is stopped this way and checked). Before the server runs, it is
    "interrupted", status 130; the handler in place before is restored."""
    import signal

    before = signal.getsignal(signal.SIGTERM)

    def serve(args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(app_cli, "_serve", serve)
    assert app_cli.main(["--device", "cpu"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_app_stopped_while_its_page_is_built_leaves_no_folder(monkeypatch, tmp_path, capsys):
    """The app's own output folder was removed only once the server ran: Ctrl-C (or SIGTERM)
    while the page was being built left it behind."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where App makes its folder
    for check in ("check_gradio", "check_listen_address", "check_startup_options", "check_startup_model"):
        monkeypatch.setattr(app_cli, check, lambda *args, **kwargs: None)

    def interrupted(app, *args, **kwargs):
        assert os.path.isdir(app.output_root)
        raise KeyboardInterrupt

    monkeypatch.setattr(app_cli, "build_app", interrupted)
    assert app_cli.main(["--device", "cpu"]) == 130
    assert list(tmp_path.glob("cat-seg-app-*")) == []


def test_the_upload_box_takes_every_format_pil_reads():
    """Gradio's "image" file type (MIME types) refused .tga and .qoi files, which the docs
    say the page takes ("any format PIL reads") and the demo reads."""
    from gradio_client.utils import is_valid_file

    types = app_cli.image_file_types()
    for name in ("a.png", "b.JPG", "c.tga", "d.qoi", "e.tiff", "f.webp"):
        assert is_valid_file(name, types), name
    assert not is_valid_file("notes.txt", types)
