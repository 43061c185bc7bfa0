"""Robustness of the demo and the Python API (issue: every user error a one-line message).

Each test reproduces one gap: blank class names silently dropped, ``batch_size=-1``,
unknown devices, bad image arguments, a corrupt file stopping a folder run, minutes of hub
retries without internet, and the garbage-checkpoint message advising ``weights_only=False``.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cat_seg.api import (
    CATSegError,
    OpenVocabSegmenter,
    SegmentationResult,
    build_config,
    check_device,
    check_weights_available,
    load_image,
    parse_vocabulary,
    read_vocabulary_file,
)

VOCAB = ["cat", "dog", "grass"]


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------------------ vocabulary
@pytest.mark.parametrize("vocabulary,position", [
    (["", "cat", "dog"], 0),
    (["cat", "   ", "dog"], 1),
    (["cat", "dog", " , "], 2),
    ("cat,,dog", 1),
    ("cat; ;dog", 1),
    (", cat", 0),
])
def test_blank_class_name_is_an_error_naming_its_position(vocabulary, position):
    with pytest.raises(CATSegError, match=f"class name at position {position} of .* is blank") as error:
        parse_vocabulary(vocabulary)
    assert "\n" not in str(error.value)


def test_blank_class_name_through_the_segmenter_and_files(segmenter, images, tmp_path):
    with pytest.raises(CATSegError, match="position 0"):
        segmenter(images[0], ["", "cat", "dog"])
    (tmp_path / "classes.json").write_text(json.dumps(["cat", " ", "dog"]))
    with pytest.raises(CATSegError, match="position 1 of file .*classes.json is blank"):
        read_vocabulary_file(str(tmp_path / "classes.json"))
    # a trailing separator and blank lines of a text file are formatting, not classes
    assert parse_vocabulary("cat, dog,") == ["cat", "dog"]
    (tmp_path / "classes.txt").write_text("cat\n\n   \ndog\n")
    assert read_vocabulary_file(str(tmp_path / "classes.txt")) == ["cat", "dog"]


def test_label_numbers_follow_the_callers_list(segmenter, images):
    """Without blanks, label i is always the caller's i-th name."""
    result = segmenter(images[0], [" cat ", "dog", "grass"])
    assert result.classes == VOCAB
    assert set(np.unique(result.label_map)) <= {0, 1, 2}


# ------------------------------------------------------------------------------ batch size
@pytest.mark.parametrize("batch_size", [-1, 0, 1.5, "2", True])
def test_bad_batch_size_is_a_one_line_error(segmenter, images, batch_size):
    with pytest.raises(CATSegError, match=r"batch_size must be a positive integer or None, got") as error:
        segmenter(images[:2], VOCAB, batch_size=batch_size)
    assert repr(batch_size) in str(error.value)


def test_numpy_integer_batch_size_and_empty_list(segmenter, images):
    batched = segmenter(images[:2], VOCAB, batch_size=np.int64(1))
    assert [r.label_map.shape for r in batched] == [images[0].shape[:2], images[1].shape[:2]]
    assert segmenter([], VOCAB) == []


# ------------------------------------------------------------------------------ devices
def test_unknown_device_names_the_value_and_what_exists():
    with pytest.raises(CATSegError, match=r"unknown device 'tpu': available here: cpu"):
        check_device("tpu")
    with pytest.raises(CATSegError, match="must be a string"):
        check_device(3)
    assert check_device("cpu") == "cpu"
    assert check_device(torch.device("cpu")) == "cpu"


def test_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(CATSegError, match=f"device '{device}' requested but CUDA is not available here"):
            check_device(device)


def test_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(CATSegError, match=r"'cuda:3' does not exist: this machine has 1 CUDA device\(s\) "
                                          r"\(available: cpu, cuda, cuda:0"):
        check_device("cuda:3")
    assert check_device("cuda:0") == "cuda:0"


def test_device_checked_by_the_api(tiny):
    with pytest.raises(CATSegError, match="unknown device 'tpu'"):
        OpenVocabSegmenter.from_config(tiny.config, device="tpu", opts=tiny.opts)
    cfg = build_config(tiny.config, device="cpu", opts=tiny.opts)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "tpu"  # a config built by hand is checked too
    with pytest.raises(CATSegError, match="unknown device 'tpu'"):
        OpenVocabSegmenter(cfg)


# ------------------------------------------------------------------------------ images
def test_image_arguments_give_clear_errors(segmenter, images, tmp_path):
    image = images[0]
    cases = [
        (image.astype(np.float32) / 255, r"dtype float32 \(scale floats in \[0, 1\]"),
        (np.ascontiguousarray(image.transpose(2, 0, 1)), r"got shape \(3, 96, 128\) \(channels first\?"),
        (torch.from_numpy(image.copy()), "torch tensors are not accepted as images"),
        (str(tmp_path), "it is a directory"),
        (None, "unsupported image type NoneType"),
        (np.zeros((0, 5, 3), np.uint8), "empty image"),
        (np.stack([image, image]), r"for a batch, pass a list of \[H, W, 3\] arrays"),
    ]
    for bad, expected in cases:
        with pytest.raises(CATSegError, match=expected) as error:
            segmenter(bad, VOCAB)
        assert "\n" not in str(error.value)
    with pytest.raises(CATSegError, match=r"image at position 1 of 3: unsupported image type int"):
        segmenter([image, 7, image], VOCAB)


def test_single_channel_images_are_grayscale(images):
    gray = images[0][:, :, 0]
    expected = np.repeat(gray[:, :, None], 3, axis=2)
    assert np.array_equal(load_image(gray[:, :, None]), expected)
    assert np.array_equal(load_image(gray), expected)


# ------------------------------------------------------------------------------ checkpoints
def test_garbage_checkpoint_message_has_no_weights_only_advice(tiny, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CATSegError) as error:
        OpenVocabSegmenter.from_config(tiny.config, weights=str(garbage), device="cpu", opts=tiny.opts)
    message = str(error.value)
    assert "\n" not in message and "garbage.pth" in message
    assert "weights_only" not in message and "likely succeed" not in message
    assert "is not a readable torch checkpoint: neither a torch.save zip archive nor a pickle of tensors" in message


class Unpicklable:
    """A class ``torch.load(weights_only=True)`` refuses to unpickle."""


@pytest.mark.parametrize("kind,expected", [
    ("empty", "the file is empty"),
    ("truncated", "a damaged or truncated torch.save zip archive"),
    ("object", r"holds a pickled \S*Unpicklable object"),
])
def test_unreadable_checkpoint_says_what_the_file_is_not(tmp_path, kind, expected):
    from cat_seg.checkpoint import CheckpointFormatError, read_checkpoint

    path = tmp_path / f"{kind}.pth"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save({"model": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:2000])
    else:  # a pickled object of a class weights_only does not allow
        torch.save({"model": {"w": torch.zeros(1)}, "extra": Unpicklable()}, path)
    with pytest.raises(CheckpointFormatError) as error:
        read_checkpoint(str(path))
    message = str(error.value)
    assert re.search(expected, message) and str(path) in message
    assert "\n" not in message and "weights_only" not in message


# ------------------------------------------------------------------------------ offline
def _vitb(tiny):
    return os.path.join(tiny.repo, "configs", "vitb_384.yaml")


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """No internet, an empty hub cache, no proxy, ``HF_HUB_OFFLINE`` unset."""
    import socket

    from huggingface_hub import constants

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for key in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path / "hub"


def test_api_without_weights_offline_fails_with_what_to_pass(tiny, no_network, monkeypatch):
    import detectron2.modeling

    def never(cfg):
        raise AssertionError("the model must not be built (open_clip would retry the download)")

    monkeypatch.setattr(detectron2.modeling, "build_model", never)
    with pytest.raises(CATSegError) as error:
        OpenVocabSegmenter.from_config(_vitb(tiny), device="cpu")
    message = str(error.value)
    assert "\n" not in message
    assert "CLIP weights ViT-B-16/openai" in message and "cannot be reached" in message
    # in the API's terms (the demo's, --weights and --opts, are tested below)
    assert 'opts=["MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", "none"]' in message and "weights=FILE" in message
    assert "--weights" not in message and "--opts" not in message
    assert "open_clip.download_pretrained" in message


def test_cached_clip_weights_need_no_network(tiny, no_network):
    """A hub-cache entry of the CLIP weights (as open_clip downloads them) passes the check."""
    import open_clip

    model_id, filename = os.path.split(open_clip.get_pretrained_cfg("ViT-B-16", "openai")["hf_hub"])
    repo = no_network / f"models--{model_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    cfg = build_config(_vitb(tiny), device="cpu")
    with pytest.raises(CATSegError, match="cannot be reached"):
        check_weights_available(cfg)
    (snapshot / (filename or "open_clip_pytorch_model.bin")).write_bytes(b"weights")
    check_weights_available(cfg)  # no error: open_clip would load the cached file


def test_hf_hub_offline_and_no_weights_needed(tiny, checkpoint, no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CATSegError, match="are not downloaded and HF_HUB_OFFLINE is set"):
        check_weights_available(build_config(_vitb(tiny), device="cpu"))
    check_weights_available(build_config(_vitb(tiny), device="cpu",
                                         opts=["MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", "none"]))
    check_weights_available(build_config(_vitb(tiny), weights=checkpoint, device="cpu"))  # CLIP in the checkpoint
    with pytest.raises(CATSegError, match="CLIP weights file .*clip.pt.* not found"):
        check_weights_available(build_config(_vitb(tiny), device="cpu",
                                             opts=["MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", "/nowhere/clip.pt"]))


def test_a_checkpoint_needs_no_clip_download(tiny, checkpoint, no_network, images):
    """With MODEL.WEIGHTS the CLIP weights come from the checkpoint: a CLIP tag is not fetched.
    (The tiny CLIP has no pretrained tags: fetching one would fail in the model builder.)"""
    opts = tiny.opts + ["MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", "openai"]
    seg = OpenVocabSegmenter.from_config(tiny.config, weights=checkpoint, device="cpu", opts=opts)
    assert seg.cfg.MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS == "none"
    assert seg(images[0], VOCAB).label_map.shape == images[0].shape[:2]
    with pytest.raises(CATSegError, match="CLIP_WEIGHTS='openai' is neither a file nor a pretrained tag"):
        OpenVocabSegmenter.from_config(tiny.config, device="cpu", opts=opts)


def test_demo_default_config_offline_is_one_line_in_seconds(tiny, tmp_path, image_factory):
    """A real process without --config-file (the ViT-B default), offline: exit 2, one line, nothing
    written (it used to retry the hub for about a minute and end in a FileNotFoundError). In
    seconds: the hub (HF_ENDPOINT, a server here that records requests) is asked nothing."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    requests = []

    class Recorder(BaseHTTPRequestHandler):
        def do_HEAD(self):
            requests.append(self.path)
            self.send_response(404)
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args):
            pass

    hub = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    photo = tmp_path / "photo.png"
    Image.fromarray(image_factory(3, 64, 80)).save(photo)
    env = {k: v for k, v in tiny.env.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"),
               HF_ENDPOINT=f"http://127.0.0.1:{hub.server_address[1]}")
    command = [sys.executable, tiny.demo, "--input", str(photo), "--output", str(tmp_path / "out"), "--vocab", "cat"]
    try:
        proc = subprocess.run(command, cwd=str(tmp_path), capture_output=True, text=True, env=env, timeout=1800)
    finally:
        hub.shutdown()
        hub.server_close()
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "HF_HUB_OFFLINE is set" in line and "--opts MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS none" in line
    assert not (tmp_path / "out").exists()
    assert requests == []


# ------------------------------------------------------------------------------ demo CLI
def run_main(demo_module, capsys, args):
    code = demo_module.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def mixed_folder(tmp_path, image_factory):
    """Two good images, a corrupt file that sorts first and a truncated PNG (valid header)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a_corrupt.png").write_bytes(b"\x89PNG but not really")
    Image.fromarray(image_factory(20, 64, 80)).save(folder / "b_good.png")
    Image.fromarray(image_factory(21, 64, 80)).save(folder / "c_truncated.png")
    data = (folder / "c_truncated.png").read_bytes()
    (folder / "c_truncated.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(image_factory(22, 72, 56)).save(folder / "d_good.jpg")
    return folder


def test_folder_run_skips_bad_files(demo_module, capsys, tiny, checkpoint, mixed_folder, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_main(demo_module, capsys, [
        "--config-file", tiny.config, "--input", mixed_folder, "--output", out, "--vocab", "cat, dog",
        "--weights", checkpoint, "--device", "cpu", "--batch-size", "2", "--opts", *tiny.opts,
    ])
    assert code == demo_module.EXIT_SOME_FAILED == 1, err
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{stem}{suffix}" for stem in ("b_good", "d_good")
                             for suffix in (".json", "_labels.png", "_overlay.png"))
    lines = err.strip().splitlines()
    assert lines[0] == "skipped 2 of 4 images that could not be read:"
    assert lines[1].startswith(f"  {mixed_folder / 'a_corrupt.png'}: ")
    assert lines[2].startswith(f"  {mixed_folder / 'c_truncated.png'}: ") and "truncated" in lines[2]
    assert len(lines) == 3


def _failing_on(monkeypatch, height):
    """Make the segmenter raise an unexpected error (as a bug or an out-of-memory error would)
    for any batch holding an image ``height`` rows high (every image for ``height`` None);
    returns the list of batch sizes it was called with."""
    calls = []
    segment = OpenVocabSegmenter.__call__

    def failing(self, images, *args, **kwargs):
        arrays = images if isinstance(images, list) else [images]
        calls.append(len(arrays))
        if height is None or any(a.shape[0] == height for a in arrays):
            raise RuntimeError(f"boom on an image {height} rows high")
        return segment(self, images, *args, **kwargs)

    monkeypatch.setattr(OpenVocabSegmenter, "__call__", failing)
    return calls


def test_an_image_the_model_fails_on_is_skipped_and_the_others_written(
        demo_module, capsys, caplog, tiny, checkpoint, tmp_path, image_factory, monkeypatch):
    """An unexpected error of the model on one image ended the whole folder run with a
    traceback; the batch is segmented again image by image, the failing one is listed (its
    traceback logged once) and the others are written; exit status 1."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, height in (("a", 64), ("b", 72), ("c", 64), ("d", 72), ("e", 64)):
        Image.fromarray(image_factory(30, height, 80)).save(folder / f"{name}.png")
    calls = _failing_on(monkeypatch, 72)
    out = tmp_path / "out"
    code, _, err = run_main(demo_module, capsys, [
        "--config-file", tiny.config, "--input", folder, "--output", out, "--vocab", "cat, dog",
        "--weights", checkpoint, "--device", "cpu", "--batch-size", "2", "--opts", *tiny.opts,
    ])
    assert code == demo_module.EXIT_SOME_FAILED, err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{suffix}" for stem in "ace" for suffix in (".json", "_labels.png", "_overlay.png"))
    # batches (a, b), (c, d), (e): the two failing ones again one image at a time
    assert calls == [2, 1, 1, 2, 1, 1, 1]
    # the first failure's traceback is logged (to stderr in a real process; caught here by pytest)
    logged = [r for r in caplog.records if r.name == "cat_seg.cli.demo"]
    assert [(r.levelname, r.getMessage(), r.exc_info is not None) for r in logged] == [
        ("ERROR", f"cannot segment {folder / 'b.png'}; the demo goes on with the other images", True)]
    summary = err[err.index("skipped 2 of 5 images that could not be segmented"):].splitlines()
    assert summary[1:] == [f"  {folder / name}: RuntimeError: boom on an image 72 rows high"
                           for name in ("b.png", "d.png")]


def test_a_model_that_fails_on_every_image_ends_the_run_with_its_error(
        demo_module, capsys, tiny, checkpoint, tmp_path, image_factory, monkeypatch):
    """Nothing works (a broken set-up, not one odd image): the first images all failing end the
    run with the error itself, instead of a summary of every image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(6):
        Image.fromarray(image_factory(40 + index, 64, 80)).save(folder / f"{index}.png")
    calls = _failing_on(monkeypatch, None)
    with pytest.raises(RuntimeError, match="boom"):
        demo_module.main([str(a) for a in [
            "--config-file", tiny.config, "--input", folder, "--output", tmp_path / "out", "--vocab", "cat",
            "--weights", checkpoint, "--device", "cpu", "--opts", *tiny.opts]])
    assert calls == [1] * demo_module.FAILURES_BEFORE_ANY_SUCCESS


def test_wrapper_exit_codes(tiny, checkpoint, mixed_folder, tmp_path):
    """The ``demo/demo.py`` wrapper (a real process): 1 with some images skipped, 2 when none is
    readable: then a single ``error:`` line, no traceback (a single unreadable file:
    test_cli_user_errors_exit_2, case all_corrupt)."""
    base = [sys.executable, tiny.demo, "--config-file", tiny.config, "--vocab", "cat, dog", "--weights", checkpoint,
            "--device", "cpu"]
    proc = subprocess.run(base + ["--input", str(mixed_folder / "a_corrupt.png"), str(mixed_folder / "b_good.png"),
                                  "--output", str(tmp_path / "out"), "--opts", *tiny.opts],
                          cwd=tiny.repo, capture_output=True, text=True, env=tiny.env, timeout=1800)
    assert proc.returncode == 1, proc.stderr
    assert "skipped 1 of 2 images" in proc.stderr and (tmp_path / "out" / "b_good_labels.png").is_file()
    proc = subprocess.run(base + ["--input", str(mixed_folder / "a_corrupt.png"), str(mixed_folder / "c_truncated.png"),
                                  "--output", str(tmp_path / "none"), "--opts", *tiny.opts],
                          cwd=tiny.repo, capture_output=True, text=True, env=tiny.env, timeout=1800)
    # the truncated PNG has a valid header and fails while running: no image at all, a user error
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: none of the 2 input images can be read") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("case", ["device_tpu", "batch_negative", "output_under_file", "output_is_a_file",
                                  "all_corrupt", "blank_class",
                                  "truncated_only", "inputs_in_output", "dense_features_video"])
def test_cli_user_errors_exit_2(demo_module, capsys, tiny, mixed_folder, tmp_path, case):
    (tmp_path / "file").write_text("a regular file")
    (tmp_path / "earlier").mkdir()
    for name in ("x_overlay.png", "x_labels.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / "earlier" / name)
    args = {"--config-file": tiny.config, "--input": str(mixed_folder / "b_good.png"),
            "--output": str(tmp_path / "out"), "--vocab": "cat, dog", "--device": "cpu"}
    change, expected = {
        "device_tpu": ({"--device": "tpu"}, "unknown device 'tpu': available here: cpu"),
        "batch_negative": ({"--batch-size": "-1"}, "--batch-size must be >= 1, got -1"),
        "output_under_file": ({"--output": str(tmp_path / "file" / "out")}, "cannot create output directory .*file/out"),
        "output_is_a_file": ({"--output": str(tmp_path / "file")}, "^error: --output '.*file' is a file, not a folder"),
        "all_corrupt": ({"--input": str(mixed_folder / "a_corrupt.png")}, "^error: cannot read image .*a_corrupt.png"),
        "blank_class": ({"--vocab": "cat, , dog"}, "class name at position 1 of 'cat, , dog' is blank"),
        # decoding fails while running, after the output folder (and its missing parents) was made
        "truncated_only": ({"--input": str(mixed_folder / "c_truncated.png"), "--output": str(tmp_path / "out/a/b")},
                           "cannot read image .*c_truncated.png.*truncated"),
        "inputs_in_output": ({"--input": str(tmp_path / "earlier"), "--output": str(tmp_path / "earlier")},
                             "no images found in directory .*: its 2 image.s. are outputs of an earlier run in the "
                             "output directory .*earlier.* \\(\\*_overlay.png, \\*_labels.png\\), which are not "
                             "segmented again"),
        "dense_features_video": ({"--input": None, "--video-input": str(tmp_path / "clip.mp4"),
                                  "--dense-features": ""}, "--dense-features writes one file per image"),
    }[case]
    args.update(change)
    argv = [str(x) for kv in args.items() if kv[1] is not None for x in kv if x != ""]
    argv += ["--opts", *tiny.opts]
    if case == "truncated_only":
        argv += ["MODEL.WEIGHTS", ""]  # random weights: the model is built, then decoding fails
    code, _, err = run_main(demo_module, capsys, argv)
    assert code == 2
    assert re.search(expected, one_error_line(err)), err
    assert not (tmp_path / "out").exists()


def test_interactive_config_is_eager_unless_compile_is_asked(tmp_path):
    """MODEL.COMPILE auto (the default: compiled on CUDA for training and evaluation) is
    False for the demo, the web app and the Python API; an explicit True is kept."""
    config = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quick_schedules", "tiny_vitb_cpu.yaml")
    assert build_config(config, device="cpu").MODEL.COMPILE is False
    assert build_config(config, device="cpu", opts=["MODEL.COMPILE", "auto"]).MODEL.COMPILE is False
    assert build_config(config, device="cpu", opts=["MODEL.COMPILE", "True"]).MODEL.COMPILE is True
    # a config built another way, given to the segmenter directly: the same
    from detectron2.config import get_cfg

    from cat_seg import OpenVocabSegmenter, add_cat_seg_config

    cfg = add_cat_seg_config(get_cfg())
    cfg.merge_from_file(config)
    cfg.MODEL.DEVICE, cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED = "cpu", os.path.join(
        os.path.dirname(config), "..", "clip_models", "tiny-vit-b16.json")
    assert cfg.MODEL.COMPILE is None
    assert OpenVocabSegmenter(cfg).cfg.MODEL.COMPILE is False


def test_16_bit_images_are_scaled_to_8_bits(tmp_path):
    """16-bit PNGs, PIL images and uint16 arrays give the same 8-bit image, value / 257 rounded
    (PIL's own RGB conversion would clip every value above 255 to white)."""
    from PIL import Image

    from cat_seg.api import load_image

    gray = (np.arange(48 * 40).reshape(48, 40) * 27).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "gray16.png")
    expected = np.repeat(np.round(gray / 257).astype(np.uint8)[:, :, None], 3, axis=2)
    for image in (str(tmp_path / "gray16.png"), Image.open(tmp_path / "gray16.png"), gray):
        np.testing.assert_array_equal(load_image(image), expected)
    assert 0 < expected.mean() < 255


@pytest.mark.parametrize("height,width", [(40, 2), (2, 2), (2, 40), (40, 1)])
def test_a_drawing_two_pixels_wide(height, width):
    """detectron2's GenericMask takes a mask two columns wide for a polygon list and asserts:
    any image (or display size) 2 pixels wide failed to draw and stopped a demo folder run."""
    labels = np.zeros((height, width), np.int32)
    labels[: height // 2] = 1
    result = SegmentationResult(image=np.full((height, width, 3), 100, np.uint8), classes=["a", "b"],
                                label_map=labels, probs=torch.rand(2, height, width))
    overlay = result.overlay()
    assert overlay.shape == (height, width, 3)
    if height == 40:  # the segments were drawn (a 2x2 image's are too small for detectron2 to draw)
        assert (overlay != 100).any()


def test_an_image_over_pillows_size_limit_says_how_to_lift_it(tmp_path, monkeypatch):
    """Pillow refuses images over MAX_IMAGE_PIXELS (about 179 MP) as possible decompression
    bombs: the error says so and how to lift the limit for a trusted image."""
    path = tmp_path / "large.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 600 pixels: over twice the limit
    with pytest.raises(CATSegError) as info:
        load_image(str(path))
    assert str(info.value).endswith("for an image you trust, lift the limit in Python with "
                                    "PIL.Image.MAX_IMAGE_PIXELS = None before segmenting it")


def test_class_names_at_an_edge_are_drawn_inside_the_image(monkeypatch):
    """detectron2 centres a name on its segment: a segment at the image's edge had its name cut
    off there ("class 10" on a strip at the right edge of a 300x20 image)."""
    import cat_seg.api as api

    height, width = 20, 300
    labels = np.zeros((height, width), np.int32)
    labels[:, 280:] = 1
    result = SegmentationResult(image=np.full((height, width, 3), 100, np.uint8), classes=["sky", "class 10"],
                                label_map=labels, probs=torch.rand(2, height, width))
    boxes = []
    keep_inside = api._keep_texts_inside

    def recording(output):
        keep_inside(output)
        renderer = output.fig.canvas.get_renderer()
        boxes.extend((t.get_text(), t.get_window_extent(renderer)) for t in output.ax.texts)
        boxes.append(("figure", output.fig.canvas.get_width_height()))

    monkeypatch.setattr(api, "_keep_texts_inside", recording)
    result.overlay(legend=False)
    figure_width, figure_height = boxes.pop()[1]
    assert {name for name, _ in boxes} == {"sky", "class 10"}
    for name, box in boxes:
        assert -0.5 <= box.x0 and box.x1 <= figure_width + 0.5, (name, box)
        assert -0.5 <= box.y0 and box.y1 <= figure_height + 0.5, (name, box)
