"""cat-seg-train / train_net.py: user mistakes are one ``error:`` line and exit status 2,
found before any process starts; internal errors keep their traceback."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cat_seg.cli import train_net
from cat_seg.cli.errors import UserError, closest_key, merge_config, run_main

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs/quick_schedules/tiny_vitb_cpu.yaml")


def one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_misspelt_key_on_command_line_names_closest_key(capsys, tmp_path):
    assert train_net.main(["--config-file", TINY, "OUTPUT_DIR", str(tmp_path / "o"), "SOLVER.MAX_ITERS", "3"]) == 2
    assert one_error_line(capsys) == ("error: unknown config key 'SOLVER.MAX_ITERS' in the command line; "
                                      "did you mean 'SOLVER.MAX_ITER'?")
    assert not (tmp_path / "o").exists()


def test_misspelt_key_in_config_file_names_file_and_closest_key(capsys, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text(f"_BASE_: {TINY}\nMODEL:\n  SEM_SEG_HEAD:\n    NUM_CLASES: 3\n")
    assert train_net.main(["--config-file", str(config)]) == 2
    assert one_error_line(capsys) == (f"error: unknown config key 'MODEL.SEM_SEG_HEAD.NUM_CLASES' in config file "
                                      f"'{config}'; did you mean 'MODEL.SEM_SEG_HEAD.NUM_CLASSES'?")


def test_wrong_value_type_and_yaml_error_are_one_line(capsys, tmp_path):
    assert train_net.main(["--config-file", TINY, "SOLVER.MAX_ITER", "abc"]) == 2
    err = one_error_line(capsys)
    assert "SOLVER.MAX_ITER" in err and "abc" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("SOLVER:\n  BASE_LR: [\n")
    assert train_net.main(["--config-file", str(broken)]) == 2
    assert f"bad config file '{broken}'" in one_error_line(capsys)


def test_an_option_after_opts_says_opts_comes_last():
    """demo.py ... --opts KEY VALUE --output DIR said "unknown config key '--output' in the
    command line; did you mean 'OUTPUT_DIR'?"."""
    from detectron2.config import get_cfg

    from cat_seg.config import add_cat_seg_config

    with pytest.raises(UserError) as info:
        merge_config(add_cat_seg_config(get_cfg()), None, ["TEST.SLIDING_WINDOW", "True", "--output", "out"])
    assert str(info.value) == ("'--output' among the config overrides: the KEY VALUE pairs (after --opts, or after "
                               "train_net.py's and eval.sh's own arguments) take the rest of the command line, so they "
                               "must come last (put the other options before them)")


@pytest.mark.parametrize("text, held", [("", "nothing"), ("# only a comment\n", "nothing"), ("- a\n- b\n", "a YAML list")])
def test_config_file_that_is_not_a_mapping_says_what_it_holds(capsys, tmp_path, text, held):
    """An empty config file (or a list) was detectron2's "TypeError: argument of type 'NoneType'
    is not iterable"; also when it is the _BASE_ of the given file."""
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: empty.yaml\nSOLVER:\n  MAX_ITER: 5\n")
    for given in (empty, child):
        assert train_net.main(["--config-file", str(given), "--check-only"]) == 2
        assert one_error_line(capsys) == (f"error: bad config file '{given}': '{empty}' holds {held}; expected a YAML "
                                          "mapping of config keys (KEY: value lines, e.g. _BASE_: "
                                          "configs/vitb_384.yaml)")


def test_missing_config_file(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    assert train_net.main(["--config-file", str(missing)]) == 2
    assert one_error_line(capsys) == f"error: config file '{missing}' not found"
    assert train_net.main([]) == 2
    assert "no --config-file given" in one_error_line(capsys)


def test_output_dir_under_a_regular_file(capsys, tmp_path):
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    assert train_net.main(["--config-file", TINY, "OUTPUT_DIR", str(regular / "run")]) == 2
    assert one_error_line(capsys) == (f"error: OUTPUT_DIR '{regular / 'run'}' lies under '{regular}', which is a "
                                      f"regular file; expected a writable folder")
    assert train_net.main(["--config-file", TINY, "OUTPUT_DIR", str(regular)]) == 2
    assert "is a regular file" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_output_dir_not_writable(capsys, tmp_path, monkeypatch):
    # os.access is what says "read-only mount" or "no permission"; root passes chmod, so the
    # answer of a read-only file system is simulated
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    assert train_net.main(["--config-file", TINY, "OUTPUT_DIR", str(tmp_path / "a" / "b")]) == 2
    assert one_error_line(capsys) == (f"error: OUTPUT_DIR '{tmp_path / 'a' / 'b'}' would be created in "
                                      f"'{tmp_path}', which is not writable (read-only or no permission); "
                                      f"expected a writable folder")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_output_dir_where_no_folder_can_be_created(capsys):
    """/proc passes the permission test (for root) but takes no new folder: the run's set-up
    then failed with a 30-line traceback; a folder is now created (and removed) to find out."""
    assert train_net.main(["--config-file", TINY, "--check-only", "OUTPUT_DIR", "/proc/cat_seg_run"]) == 2
    assert one_error_line(capsys).startswith("error: OUTPUT_DIR '/proc/cat_seg_run' would be created in '/proc', "
                                             "which is not writable (")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_output_dir_read_only_folder(capsys, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert train_net.main(["--config-file", TINY, "OUTPUT_DIR", str(folder)]) == 2
        assert "is not writable" in one_error_line(capsys)
    finally:
        folder.chmod(0o755)


def test_eval_only_needs_existing_weights(capsys, tmp_path):
    base = ["--config-file", TINY, "--eval-only", "OUTPUT_DIR", str(tmp_path / "o")]
    assert train_net.main(base + ["MODEL.WEIGHTS", str(tmp_path / "missing.pth")]) == 2
    assert one_error_line(capsys) == (f"error: MODEL.WEIGHTS '{tmp_path / 'missing.pth'}' not found; expected a "
                                      f"checkpoint file (.pth/.pkl) for --eval-only")
    assert train_net.main(base + ["MODEL.WEIGHTS", ""]) == 2
    assert "--eval-only needs MODEL.WEIGHTS" in one_error_line(capsys)
    # a copy or download cut short is found before any process starts, without reading the file
    whole, cut = tmp_path / "whole.pth", tmp_path / "cut.pth"
    torch.save({"model": {"x": torch.zeros(1000)}}, whole)
    cut.write_bytes(whole.read_bytes()[:2000])
    assert train_net.main(base + ["MODEL.WEIGHTS", str(cut)]) == 2
    assert one_error_line(capsys) == (f"error: MODEL.WEIGHTS: {cut} is not a readable torch checkpoint: a damaged or "
                                      "truncated torch.save zip archive")
    cut.write_bytes(b"")
    assert train_net.main(base + ["MODEL.WEIGHTS", str(cut)]) == 2
    assert one_error_line(capsys) == f"error: MODEL.WEIGHTS: {cut} is not a readable torch checkpoint: the file is empty"


def test_check_only_accepts_a_good_command_and_creates_nothing(capsys, tmp_path, synthetic_registered,
                                                              tiny_checkpoint):
    code = train_net.main(["--config-file", TINY, "--check-only", "--eval-only", "OUTPUT_DIR", str(tmp_path / "o"),
                           "MODEL.WEIGHTS", tiny_checkpoint, "DATASETS.TEST", "('synthetic_val_sem_seg',)"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.startswith("ok: config") and tiny_checkpoint in out.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # data: the fixture's benchmark


def test_a_checkpoint_of_another_model_is_found_before_any_process_starts(capsys, tmp_path, tiny_model):
    """A checkpoint whose tensors do not fit the config's model (the L-like model's with the
    B-like config) is one line from its shapes alone (loaded on the meta device), not an error
    at the load after the set-up."""
    other = tmp_path / "large.pth"
    torch.save({"model": tiny_model("l").state_dict()}, other)
    base = ["--config-file", TINY, "--check-only", "OUTPUT_DIR", str(tmp_path / "o"), "MODEL.WEIGHTS", str(other)]
    for mode in (["--eval-only"], []):  # the checkpoint to evaluate, or to start training from
        assert train_net.main(mode + base) == 2
        line = one_error_line(capsys)
        assert line.startswith(f"error: MODEL.WEIGHTS: checkpoint {other} does not fit the model (its CLIP image "
                               "tower has width "), line
        assert "shape mismatch(es)" in line and "does the config match the checkpoint?" in line
    not_ours = tmp_path / "other.pth"
    torch.save({"model": {"encoder.weight": torch.zeros(2)}}, not_ours)
    assert train_net.main(["--eval-only"] + base[:-1] + [str(not_ours)]) == 2
    assert one_error_line(capsys).startswith(f"error: MODEL.WEIGHTS: {not_ours}: neither the official CAT-Seg "
                                             "layout")
    assert not (tmp_path / "o").exists()


def test_bad_process_counts_and_options_after_pairs(capsys):
    assert train_net.main(["--config-file", TINY, "--num-gpus", "0"]) == 2
    assert "expected --num-gpus >= 1" in one_error_line(capsys)
    assert train_net.main(["--config-file", TINY, "SOLVER.MAX_ITER", "3", "--resume"]) == 2
    assert "options (--...) go before the KEY VALUE pairs" in one_error_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback of MODEL.DEVICE cuda needs a machine without CUDA")
def test_cuda_without_a_gpu_runs_on_the_cpu_with_a_warning(caplog, tmp_path, synthetic_registered):
    """MODEL.DEVICE cuda (detectron2's default) on a machine without CUDA: the run uses the CPU,
    which was not said anywhere (a broken driver became a silent, very slow CPU run)."""
    with caplog.at_level("WARNING", logger="cat_seg"):
        assert train_net.main(["--config-file", TINY, "--check-only", "OUTPUT_DIR", str(tmp_path / "o"),
                               "DATASETS.TRAIN", "('synthetic_train_sem_seg',)", "DATASETS.TEST", "()",
                               "MODEL.DEVICE", "cuda"]) == 0
    assert "MODEL.DEVICE cuda: no CUDA device is available here; the run uses the CPU" in caplog.text


def test_unsupported_detectron2_options_are_not_ignored_silently(capsys, caplog, tmp_path, synthetic_registered):
    """A training sampler cat-seg does not implement is an error; SOLVER.AMP.ENABLED, which
    MODEL.PRECISION replaces, a warning that names the precision in use."""
    assert train_net.main(["--config-file", TINY, "--check-only", "OUTPUT_DIR", str(tmp_path / "o"),
                           "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
                           "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler"]) == 2
    assert one_error_line(capsys).startswith(
        "error: DATALOADER.SAMPLER_TRAIN='RepeatFactorTrainingSampler' is not supported: cat-seg behaves as "
        "'TrainingSampler'")
    # detectron2's bias rules, which the official solver does not have, were ignored silently
    for key, value, default in (("SOLVER.BIAS_LR_FACTOR", "2.0", "1.0"), ("SOLVER.WEIGHT_DECAY_BIAS", "0.0", "None")):
        assert train_net.main(["--config-file", TINY, "--check-only", "OUTPUT_DIR", str(tmp_path / "o"),
                               "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", key, value]) == 2
        assert one_error_line(capsys).startswith(f"error: {key}={value} is not supported: cat-seg behaves as {default} "
                                                 "(a bias gets ")
    with caplog.at_level("WARNING", logger="cat_seg"):
        assert train_net.main(["--config-file", TINY, "--check-only", "OUTPUT_DIR", str(tmp_path / "o"),
                               "DATASETS.TRAIN", "('synthetic_train_sem_seg',)", "DATASETS.TEST", "()",
                               "SOLVER.AMP.ENABLED", "True"]) == 0
    assert "SOLVER.AMP.ENABLED=True is not supported" in caplog.text
    assert "MODEL.PRECISION is 'fp32'" in caplog.text
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("override, expected", [
    (["MODEL.PRECISION", "fp64"], "MODEL.PRECISION='fp64': expected one of auto, fp32, bf16, fp16"),
    (["MODEL.SEM_SEG_HEAD.CLIP_FINETUNE", "foo"], "MODEL.SEM_SEG_HEAD.CLIP_FINETUNE='foo': expected one of attention"),
    (["MODEL.SEM_SEG_HEAD.ATTENTION_TYPE", "foo"], "MODEL.SEM_SEG_HEAD.ATTENTION_TYPE='foo': expected one of full, linear"),
    (["MODEL.PROMPT_ENSEMBLE_TYPE", "foo"], "MODEL.PROMPT_ENSEMBLE_TYPE='foo' is unknown"),
    (["MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED", "ViT-X/99"], "CLIP_PRETRAINED='ViT-X/99' is neither an official name"),
    (["MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", "/nowhere/clip.pth"], "CLIP weights file '/nowhere/clip.pth' \\(MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS\\) not found"),
    (["MODEL.DEVICE", "gpu"], "MODEL.DEVICE='gpu': expected cpu, cuda or cuda:N"),
    (["MODEL.SEM_SEG_HEAD.POOLING_SIZES", "[1, 1, 1]"], r"POOLING_SIZES=\[1, 1, 1\]: expected two positive integers"),
    (["MODEL.SEM_SEG_HEAD.TEST_POOLING_SIZES", "[0, 0]"], r"TEST_POOLING_SIZES=\[0, 0\]: expected two positive"),
    (["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH=0: expected a positive multiple of the 1 training"),
    (["SOLVER.IMS_PER_BATCH", "3", "--num-gpus", "2"], "SOLVER.IMS_PER_BATCH=3: expected a positive multiple of the 2"),
    (["MODEL.COMPILE", "sometimes"], "MODEL.COMPILE='sometimes': expected True, False or auto"),
    (["SOLVER.OPTIMIZER", "ADAM"], "SOLVER.OPTIMIZER='ADAM': expected one of ADAMW, SGD"),
    (["SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "foo"], "CLIP_TYPE='foo': expected one of full_model, value, norm"),
    (["MODEL.WEIGHTS", "/nowhere/start.pth"], "MODEL.WEIGHTS '/nowhere/start.pth' not found; expected a checkpoint"),
])
def test_bad_values_are_found_before_any_process_starts(capsys, tmp_path, override, expected):
    """What the model, the CLIP builder or the trainer would reject after starting (with a
    traceback, files written) is one line from --check-only already."""
    import re

    options = [o for o in override if o.startswith("--")]
    options += [override[override.index(o) + 1] for o in options]
    pairs = [o for o in override if o not in options]
    argv = ["--config-file", TINY, "--check-only", *options, "OUTPUT_DIR", str(tmp_path / "o"), *pairs]
    assert train_net.main(argv) == 2
    assert re.search(expected, one_error_line(capsys))
    assert not (tmp_path / "o").exists()


@pytest.fixture
def synthetic_registered(tmp_path):
    """A one-image synthetic benchmark registered with detectron2 (the default root again afterwards)."""
    from cat_seg.data.datasets import register_all
    from cat_seg.data.synthetic import generate_synthetic

    generate_synthetic(tmp_path / "data", num_train=1, num_val=1, image_size=64, seed=0, verbose=False)
    register_all(tmp_path / "data")
    yield
    register_all()


def test_vocabulary_of_another_dataset_is_found_before_starting(capsys, tmp_path, synthetic_registered):
    assert train_net.main(["--config-file", TINY, "--check-only", "OUTPUT_DIR", str(tmp_path / "o"),
                           "DATASETS.TRAIN", "('synthetic_train_sem_seg',)", "DATASETS.TEST",
                           "('synthetic_val_sem_seg',)", "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON", "datasets/ade150.json"]) == 2
    assert one_error_line(capsys) == (
        "error: MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON=datasets/ade150.json has 150 classes but dataset "
        "synthetic_val_sem_seg has 16: use the dataset's class json")


def test_training_vocabulary_against_the_training_dataset(capsys, caplog, tmp_path, synthetic_registered):
    """Labels index TRAIN_CLASS_JSON: fewer names than the training dataset's classes is an
    error before starting; more is allowed (trained as negatives only) with a warning, and so
    are names other than the dataset's (rewordings, or another dataset's list)."""
    import json

    from cat_seg.data.synthetic import train_class_names, val_class_names

    base = ["--config-file", TINY, "--check-only", "OUTPUT_DIR", str(tmp_path / "o"),
            "DATASETS.TRAIN", "('synthetic_train_sem_seg',)", "DATASETS.TEST", "()"]
    short, extended, other = tmp_path / "short.json", tmp_path / "extended.json", tmp_path / "other.json"
    short.write_text(json.dumps([f"class {i}" for i in range(5)]))
    extended.write_text(json.dumps(train_class_names() + ["sky", "road"]))
    other.write_text(json.dumps(val_class_names()))  # the val split's 16 classes: another order
    assert train_net.main([*base, "MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON", str(short)]) == 2
    assert one_error_line(capsys) == (
        f"error: MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON={short} has 5 classes but training dataset "
        "synthetic_train_sem_seg has 12: its labels index the json; use the dataset's class json")
    with caplog.at_level("WARNING", logger="cat_seg"):
        assert train_net.main([*base, "MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON", str(extended)]) == 0
    assert "has 14 classes but training dataset synthetic_train_sem_seg has 12: the last 2 names are trained as " \
           "negatives only" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="cat_seg"):
        assert train_net.main([*base, "MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON", str(other)]) == 0
    train, val = train_class_names(), val_class_names()
    first = next(i for i in range(12) if train[i] != val[i])
    assert (f"names {sum(a != b for a, b in zip(train, val))} of the 12 classes of training dataset "
            f"synthetic_train_sem_seg differently (label {first} is {train[first]!r} there, {val[first]!r} in the "
            "json): label i is trained with the json's i-th name") in caplog.text
    assert "negatives only" not in caplog.text
    # the loss and the crop skip IGNORE_VALUE: another value than the dataset's would train its
    # unlabelled pixels as a class
    assert train_net.main([*base, "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "254"]) == 2
    assert one_error_line(capsys) == (
        "error: training dataset synthetic_train_sem_seg marks unlabelled pixels with 255 (its ignore_label) but "
        "MODEL.SEM_SEG_HEAD.IGNORE_VALUE is 254: set MODEL.SEM_SEG_HEAD.IGNORE_VALUE 255")


def test_resume_from_a_checkpoint_that_is_gone(capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "last_checkpoint").write_text("model_final.pth")
    assert train_net.main(["--config-file", TINY, "--check-only", "--resume", "OUTPUT_DIR", str(out),
                           "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]) == 2
    assert one_error_line(capsys) == (f"error: --resume: {out / 'last_checkpoint'} names 'model_final.pth', which "
                                      f"is not in OUTPUT_DIR; restore the file, or delete last_checkpoint to start "
                                      f"from MODEL.WEIGHTS")


def test_resume_from_a_damaged_or_foreign_checkpoint_is_one_line_before_the_run(capsys, tmp_path, tiny_checkpoint,
                                                                              tiny_model):
    """The checkpoint last_checkpoint names was checked for existence only: a truncated file, or
    one of another model, passed --check-only and stopped the run after its set-up had
    rewritten config.yaml and log.txt."""
    import shutil

    out = tmp_path / "o"
    out.mkdir()
    (out / "last_checkpoint").write_text("model_0000009.pth")
    data = open(tiny_checkpoint, "rb").read()
    (out / "model_0000009.pth").write_bytes(data[: len(data) // 2])
    base = ["--config-file", TINY, "--check-only", "--resume", "OUTPUT_DIR", str(out), "DATASETS.TRAIN", "()",
            "DATASETS.TEST", "()"]
    assert train_net.main(base) == 2
    assert one_error_line(capsys) == (
        f"error: --resume: {out / 'model_0000009.pth'} is not a readable torch checkpoint: a damaged or truncated "
        "torch.save zip archive; point last_checkpoint at an earlier checkpoint of the run, or delete it to start "
        "from MODEL.WEIGHTS")
    torch.save({"model": tiny_model("l").state_dict()}, out / "model_0000009.pth")
    assert train_net.main(base) == 2
    assert one_error_line(capsys).startswith(f"error: --resume: checkpoint {out / 'model_0000009.pth'} does not fit "
                                             "the model")
    shutil.copy(tiny_checkpoint, out / "model_0000009.pth")  # weights only (as an official release): no run state
    assert train_net.main(base) == 2
    assert one_error_line(capsys) == (
        f"error: --resume: {out / 'model_0000009.pth'} holds no training state (not a checkpoint of a cat-seg run: "
        "a converted release or a bare state dict); train from its weights with MODEL.WEIGHTS <file> "
        "without --resume, in another OUTPUT_DIR")
    torch.save({**torch.load(tiny_checkpoint, weights_only=True), "iteration": 9}, out / "model_0000009.pth")
    assert train_net.main(base) == 2  # the checkpoint fits: the next check (no training data) speaks
    assert one_error_line(capsys).startswith("error: DATASETS.TRAIN is empty")
    # --eval-only --resume evaluates the run's checkpoint (detectron2's rule): a MODEL.WEIGHTS given too is named
    train_net.main(["--eval-only", *base, "MODEL.WEIGHTS", tiny_checkpoint])
    assert (f"--eval-only --resume: the run's last checkpoint in {out} is evaluated; MODEL.WEIGHTS "
            f"{tiny_checkpoint!r} is not used (without --resume it is)") in capsys.readouterr().out


def test_a_previous_run_without_resume_is_warned_about(capsys, caplog, tmp_path, synthetic_registered):
    out = tmp_path / "o"
    out.mkdir()
    (out / "last_checkpoint").write_text("model_final.pth")
    (out / "model_final.pth").write_bytes(b"")
    with caplog.at_level("WARNING", logger="cat_seg"):
        assert train_net.main(["--config-file", TINY, "--check-only", "OUTPUT_DIR", str(out),
                               "DATASETS.TRAIN", "('synthetic_train_sem_seg',)", "DATASETS.TEST", "()"]) == 0
    assert "holds a run (last_checkpoint) and --resume is not given" in caplog.text


def test_resume_without_a_run_says_where_training_starts(capsys, tmp_path, synthetic_registered):
    """--resume with an OUTPUT_DIR that holds no run (a first run of run.sh, or a mistyped
    folder): a line names the folder and where training starts (printed: the checks run before
    logging is set up)."""
    assert train_net.main(["--config-file", TINY, "--check-only", "--resume", "OUTPUT_DIR", str(tmp_path / "moved"),
                           "DATASETS.TRAIN", "('synthetic_train_sem_seg',)", "DATASETS.TEST", "()"]) == 0
    assert (f"--resume: OUTPUT_DIR '{tmp_path / 'moved'}' holds no run to resume (no last_checkpoint): training "
            "starts at iteration 0 from CLIP's weights and a new head\n") in capsys.readouterr().out


def test_nothing_to_train_on_or_to_evaluate_is_one_line(capsys, tmp_path, tiny_checkpoint):
    """An empty DATASETS.TRAIN failed in the data loader with a traceback; --eval-only with an
    empty DATASETS.TEST evaluated nothing and exited 0."""
    assert train_net.main(["--config-file", TINY, "--check-only", "OUTPUT_DIR", str(tmp_path / "o"),
                           "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]) == 2
    assert one_error_line(capsys).startswith("error: DATASETS.TRAIN is empty: nothing to train on")
    weights = tiny_checkpoint
    assert train_net.main(["--config-file", TINY, "--eval-only", "MODEL.WEIGHTS", str(weights),
                           "OUTPUT_DIR", str(tmp_path / "o"), "DATASETS.TEST", "()"]) == 2
    assert one_error_line(capsys).startswith("error: --eval-only with DATASETS.TEST empty has nothing to evaluate")


def test_unregistered_dataset_is_named(capsys, tmp_path, tiny_checkpoint):
    weights = tiny_checkpoint
    assert train_net.main(["--config-file", TINY, "--eval-only", "MODEL.WEIGHTS", str(weights),
                           "OUTPUT_DIR", str(tmp_path / "o"), "DATASETS.TEST", "('synthetic_vall_sem_seg',)"]) == 2
    assert one_error_line(capsys) == ("error: dataset 'synthetic_vall_sem_seg' (DATASETS.TEST) is not registered; "
                                      "did you mean 'synthetic_val_sem_seg'?")
    assert train_net.main(["--config-file", TINY, "--eval-only", "MODEL.WEIGHTS", str(weights),
                           "OUTPUT_DIR", str(tmp_path / "o"), "DATASETS.TEST", "('my_own_images',)"]) == 2
    assert one_error_line(capsys) == ("error: dataset 'my_own_images' (DATASETS.TEST) is not registered; the "
                                      "benchmarks are listed in docs/datasets.md; register a dataset of your own "
                                      "with cat_seg.data.datasets.register_sem_seg_folder (docs/datasets.md, 'Your "
                                      "own dataset')")
    # the closest semantic-segmentation dataset, not one of detectron2's detection datasets, whose
    # loader (followed as a hint) ended in a FileNotFoundError traceback
    assert train_net.main(["--config-file", TINY, "--check-only", "OUTPUT_DIR", str(tmp_path / "o"),
                           "DATASETS.TEST", "()", "DATASETS.TRAIN", "('foo_train',)"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("error: dataset 'foo_train' (DATASETS.TRAIN) is not registered; ")
    assert "coco_2017_train'" not in line  # was: did you mean 'coco_2017_train'?
    assert train_net.main(["--config-file", TINY, "--check-only", "OUTPUT_DIR", str(tmp_path / "o"),
                           "DATASETS.TEST", "()", "DATASETS.TRAIN", "('coco_2017_train',)"]) == 2
    assert one_error_line(capsys).startswith("error: dataset 'coco_2017_train': cannot load it (FileNotFoundError: ")


def test_run_main_keeps_tracebacks_of_internal_errors(capsys, monkeypatch):
    def internal(argv):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_main(internal, [])

    def mistake(argv):
        raise UserError("bad value\nsecond line")

    assert run_main(mistake, []) == 2
    assert capsys.readouterr().err == "error: bad value second line\n"
    assert run_main(lambda argv: None, []) == 0 and run_main(lambda argv: 3, []) == 3
    monkeypatch.setenv("CATSEG_DEBUG", "1")
    with pytest.raises(UserError):
        run_main(mistake, [])


def test_merge_config_and_closest_key(tmp_path):
    from detectron2.config import get_cfg

    from cat_seg import add_cat_seg_config

    cfg = add_cat_seg_config(get_cfg())
    assert closest_key(cfg, "model.weights") == "MODEL.WEIGHTS"
    assert closest_key(cfg, "OUTPT_DIR") == "OUTPUT_DIR"
    assert closest_key(cfg, "QQQQQQQQ.ZZZZZZ") is None
    merge_config(cfg, TINY, ["SOLVER.MAX_ITER", "7"])
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.PRECISION == "fp32"
    with pytest.raises(UserError, match="not a cat-seg/detectron2 config key .* registered by its script with "
                                        "cat_seg.register_config_keys"):
        merge_config(cfg, None, ["QQQQQQQQ.ZZZZZZ", "1"])
    with pytest.raises(UserError, match="odd number"):
        merge_config(cfg, None, ["SOLVER.MAX_ITER"])


@pytest.mark.parametrize("script", ["train_net.py", "-m cat_seg.cli.train_net"])
def test_script_prints_one_line_even_with_several_processes(script, tmp_path):
    """The wrapper (and the module) with --num-gpus 2: the check runs before launch, so no
    process starts and stderr is exactly one line."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, *script.split(), "--config-file", TINY, "--num-gpus", "2",
               "OUTPUT_DIR", str(tmp_path / "o"), "SOLVER.MAX_ITERS", "3"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800)  # hang guard only
    assert proc.returncode == 2, proc.stderr
    expected = "error: unknown config key 'SOLVER.MAX_ITERS' in the command line; did you mean 'SOLVER.MAX_ITER'?\n"
    if script == "train_net.py":
        assert proc.stderr == expected
    else:  # importing cat_seg may print torch's TorchScript deprecation warning first
        assert proc.stderr.endswith(expected) and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


class _UnreadableDataset:
    def __len__(self):
        return 2

    def __getitem__(self, index):
        from cat_seg.data.datasets import DatasetFileError

        raise DatasetFileError(f"cannot read image photo_{index}.jpg: image file is\ntruncated")


def test_dataset_error_in_a_dataloader_worker_is_its_own_one_line(capsys):
    """torch re-raises a worker's error with the worker's traceback as its message: the line
    printed is the original message."""
    import torch.utils.data

    from cat_seg.data.datasets import DatasetError

    loader = torch.utils.data.DataLoader(_UnreadableDataset(), num_workers=1)
    assert run_main(lambda argv: next(iter(loader)), [], user_errors=(DatasetError,)) == 2
    assert one_error_line(capsys) == "error: cannot read image photo_0.jpg: image file is truncated"


def test_weights_given_means_no_clip_download(tmp_path):
    """With MODEL.WEIGHTS set, CLIP comes from the checkpoint (loaded strictly): CLIP_WEIGHTS
    becomes none, so an official .pth given as it is needs no CLIP download (nor a network)."""
    args = train_net.build_parser().parse_args(
        ["--config-file", TINY, "MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", "openai", "MODEL.WEIGHTS", str(tmp_path / "w.pth")])
    assert train_net.load_config(args).MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS == "none"
    args = train_net.build_parser().parse_args(["--config-file", TINY, "MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", "openai"])
    assert train_net.load_config(args).MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS == "openai"  # training from CLIP


def test_process_options_default_to_a_free_port_on_one_machine():
    args = train_net.build_parser().parse_args(["--config-file", TINY, "--num-gpus", "2"])
    train_net.check_launch(args)
    assert args.dist_url == "auto"  # detectron2's fixed per-user port made two runs collide
    # env:// (MASTER_ADDR / MASTER_PORT, as cluster launchers set them) is passed on as it is
    args = train_net.build_parser().parse_args(["--config-file", TINY, "--num-gpus", "2", "--num-machines", "2",
                                                "--dist-url", "env://"])
    train_net.check_launch(args)
    assert args.dist_url == "env://"


@pytest.mark.parametrize("options,message", [
    (["--num-machines", "2"], "--num-machines 2 needs --dist-url tcp://HOST:PORT"),
    (["--num-machines", "2", "--dist-url", "auto"], "--dist-url auto picks a port of one machine"),
    (["--num-machines", "2", "--dist-url", "tcp://127.0.0.1:29500"], "is this machine only"),
    (["--num-machines", "2", "--dist-url", "tcp://localhost:29500"], "is this machine only"),
    (["--num-gpus", "2", "--dist-url", "foo://bar"], "expected auto, tcp://HOST:PORT, env:// or file:///PATH"),
    (["--num-gpus", "2", "--dist-url", "tcp://127.0.0.1:99999"], "port in 1..65535"),
    (["--num-gpus", "2", "--dist-url", "tcp://127.0.0.1"], "port in 1..65535"),
    (["--num-gpus", "2", "--dist-url", "tcp://no-such-host.invalid:29500"], "cannot resolve 'no-such-host.invalid'"),
])
def test_bad_process_options_are_one_line_before_starting(capsys, tmp_path, options, message):
    """Were tracebacks in every process, or a silent 30-minute wait for processes that never come."""
    assert train_net.main(["--config-file", TINY, *options, "OUTPUT_DIR", str(tmp_path / "o")]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_port_in_use_is_one_line(capsys, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert train_net.main(["--config-file", TINY, "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{port}",
                               "OUTPUT_DIR", str(tmp_path / "o")]) == 2
    assert one_error_line(capsys) == (f"error: --dist-url 'tcp://127.0.0.1:{port}': port {port} is in use (by "
                                      f"another run or program); on one machine --dist-url auto finds a free port")


def test_user_error_of_a_launched_process_is_one_line():
    """launch() re-raises a process's error as a ProcessRaisedException carrying its traceback:
    a user error (a corrupt image met by rank 1) comes back as that error's one line."""
    from torch.multiprocessing import ProcessRaisedException

    trace = ("\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n"
             '  File "x.py", line 1, in f\n    g()\n'
             "cat_seg.data.datasets.errors.DatasetFileError: cannot read image a/000007.jpg: Truncated File Read\n")
    error = train_net.user_error_in_process(ProcessRaisedException(trace, 1, 1234))
    assert isinstance(error, UserError) and str(error) == "cannot read image a/000007.jpg: Truncated File Read"
    other = trace.replace("cat_seg.data.datasets.errors.DatasetFileError", "ValueError")
    assert train_net.user_error_in_process(ProcessRaisedException(other, 1, 1234)) is None
    internal = trace.replace("cat_seg.data.datasets.errors.DatasetFileError", "cat_seg.config.NotAnErrorType")
    assert train_net.user_error_in_process(ProcessRaisedException(internal, 1, 1234)) is None
    # a crash while handling a user error is a crash: the last error decides
    chained = (trace + "\nDuring handling of the above exception, another exception occurred:\n\n"
               "Traceback (most recent call last):\n  File \"y.py\", line 2, in h\n    k()\n"
               "RuntimeError: gloo collective failed\n")
    assert train_net.user_error_in_process(ProcessRaisedException(chained, 1, 1234)) is None
    # a checkpoint that cannot be written (a full disk) is one line naming the file, too
    disk = trace.replace("cat_seg.data.datasets.errors.DatasetFileError: cannot read image a/000007.jpg: Truncated "
                         "File Read", "cat_seg.utils.WriteError: cannot write out/model_0000999.pth: No space left "
                         "on device")
    error = train_net.user_error_in_process(ProcessRaisedException(disk, 1, 1234))
    assert str(error) == "cannot write out/model_0000999.pth: No space left on device"


def test_processes_of_one_machine_share_its_cores(monkeypatch):
    import torch
    from detectron2.utils import comm

    before = torch.get_num_threads()
    monkeypatch.setattr(comm, "get_local_size", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        train_net.share_cpu_threads()
        assert torch.get_num_threads() == 3
        torch.set_num_threads(before)
        monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the user's setting wins
        train_net.share_cpu_threads()
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def _sleep(seconds):
    time.sleep(seconds)


def test_a_finished_process_stops_its_data_loader_workers():
    """end_worker_process leaves with os._exit: the workers it started (DataLoader workers) are
    terminated first instead of lingering until their watchdog notices (about 5 s)."""
    import multiprocessing

    worker = multiprocessing.get_context("spawn").Process(target=_sleep, args=(600,))
    worker.start()
    try:
        assert worker.is_alive()
        train_net.stop_child_processes(timeout=600)  # a hang guard: SIGTERM ends a sleeping child at once
        assert not worker.is_alive() and worker.exitcode is not None
    finally:
        if worker.is_alive():
            worker.kill()


def _sleep_after_telling(ready, seconds):
    import signal

    # Python's own SIGINT handler, as in a training process started from a terminal (a process
    # started in the background by a non-interactive shell inherits SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ready.set()
    time.sleep(seconds)


def test_an_interrupt_of_the_launcher_alone_stops_the_training_processes(monkeypatch):
    """`kill -INT PID` of a --num-gpus 2 run reached only the launcher: it said "interrupted"
    and then waited for its training processes, which trained to the end. They now get the
    SIGINT too (as from Ctrl-C: a KeyboardInterrupt, exit code 1, not a SIGTERM's -15)."""
    import multiprocessing

    import detectron2.engine

    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    worker = context.Process(target=_sleep_after_telling, args=(ready, 600))

    def launch(*args, **kwargs):  # a training process started, then kill -INT of this one
        worker.start()
        assert ready.wait(600)  # a hang guard: its SIGINT handler is in place once it runs
        raise KeyboardInterrupt

    monkeypatch.setattr(detectron2.engine, "launch", launch)
    monkeypatch.setattr(train_net, "INTERRUPT_GRACE_S", 600)  # a hang guard: no SIGTERM on a busy machine
    monkeypatch.setattr(train_net, "check_launch", lambda args: None)
    monkeypatch.setattr(train_net, "check", lambda args: train_net.load_config(args))
    monkeypatch.setattr(train_net, "fix_drawn_seed", lambda args, cfg: None)
    try:
        with pytest.raises(KeyboardInterrupt):
            train_net._main(["--config-file", TINY, "--num-gpus", "2"])
        assert not worker.is_alive() and worker.exitcode == 1
    finally:
        if worker.is_alive():
            worker.kill()


def test_repository_config_path_works_from_another_folder(tmp_path, monkeypatch):
    """``--config-file configs/...`` from outside the checkout: the checks found the file, and
    detectron2's default_setup, which opens ``args.config_file`` again, must find it too."""
    monkeypatch.chdir(tmp_path)
    args = train_net.build_parser().parse_args(["--config-file", "configs/quick_schedules/tiny_vitb_cpu.yaml"])
    cfg = train_net.load_config(args)
    assert args.config_file == TINY and os.path.isfile(args.config_file)
    assert cfg.SOLVER.MAX_ITER == 20


def test_prompt_settings_that_train_nothing_are_said(caplog):
    """CLIP_FINETUNE prompt without prompts trains nothing in CLIP; prompts with another mode
    stay random: allowed (as in the official code), with a warning."""
    args = ["--config-file", TINY, "MODEL.SEM_SEG_HEAD.CLIP_FINETUNE", "prompt"]
    cfg = train_net.load_config(train_net.build_parser().parse_args(args))
    with caplog.at_level("WARNING", logger="cat_seg"):
        train_net.warn_about_prompts(cfg)
    assert "CLIP_FINETUNE prompt trains only the deep visual prompts, and there are none (PROMPT_DEPTH 0, " \
           "PROMPT_LENGTH 0): CLIP is not trained at all" in caplog.text
    caplog.clear()
    cfg.MODEL.SEM_SEG_HEAD.CLIP_FINETUNE, cfg.MODEL.SEM_SEG_HEAD.PROMPT_DEPTH = "attention", 2
    cfg.MODEL.SEM_SEG_HEAD.PROMPT_LENGTH = 3
    with caplog.at_level("WARNING", logger="cat_seg"):
        train_net.warn_about_prompts(cfg)
    assert "deep visual prompts (PROMPT_DEPTH 2, PROMPT_LENGTH 3) are trained only with CLIP_FINETUNE prompt or " \
           "full; with attention they stay as initialised, random" in caplog.text
    for mode in ("prompt", "full"):  # both train them (full: every transformer parameter, the prompts included)
        caplog.clear()
        cfg.MODEL.SEM_SEG_HEAD.CLIP_FINETUNE = mode
        with caplog.at_level("WARNING", logger="cat_seg"):
            train_net.warn_about_prompts(cfg)
        assert caplog.text == "", mode


def test_a_dataset_cat_seg_cannot_evaluate_is_one_line_before_starting(capsys, tmp_path, tiny_checkpoint):
    """A registered dataset whose evaluator_type has no evaluator (here COCO detection) failed
    in every launched process with a NotImplementedError traceback, after the model was built."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = "my_detection_val"
    DatasetCatalog.register(name, lambda: [{"file_name": "a.jpg"}])
    MetadataCatalog.get(name).set(evaluator_type="coco", stuff_classes=["a", "b"])
    try:
        assert train_net.main(["--config-file", TINY, "--eval-only", "--check-only", "MODEL.WEIGHTS", tiny_checkpoint,
                               "OUTPUT_DIR", str(tmp_path / "o"), "DATASETS.TEST", f"('{name}',)"]) == 2
        assert one_error_line(capsys) == (f"error: no evaluator for dataset '{name}' with evaluator_type 'coco' "
                                          "(supported: sem_seg, sem_seg_background); DATASETS.TEST holds the "
                                          "datasets to evaluate")
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_a_dataset_registered_only_in_the_main_block_is_named_in_the_launched_processes():
    """A launched process imports the script again without its __main__ block: a dataset
    registered there is missing (detectron2 raised a KeyError listing ~60 names)."""
    from cat_seg.data.datasets import DatasetError

    cfg = train_net.load_config(train_net.build_parser().parse_args(
        ["--config-file", TINY, "DATASETS.TRAIN", "('synthetic_train_sem_seg',)", "DATASETS.TEST", "('my_val',)"]))
    with pytest.raises(DatasetError, match=r"^dataset 'my_val' is not registered in the launched processes: register "
                                           r"it at the top level of your script, outside its if __name__ == "):
        train_net.check_registered_here(cfg)


def test_check_labels_lists_every_bad_label_before_a_run(capsys, tmp_path, tiny_checkpoint):
    """--check-labels reads every label map up front (a bad one otherwise stops the run when a
    batch meets it): the bad ones are listed, then one error line."""
    import json

    import numpy as np
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from PIL import Image

    from cat_seg.data.datasets import register_sem_seg_folder

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(["sky", "grass", "car"]))
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6
    cases = {"good": np.zeros((16, 24), np.uint8), "ignored": np.full((16, 24), 255, np.uint8),
             "small": np.zeros((8, 12), np.uint8), "value": np.full((16, 24), 7, np.uint8),
             "colour": np.dstack([np.zeros((16, 24), np.uint8), np.ones((16, 24), np.uint8),
                                                   np.zeros((16, 24), np.uint8)]),
             "grey_as_rgb": np.zeros((16, 24, 3), np.uint8), "turned": np.zeros((24, 16), np.uint8)}
    for stem, label in cases.items():
        Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(images / f"{stem}.jpg",
                                                              **({"exif": exif} if stem == "turned" else {}))
        Image.fromarray(label).save(labels / f"{stem}.png")  # "turned": shown 24 x 16, as its photo
    register_sem_seg_folder("scan_train", images, labels, str(classes))
    base = ["--config-file", TINY, "--check-only", "--check-labels", "OUTPUT_DIR", str(tmp_path / "o"),
            # in both lists: loaded and scanned once (its warnings and bad files said once)
            "DATASETS.TRAIN", "('scan_train',)", "DATASETS.TEST", "('scan_train',)",
            "MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON", str(classes), "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON", str(classes)]
    try:
        assert train_net.main(base) == 2
        err = capsys.readouterr().err.rstrip().splitlines()
        assert err[:-1] == [
            f"  scan_train: label map {labels / 'colour.png'}: not single-channel (shape (16, 24, 3)), a class index "
            "per pixel expected (a colour-coded mask: convert each colour to its class index first)",
            f"  scan_train: label map {labels / 'small.png'}: size 8x12 (HxW), its image {images / 'small.jpg'} 16x24",
            f"  scan_train: label map {labels / 'value.png'}: value(s) 7 outside the 3 classes (0..2) and not the "
            "ignore value 255",
        ]
        assert err[-1] == (f"error: --check-labels: 3 bad label map(s) or image(s) (listed above, 20 at most); the "
                           f"first: scan_train: label map {labels / 'colour.png'}: not single-channel (shape (16, 24, "
                           "3)), a class index per pixel expected (a colour-coded mask: convert each colour to its "
                           "class index first)")
        for stem in ("colour", "small", "value"):
            (labels / f"{stem}.png").unlink()
        loads = []  # the dataset is loaded once by the checks (its loader's warnings said once)
        get = DatasetCatalog.get
        DatasetCatalog.get = lambda name: loads.append(name) or get(name)
        try:
            assert train_net.main(base) == 0
        finally:
            DatasetCatalog.get = get
        assert loads.count("scan_train") == 1, loads
        out = capsys.readouterr().out
        assert out.count("--check-labels: 4 label maps of scan_train: none bad\n") == 1 and "\nok: config" in out
    finally:
        DatasetCatalog.remove("scan_train")
        MetadataCatalog.remove("scan_train")


def test_a_clip_weights_file_is_checked_before_the_run(capsys, tmp_path, tiny_model, synthetic_registered):
    """CLIP_WEIGHTS FILE was checked for existence only: a file that is no CLIP checkpoint, or
    one of another CLIP, passed --check-only and stopped the run after its set-up had created
    OUTPUT_DIR. Its tensors' shapes are now compared with the config's CLIP first."""
    clip_file = tmp_path / "clip.pth"
    torch.save(tiny_model("b").backbone.clip.state_dict(), clip_file)
    text_file = tmp_path / "notes.pth"
    text_file.write_text("not a checkpoint")
    other_clip = tmp_path / "other_clip.pth"
    torch.save(tiny_model("l").backbone.clip.state_dict(), other_clip)
    base = ["--config-file", TINY, "--check-only", "OUTPUT_DIR", str(tmp_path / "o"),
            "DATASETS.TRAIN", "('synthetic_train_sem_seg',)", "DATASETS.TEST", "()"]
    assert train_net.main([*base, "MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", str(clip_file)]) == 0
    capsys.readouterr()
    assert train_net.main([*base, "MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", str(text_file)]) == 2
    assert one_error_line(capsys) == (
        f"error: MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS: {text_file} is not a readable torch checkpoint: neither a "
        "torch.save zip archive nor a pickle of tensors")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(clip_file.read_bytes()[:1000])  # a download cut short
    assert train_net.main([*base, "MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", str(cut)]) == 2
    assert one_error_line(capsys) == (f"error: MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS: {cut} is not a readable torch "
                                      "checkpoint: a damaged or truncated torch.save zip archive")
    assert train_net.main([*base, "MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", str(other_clip)]) == 2
    assert one_error_line(capsys).startswith(
        f"error: MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS: CLIP weights {other_clip} do not fit the model: ")
    assert not (tmp_path / "o").exists()


def test_a_url_that_cannot_be_fetched_is_one_line_before_the_run(capsys, tmp_path):
    """A URL in MODEL.WEIGHTS was left to the checkpointer: after the set-up (eval.sh: once per
    benchmark), with iopath's progress bar and messages; it is fetched (and cached) once, first."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model_base.pth"
    assert train_net.main(["--config-file", TINY, "--check-only", "--eval-only", "OUTPUT_DIR", str(tmp_path / "o"),
                           "MODEL.WEIGHTS", url, "DATASETS.TEST", "('synthetic_val_sem_seg',)"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after iopath's progress bar of the attempt
    assert line.startswith(f"error: MODEL.WEIGHTS {url}: cannot fetch it (") and line.endswith(
        "); download it and give the file")
    assert not (tmp_path / "o").exists()


def test_clip_weights_to_download_offline_are_one_line_before_the_run(monkeypatch):
    """Training from CLIP's released weights with no copy in the cache and no way to the hub:
    the run's set-up retried open_clip's download for about a minute before its error, and
    --check-only said "ok". One line now, naming KEY VALUE settings (train_net has no --opts)."""
    import cat_seg.api as api

    monkeypatch.setattr(api, "_pretrained_cached", lambda pretrained_cfg: False)
    monkeypatch.setattr(api, "_host_reachable", lambda url, timeout=api.CONNECT_TIMEOUT_S: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    args = train_net.build_parser().parse_args(["--config-file", "configs/vitb_384.yaml"])
    cfg = train_net.load_config(args)
    with pytest.raises(UserError) as info:
        train_net.check_clip_weights_reachable(cfg)
    message = str(info.value)
    assert message.startswith("CLIP weights ViT-B-16/openai (MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS default) are not "
                              "downloaded and ") and "cannot be reached" in message, message
    assert "MODEL.WEIGHTS FILE" in message and "--opts" not in message and "--weights" not in message
    monkeypatch.setattr(api, "_pretrained_cached", lambda pretrained_cfg: True)  # in open_clip's cache: no network
    train_net.check_clip_weights_reachable(cfg)


OWN_TRAINER_SCRIPT = """
import sys
from cat_seg.cli.train_net import main
from cat_seg.engine import Trainer


class RecordingTrainer(Trainer):
    @classmethod
    def test(cls, cfg, model, evaluators=None):
        print("tested by RecordingTrainer:", type(model).__name__)
        return {}


sys.exit(main(sys.argv[1:], trainer=RecordingTrainer))
"""


def test_main_runs_a_trainer_of_ones_own(tmp_path, synthetic_registered, tiny_checkpoint, capsys):
    """A script's own Trainer subclass (hooks, optimizer, evaluators) runs through train_net's
    main (it had Trainer built in); anything else is one error line. (The run is a process of
    its own: its logging set-up would outlive the test in this one.)"""
    script = tmp_path / "my_train_net.py"
    script.write_text(OWN_TRAINER_SCRIPT)
    argv = ["--config-file", TINY, "--eval-only", "OUTPUT_DIR", str(tmp_path / "o"), "MODEL.WEIGHTS",
            tiny_checkpoint, "DATASETS.TEST", "('synthetic_val_sem_seg',)"]
    env = dict(os.environ, PYTHONPATH=str(REPO), DETECTRON2_DATASETS=str(tmp_path / "data"))  # the fixture's
    proc = subprocess.run([sys.executable, str(script), *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)  # hang guard
    assert proc.returncode == 0 and "tested by RecordingTrainer: CATSeg" in proc.stdout, proc.stderr[-2000:]
    assert train_net.main(argv, trainer=object) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: main(trainer=<class 'object'>): expected cat_seg.engine.Trainer or a subclass of it")
