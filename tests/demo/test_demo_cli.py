"""``demo/demo.py``: outputs on a folder, video input, user errors (one line, exit status 2)."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cat_seg.api import SegmentationResult

VOCAB = "cat, dog, grass"
CLASSES = ["cat", "dog", "grass"]


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory, image_factory):
    """3 images: the same file name in two folders, and a JPEG at the top."""
    root = tmp_path_factory.mktemp("photos")
    (root / "a").mkdir()
    (root / "b").mkdir()
    Image.fromarray(image_factory(10, 96, 128)).save(root / "a" / "x.png")
    Image.fromarray(image_factory(11, 120, 72)).save(root / "b" / "x.png")
    Image.fromarray(image_factory(12, 80, 100)).save(root / "top.jpg", quality=95)
    (root / "notes.txt").write_text("not an image, ignored when the folder is expanded")
    return root


def run_main(demo_module, capsys, args):
    """Call ``demo.main(args)`` in-process; returns ``(exit status, stdout, stderr)``."""
    code = demo_module.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_cli_on_a_folder(tiny, checkpoint, segmenter, photo_dir, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, tiny.demo, "--config-file", tiny.config, "--input", str(photo_dir), "--output", str(out),
        "--vocab", VOCAB, "--weights", checkpoint, "--device", "cpu", "--dense-features", "--batch-size", "2",
        "--opts", *tiny.opts,
    ]
    proc = subprocess.run(command, cwd=tiny.repo, capture_output=True, text=True, env=tiny.env, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    # said also where no progress bar is (the output is not a terminal here)
    assert proc.stdout.strip().splitlines()[-1] == f"wrote the results of 3 image(s) to {out}"
    inputs = {"a/x": photo_dir / "a" / "x.png", "b/x": photo_dir / "b" / "x.png", "top": photo_dir / "top.jpg"}
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    expected = sorted(f"{stem}{suffix}" for stem in inputs for suffix in ("_overlay.png", "_labels.png", ".json", "_features.npz"))
    assert written == expected
    for stem, path in inputs.items():
        image = np.asarray(Image.open(path).convert("RGB"))
        h, w = image.shape[:2]
        info = read_json(out / f"{stem}.json")
        assert info["input"] == str(path)
        assert info["classes"] == CLASSES
        assert info["image_size"] == {"height": h, "width": w}
        assert info["model"]["weights"] == checkpoint and info["model"]["device"] == "cpu"
        assert info["model"]["config_file"] == tiny.config
        assert info["model"]["precision"] == "fp32"  # the computation that ran (the tiny config: fp32)
        assert info["label_png"] == {"dtype": "uint8", "unlabeled_value": 255}

        labels_png = Image.open(out / f"{stem}_labels.png")
        assert labels_png.mode == "L" and labels_png.size == (w, h)
        labels = np.asarray(labels_png)
        assert labels.max() < len(CLASSES)  # label values index the vocabulary
        areas = [entry["area"] for entry in info["per_class"]]
        assert [entry["name"] for entry in info["per_class"]] == CLASSES
        assert areas == np.bincount(labels.ravel(), minlength=3).tolist()
        assert sum(areas) == h * w - info["unlabeled_area"] and info["unlabeled_area"] == 0

        # the same labels and confidences as the Python API with the same weights
        api = segmenter(str(path), CLASSES)
        best_two = api.probs.topk(2, dim=0).values
        clear = (best_two[0] - best_two[1] > 1e-5).numpy()
        assert np.array_equal(labels[clear], api.label_map[clear])
        for entry, expected_mean in zip(info["per_class"], api.mean_probabilities().values()):
            assert entry["mean_probability"] == pytest.approx(expected_mean, abs=1e-4)

        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.mode == "RGB" and overlay.size == (w, h)
        changed = (np.asarray(overlay).astype(int) != image.astype(int)).any(axis=2)
        assert changed.mean() > 0.5

        features = np.load(out / f"{stem}_features.npz")
        grid = segmenter.model.backbone.grid_size
        assert features["embeddings"].shape == (segmenter.model.backbone.embed_dim, *grid)
        assert features["cost_volume"].shape == (3, *grid)
        assert list(features["classes"]) == CLASSES and tuple(features["image_size"]) == (h, w)


def test_cli_background_and_vocab_file(demo_module, capsys, tiny, checkpoint, photo_dir, tmp_path):
    vocab_file = tmp_path / "classes.txt"
    vocab_file.write_text("# two classes, the first with a synonym\nperson, human\ndog\n")
    out = tmp_path / "out"
    code, _, err = run_main(demo_module, capsys, [
        "--config-file", tiny.config, "--input", photo_dir / "a" / "x.png", photo_dir / "top.jpg",
        "--output", out, "--vocab-file", vocab_file, "--background", "prompts", "--weights", checkpoint,
        "--device", "cpu", "--opts", *tiny.opts,
    ])
    assert code == 0, err
    assert sorted(p.name for p in out.rglob("*.json")) == ["top.json", "x.json"]  # not mirrored: a/ and . -> a/x, top
    assert (out / "a" / "x.json").exists()
    for stem, shape in (("a/x", (96, 128)), ("top", (80, 100))):
        info = read_json(out / f"{stem}.json")
        assert info["classes"] == ["person, human", "dog"]
        assert info["background"] == "prompts" and "background" in info["background_classes"]
        labels = np.asarray(Image.open(out / f"{stem}_labels.png"))
        assert labels.shape == shape
        assert set(np.unique(labels)) <= {0, 1, 255}
        assert info["unlabeled_area"] == int((labels == 255).sum()) > 0
        assert sum(e["area"] for e in info["per_class"]) == labels.size - info["unlabeled_area"]


def test_cli_without_vocabulary_uses_the_configs_test_class_json(demo_module, capsys, tiny, checkpoint, photo_dir,
                                                                   tmp_path):
    """No --vocab/--vocab-file: the demo segments with MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON,
    and says so on stderr."""
    from cat_seg.api import read_vocabulary_file

    class_json = tmp_path / "config_classes.json"
    class_json.write_text(json.dumps(["sky", "tree, bush", "road"]))
    out = tmp_path / "out"
    code, _, err = run_main(demo_module, capsys, [
        "--config-file", tiny.config, "--input", photo_dir / "top.jpg", "--output", out, "--weights", checkpoint,
        "--device", "cpu", "--opts", *tiny.opts, "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON", class_json,
    ])
    assert code == 0, err
    assert read_json(out / "top.json")["classes"] == read_vocabulary_file(str(class_json)) == ["sky", "tree, bush", "road"]
    assert f"vocabulary: 3 classes of the config's MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON ({class_json})" in err


def test_cli_video_input(demo_module, capsys, tiny, checkpoint, tmp_path, image_factory):
    import cv2

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    assert writer.isOpened()
    for seed in range(3):
        writer.write(image_factory(seed, 48, 64)[:, :, ::-1].copy())
    writer.release()
    out = tmp_path / "out"
    code, _, err = run_main(demo_module, capsys, [
        "--config-file", tiny.config, "--video-input", video, "--output", out, "--vocab", VOCAB,
        "--weights", checkpoint, "--device", "cpu", "--batch-size", "2", "--opts", *tiny.opts,
    ])
    assert code == 0, err
    info = read_json(out / "clip.json")
    assert info["frames"] == 3 and info["classes"] == CLASSES
    assert info["frame_size"] == {"height": 48, "width": 64}
    capture = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == 3 and frames[0].shape == (48, 64, 3)
    # a video file name, as in the official demo: the overlay video there, its JSON beside it
    target = tmp_path / "videos" / "segmented.mp4"
    code, _, err = run_main(demo_module, capsys, [
        "--config-file", tiny.config, "--video-input", video, "--output", target, "--vocab", VOCAB,
        "--weights", checkpoint, "--device", "cpu", "--opts", *tiny.opts,
    ])
    assert code == 0, err
    assert sorted(p.name for p in target.parent.iterdir()) == ["segmented.json", "segmented.mp4"]
    assert read_json(target.parent / "segmented.json")["outputs"] == {"overlay": "segmented.mp4"}
    capture = cv2.VideoCapture(str(target))
    assert capture.read()[0]
    capture.release()


@pytest.mark.parametrize("stop", ["ctrl_c", "error"])
def test_a_video_stopped_at_its_second_frame(demo_module, capsys, tiny, checkpoint, tmp_path, image_factory,
                                            monkeypatch, stop):
    """Ctrl-C ended a --video-input run with exit status 0 and a JSON of the frames done as if
    that were the whole video; it is an interruption now (130; the frames done and the JSON
    kept, "interrupted": true), and a webcam stream is still stopped this way. An error after
    the first frame (a frame the model could not take, out of memory) left a half-written video
    without its JSON: the video is written under a hidden name and renamed at the end or at
    Ctrl-C, so an error leaves nothing."""
    import cv2

    from cat_seg.api import CATSegError, OpenVocabSegmenter

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    for seed in range(3):
        writer.write(image_factory(seed, 48, 64)[:, :, ::-1].copy())
    writer.release()
    segment, calls = OpenVocabSegmenter.__call__, []

    def stopped_at_the_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt if stop == "ctrl_c" else CATSegError("frame 2 failed")
        return segment(self, *args, **kwargs)

    monkeypatch.setattr(OpenVocabSegmenter, "__call__", stopped_at_the_second_batch)
    out = tmp_path / "out"
    code, _, err = run_main(demo_module, capsys, [
        "--config-file", tiny.config, "--video-input", video, "--output", out, "--vocab", VOCAB,
        "--weights", checkpoint, "--device", "cpu", "--batch-size", "1", "--opts", *tiny.opts,
    ])
    if stop == "ctrl_c":
        assert code == 130 and err.strip().endswith("interrupted")
        info = read_json(out / "clip.json")
        assert info["frames"] == 1 and info["interrupted"] is True
        assert sorted(p.name for p in out.iterdir()) == ["clip.json", "clip_overlay.mp4"]
    else:
        assert code == 2 and "frame 2 failed" in err
        assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("case", [
    "missing_config", "missing_weights", "empty_vocab", "empty_vocab_file", "missing_image", "empty_dir",
    "bad_background", "odd_opts", "no_vocab", "no_display",
])
def test_cli_user_errors(demo_module, capsys, tiny, photo_dir, tmp_path, monkeypatch, case):
    base = {
        "--config-file": tiny.config, "--input": str(photo_dir / "top.jpg"), "--output": str(tmp_path / "out"),
        "--vocab": VOCAB,
    }
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    changes, expected = {
        "missing_config": ({"--config-file": str(tmp_path / "nope.yaml")}, "config file .*nope.yaml.* not found"),
        "missing_weights": ({"--weights": str(tmp_path / "w.pth")}, "weights file .*w.pth.* not found"),
        "empty_vocab": ({"--vocab": " ; "}, "empty vocabulary"),
        "empty_vocab_file": ({"--vocab": None, "--vocab-file": str(tmp_path / "empty.txt")}, "empty vocabulary"),
        "missing_image": ({"--input": str(tmp_path / "gone.jpg")}, "cannot read image .*gone.jpg"),
        "empty_dir": ({"--input": str(tmp_path / "empty")}, "no images found in directory"),
        "bad_background": ({"--background": "2.5"}, "threshold must be in"),
        "odd_opts": ({"--opts": "MODEL.WEIGHTS"}, "KEY VALUE pairs"),
        "no_vocab": ({"--vocab": None, "--opts": "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON"},
                     "no --vocab or --vocab-file given, and the config's MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON cannot "
                     "be used: vocabulary file .*nope.json"),
        "no_display": ({"--output": None}, "cannot show the results in a window: .*--output"),
    }[case]
    if case == "no_display":
        monkeypatch.delenv("DISPLAY", raising=False)
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    base.update(changes)
    args = []
    for key, value in base.items():
        if value is not None:
            args += [key, value]
    if case == "no_vocab":
        args.append(str(tmp_path / "nope.json"))
    code, out, err = run_main(demo_module, capsys, args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert re.search(expected, lines[0]), lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_official_demos_confidence_threshold_is_accepted_and_said_to_be_ignored(demo_module, capsys, tiny,
                                                                                      photo_dir, tmp_path):
    """The official demo takes --confidence-threshold (detectron2's, for instance scores) and
    ignores it for semantic segmentation: a command written for it runs, with a warning."""
    code, _, err = run_main(demo_module, capsys, [
        "--config-file", tiny.config, "--input", str(photo_dir / "top.jpg"), "--output", str(tmp_path / "out"),
        "--vocab", VOCAB, "--device", "cpu", "--confidence-threshold", "0.5", "--opts", *tiny.opts])
    assert code == 0, err
    assert err.startswith("warning: --confidence-threshold 0.5 is ignored: it is detectron2's threshold on instance "
                          "scores") and "use --background THRESH" in err
    assert (tmp_path / "out" / "top_overlay.png").is_file()


def test_outputs_that_cannot_be_written_leave_no_partial_files(demo_module, capsys, tiny, checkpoint, photo_dir,
                                                                tmp_path, monkeypatch):
    """A folder where an output file goes, a file where an output folder goes, or a write that
    fails (a full disk) stop the run with one error line and exit status 2; the image's files
    are written all or none (no overlay without its labels and JSON, no temporary file)."""
    base = ["--config-file", tiny.config, "--weights", checkpoint, "--vocab", VOCAB, "--device", "cpu"]
    opts = ["--opts", *tiny.opts]
    out = tmp_path / "blocked"
    (out / "top_labels.png").mkdir(parents=True)
    code, _, err = run_main(demo_module, capsys, [*base, "--input", photo_dir / "top.jpg", "--output", out, *opts])
    assert code == 2 and err.strip().splitlines() == [
        f"error: cannot write {str(out / 'top_labels.png')!r}: a folder of that name is in the way"]
    assert sorted(p.name for p in out.iterdir()) == ["top_labels.png"]

    out = tmp_path / "file_in_the_way"
    out.mkdir()
    (out / "a").write_text("")
    code, _, err = run_main(demo_module, capsys, [*base, "--input", photo_dir, "--output", out, *opts])
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: cannot create output folder {str(out / 'a')!r}: {str(out / 'a')!r} is a file")

    def disk_full(self, fp, format=None, **params):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    out = tmp_path / "full"
    code, _, err = run_main(demo_module, capsys, [*base, "--input", photo_dir / "top.jpg", "--output", out,
                                                  "--dense-features", *opts])
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: cannot write {str(out / 'top_overlay.png')!r}: No space left on device")
    assert not out.exists() or not any(out.iterdir())
    # the features file is written with the others: its failure leaves none of them either
    monkeypatch.undo()

    def features_disk_full(file, **arrays):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", features_disk_full)
    out = tmp_path / "full_features"
    code, _, err = run_main(demo_module, capsys, [*base, "--input", photo_dir / "top.jpg", "--output", out,
                                                  "--dense-features", *opts])
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: cannot write {str(out / 'top_features.npz')!r}: No space left on device")
    assert not out.exists() or not any(out.iterdir())


def test_output_stems_do_not_collide(demo_module):
    stems = demo_module.output_stems(["p/a/x.png", "p/b/x.png", "p/b/x.jpg", "p/y.png"])
    assert stems == {"p/a/x.png": "a/x", "p/b/x.png": "b/x_png", "p/b/x.jpg": "b/x_jpg", "p/y.png": "y"}
    assert demo_module.output_stems(["only/one.png"]) == {"only/one.png": "one"}
    # a name the extension suffix produces, and names differing only in case, stay distinct
    assert demo_module.output_stems(["p/x.jpg", "p/x.png", "p/x_png.jpg"]) == {
        "p/x.jpg": "x_jpg", "p/x.png": "x_png", "p/x_png.jpg": "x_png_2"}
    assert demo_module.output_stems(["p/x.jpg", "p/x.JPG", "p/X.png"]) == {
        "p/x.jpg": "x_jpg", "p/x.JPG": "x_jpg_2", "p/X.png": "X_png"}


def test_label_png_dtypes(demo_module, tmp_path):
    """uint8 below 255 classes (unlabeled 255), uint16 from 255 on (unlabeled 65535); PNG round trip."""
    for num_classes, dtype, unlabeled in ((3, np.uint8, 255), (300, np.uint16, 65535)):
        labels = np.arange(40 * 30, dtype=np.int32).reshape(40, 30) % num_classes
        labels[0, :5] = -1
        result = SegmentationResult(
            image=np.zeros((40, 30, 3), np.uint8), classes=[f"c{i}" for i in range(num_classes)],
            label_map=labels, probs=torch.zeros(num_classes, 40, 30),
        )
        png = result.label_png()
        assert png.dtype == dtype
        assert (png[0, :5] == unlabeled).all() and np.array_equal(png[labels >= 0], labels[labels >= 0])
        path = tmp_path / f"labels_{num_classes}.png"
        Image.fromarray(png).save(path)
        assert np.array_equal(np.asarray(Image.open(path)).astype(np.int64), png.astype(np.int64))


def test_expand_inputs(demo_module, tmp_path, image_factory):
    """Directories are searched recursively for images; the outputs of an earlier run in the
    output folder are skipped, other images there are inputs (``--output .`` works)."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "out").mkdir()
    for name in ("one.png", "sub/two.JPG", "out/one_overlay.png", "out/one_labels.png", "out/three.png",
                 "sub/four_overlay.png"):
        Image.fromarray(image_factory(0, 8, 8)).save(tmp_path / name, format="PNG")
    # other spellings of JPEG and AVIF are images too (the list was fixed to ten extensions)
    from PIL import features

    avif = features.check("avif")  # a Pillow without AVIF neither writes nor lists it
    Image.fromarray(image_factory(0, 8, 8)).save(tmp_path / "sub" / "five.jfif", format="JPEG")
    Image.fromarray(image_factory(0, 8, 8)).save(tmp_path / "sub" / "six.jpe", format="JPEG")
    if avif:
        Image.fromarray(image_factory(0, 8, 8)).save(tmp_path / "sub" / "seven.avif", format="AVIF")
    (tmp_path / "readme.txt").write_text("skip me")
    (tmp_path / "sub" / "data.h5").write_bytes(b"\x89HDF\r\n\x1a\n")  # Pillow registers .h5, not a photo
    files = demo_module.expand_inputs([str(tmp_path)], exclude=str(tmp_path / "out"))
    assert files == [str(tmp_path / "one.png"), str(tmp_path / "out" / "three.png"),
                     str(tmp_path / "sub" / "five.jfif"), str(tmp_path / "sub" / "four_overlay.png"),
                     *([str(tmp_path / "sub" / "seven.avif")] if avif else []), str(tmp_path / "sub" / "six.jpe"),
                     str(tmp_path / "sub" / "two.JPG")]
    assert demo_module.expand_inputs([str(tmp_path / "sub")], exclude=str(tmp_path)) == [
        str(tmp_path / "sub" / name) for name in ("five.jfif", "seven.avif", "six.jpe", "two.JPG")
        if avif or name != "seven.avif"]
    assert demo_module.expand_inputs([str(tmp_path / "*.png")]) == [str(tmp_path / "one.png")]
    with pytest.raises(demo_module.CATSegError, match="no images match"):
        demo_module.expand_inputs([str(tmp_path / "*.gif")])
    # one file named three ways is segmented once, under the first name
    same = [str(tmp_path / "one.png"), str(tmp_path / "sub" / ".." / "one.png"), str(tmp_path / "*.png")]
    assert demo_module.expand_inputs(same) == [str(tmp_path / "one.png")]


def test_background_option_spellings(demo_module):
    assert demo_module.parse_background(" Prompts") == "prompts"
    assert demo_module.parse_background("0.25") == 0.25
    assert str(demo_module.parse_background("-0")) == "0.0"
    with pytest.raises(demo_module.CATSegError, match="--background must be 'prompts' or a number in"):
        demo_module.parse_background("sky")


def test_output_as_an_image_file_name_takes_the_overlay_as_the_official_demo_does(demo_module, capsys, tiny,
                                                                                  photo_dir, tmp_path):
    """The official demo's --output out.jpg writes the visualisation to that file (here it made
    a folder named out.jpg); the label PNG and the JSON go beside it. Several inputs need a
    folder."""
    base = ["--config-file", tiny.config, "--vocab", VOCAB, "--device", "cpu"]
    target = tmp_path / "results" / "demo_out.jpg"
    code, _, err = run_main(demo_module, capsys, [*base, "--input", str(photo_dir / "top.jpg"), "--output",
                                                  str(target), "--opts", *tiny.opts])
    assert code == 0, err
    assert sorted(p.name for p in target.parent.iterdir()) == ["demo_out.jpg", "demo_out.json", "demo_out_labels.png"]
    with Image.open(target) as written:
        assert written.format == "JPEG" and written.size == Image.open(photo_dir / "top.jpg").size
    info = json.loads((target.parent / "demo_out.json").read_text())
    assert info["outputs"] == {"overlay": "demo_out.jpg", "labels": "demo_out_labels.png"}
    code, _, err = run_main(demo_module, capsys, [*base, "--input", str(photo_dir), "--output", str(tmp_path / "x.png"),
                                                  "--opts", *tiny.opts])
    assert code == 2 and err.strip().splitlines()[-1].startswith(
        f"error: --output '{tmp_path / 'x.png'}' names an image file, which takes one input; ")
    assert not (tmp_path / "x.png").exists()
    # the input itself as the output: refused (its overlay replaced the photo)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes((photo_dir / "top.jpg").read_bytes())
    code, _, err = run_main(demo_module, capsys, [*base, "--input", str(photo), "--output", str(photo),
                                                  "--opts", *tiny.opts])
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: --output '{photo}' is an input image: its overlay would replace it; give another file name or a "
        "folder")
    assert photo.read_bytes() == (photo_dir / "top.jpg").read_bytes()
    # a rerun into a folder that also holds the inputs: the earlier outputs are not inputs
    folder = tmp_path / "shots"
    folder.mkdir()
    (folder / "one.jpg").write_bytes((photo_dir / "top.jpg").read_bytes())
    for _ in range(2):
        code, _, err = run_main(demo_module, capsys, [*base, "--input", str(folder), "--output", str(folder / "out.png"),
                                                      "--opts", *tiny.opts])
        assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["one.jpg", "out.json", "out.png", "out_labels.png"]


def test_an_image_over_pillows_limit_names_the_option_that_lifts_it(demo_module, capsys, tiny, checkpoint,
                                                                    tmp_path, image_factory, monkeypatch):
    """The demo's error said only that Pillow refuses the image (a possible decompression
    bomb), and images between half the limit and the limit printed Pillow's raw warning twice;
    --max-megapixels sets the limit."""
    path = tmp_path / "large.png"
    Image.fromarray(image_factory(3, 20, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 600 pixels: over twice the limit
    base = ["--config-file", tiny.config, "--input", path, "--vocab", VOCAB, "--weights", checkpoint,
            "--device", "cpu", "--opts", *tiny.opts]
    code, _, err = run_main(demo_module, capsys, [*base[:4], "--output", tmp_path / "o1", *base[4:]])
    assert code == 2
    assert err.strip().startswith(f"error: cannot read image '{path}': Image size (600 pixels) exceeds limit of "
                                  "200 pixels")
    assert err.strip().endswith("for an image you trust: --max-megapixels 0 (no limit)")
    # a limit of 500 pixels: refused, the limit named as given
    code, _, err = run_main(demo_module, capsys, [*base[:4], "--output", tmp_path / "o4", "--max-megapixels", "0.0005",
                                                  *base[4:]])
    assert code == 2 and "Image size (600 pixels) exceeds limit of 500 pixels" in err
    # a limit of 1000 pixels: read, without Pillow's warning (600 is over half of it)
    code, _, err = run_main(demo_module, capsys, [*base[:4], "--output", tmp_path / "o2", "--max-megapixels", "0.001",
                                                  *base[4:]])
    assert code == 0, err
    assert "DecompressionBombWarning" not in err
    assert (tmp_path / "o2" / "large_overlay.png").is_file()
    code, _, err = run_main(demo_module, capsys, [*base[:4], "--output", tmp_path / "o3", "--max-megapixels", "-1",
                                                  *base[4:]])
    assert code == 2 and err.strip() == "error: --max-megapixels must be >= 0 (0: no limit), got -1.0"


def test_ctrl_c_before_the_first_result_leaves_no_empty_folders(demo_module, capsys, tiny, checkpoint, photo_dir,
                                                                tmp_path, monkeypatch):
    from cat_seg.api import OpenVocabSegmenter

    def interrupted(self, cfg):
        raise KeyboardInterrupt  # while the model loads

    monkeypatch.setattr(OpenVocabSegmenter, "__init__", interrupted)
    code, _, err = run_main(demo_module, capsys, [
        "--config-file", tiny.config, "--input", photo_dir, "--output", tmp_path / "out" / "deep", "--vocab", VOCAB,
        "--weights", checkpoint, "--device", "cpu", "--opts", *tiny.opts])
    assert code == 130 and err.strip() == "interrupted"
    assert not (tmp_path / "out").exists()
