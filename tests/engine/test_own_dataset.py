"""A dataset of the user's own, registered with ``register_sem_seg_folder`` in a script that
runs ``train_net`` (docs/datasets.md, "Your own dataset"): two launched processes train on it
and evaluate on it."""
import json
import re
import os
import subprocess
import sys
import textwrap

import pytest
from detectron2.data import DatasetCatalog

from cat_seg.data.datasets import DatasetError, DatasetNotFoundError, register_sem_seg_folder
from engine_helpers import REPO, TINY_CONFIG, run_env, train_opts

SCRIPT = '''
from cat_seg.cli.train_net import main
from cat_seg.data.datasets import register_sem_seg_folder

register_sem_seg_folder("my_train", {root!r} + "/images/train", {root!r} + "/annotations/train", {train_json!r})
register_sem_seg_folder("my_val", {root!r} + "/images/val", {root!r} + "/annotations/val", {val_json!r},
                        ignore_label=255, image_ext="jpg", label_ext="png")

if __name__ == "__main__":
    raise SystemExit(main())
'''


def test_two_processes_train_and_evaluate_on_a_registered_folder(tiny_benchmark, tmp_path):
    script = tmp_path / "my_train_net.py"
    script.write_text(textwrap.dedent(SCRIPT.format(root=os.path.join(tiny_benchmark["root"], "synthetic"),
                                                    train_json=tiny_benchmark["train_json"],
                                                    val_json=tiny_benchmark["val_json"])))
    out = tmp_path / "out"
    opts = train_opts(tiny_benchmark, str(out), **{"DATASETS.TRAIN": "('my_train',)", "DATASETS.TEST": "('my_val',)",
                                                   "SOLVER.MAX_ITER": 2, "SOLVER.CHECKPOINT_PERIOD": 100})
    proc = subprocess.run([sys.executable, str(script), "--config-file", TINY_CONFIG, "--num-gpus", "2", *opts],
                          env=run_env(tiny_benchmark), cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model_final.pth").is_file()
    results = json.loads((out / "inference" / "my_val" / "sem_seg_results.json").read_text())
    assert results["dataset"] == "my_val" and results["num_images"] == 6
    assert 0 <= results["metrics"]["mIoU"] <= 100
    with open(tiny_benchmark["val_json"]) as f:
        assert sorted(results["per_class"]) == sorted(json.load(f))


def test_registration_errors_are_one_line(tmp_path, caplog):
    """Registering never raises (a registration at the top of a script would end in a
    traceback): loading the dataset raises the problem, which train_net prints as one line
    before a run starts."""
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(["cat", "dog"]))
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps(["cat", "dog", "Cat "]))
    cases = [
        # the file named once (it was "class json '...': class json '...': ...")
        ({"class_json": str(tmp_path / "no_such.json")},
         rf"^dataset 'mine': class json '{re.escape(str(tmp_path / 'no_such.json'))}' not found, and it names no "),
        ({"class_json": str(classes), "image_ext": None},
         r"^dataset 'mine': image_ext=None; expected a file extension \(\"png\"\) or a list of them"),
        ({"class_json": str(classes), "label_ext": ""}, r"^dataset 'mine': label_ext=''; expected a file extension"),
        ({"class_json": str(twice)}, r"^dataset 'mine': .*twice\.json lists 'Cat ' twice \(classes 0 and 2, compared "
                                     r"without case and extra spaces\)"),
        ({"class_json": str(classes), "ignore_label": 1}, r"^dataset 'mine': ignore_label=1 is the index of class 'dog' "),
        ({"class_json": str(classes), "ignore_label": "255"}, r"^dataset 'mine': ignore_label='255'; expected an integer"),
        ({"class_json": None}, r"^dataset 'mine': class json None: "),
    ]
    try:
        for kwargs, message in cases:
            kwargs = dict(kwargs)
            assert register_sem_seg_folder("mine", tmp_path, tmp_path, kwargs.pop("class_json"), **kwargs) == "mine"
            with pytest.raises(DatasetError, match=message):
                DatasetCatalog.get("mine")
        register_sem_seg_folder("mine", tmp_path / "images", tmp_path / "labels", str(classes))
        with pytest.raises(DatasetNotFoundError) as info:
            DatasetCatalog.get("mine")
        # a folder of the user's: no $DETECTRON2_DATASETS or prepare-script hint
        assert str(info.value) == f"dataset 'mine': folder {tmp_path / 'images'} not found"
        register_sem_seg_folder("mine", classes, tmp_path, str(classes))  # a file for the image folder
        with pytest.raises(DatasetNotFoundError) as info:
            DatasetCatalog.get("mine")
        assert str(info.value) == f"dataset 'mine': {classes} is a file, not a folder of images"
        synonyms = tmp_path / "synonyms.json"
        synonyms.write_text(json.dumps(["car, auto", "grass", "car"]))
        register_sem_seg_folder("mine", tmp_path, tmp_path, str(synonyms))
        assert ("1 class(es) of dataset 'mine' (" in caplog.text and "share their first synonym" in caplog.text
                and "'car' after 'car, auto'" in caplog.text)
    finally:
        DatasetCatalog.remove("mine")
    # as a script registers it (at its top), the mistake is one line, before a run starts
    script = tmp_path / "my_train_net.py"
    script.write_text(textwrap.dedent(f"""
        from cat_seg.cli.train_net import main
        from cat_seg.data.datasets import register_sem_seg_folder

        register_sem_seg_folder("mine", {str(tmp_path)!r}, {str(tmp_path)!r}, {str(twice)!r})

        if __name__ == "__main__":
            raise SystemExit(main())
    """))
    proc = subprocess.run([sys.executable, str(script), "--config-file", TINY_CONFIG, "--check-only",
                           "DATASETS.TRAIN", "('mine',)", "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path / "o")],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                          timeout=1800)  # hang guard only
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: dataset 'mine': {twice} lists 'Cat ' twice")
    assert "Traceback" not in proc.stderr


def test_colour_label_maps_are_one_error_line(tiny_benchmark, tmp_path):
    """A frequent mistake with a dataset of one's own: colour (RGB) masks instead of index maps.
    The evaluation stops with one line naming the file (it was the evaluator's traceback)."""
    import numpy as np
    from PIL import Image

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(images / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(labels / f"{i}.png")
    script = tmp_path / "my_eval.py"
    script.write_text(textwrap.dedent(f'''
        from cat_seg.cli.train_net import main
        from cat_seg.data.datasets import register_sem_seg_folder

        register_sem_seg_folder("colour_val", {str(images)!r}, {str(labels)!r}, {tiny_benchmark["val_json"]!r})

        if __name__ == "__main__":
            raise SystemExit(main())
    '''))
    # one training iteration on the synthetic data; the evaluation at the end meets the colour masks
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(script), "--config-file", TINY_CONFIG,
                           *train_opts(tiny_benchmark, str(out), **{"SOLVER.MAX_ITER": 1,
                                                                    "DATASETS.TEST": "('colour_val',)"})],
                          env=run_env(tiny_benchmark), cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: label map {labels / '0.png'}: not single-channel (shape (64, 64, 3)), a class index per pixel "
        "expected (a colour-coded mask: convert each colour to its class index first)")
    assert "Traceback" not in proc.stderr


def test_a_bad_training_label_is_one_line_without_detectron2s_traceback(tiny_benchmark, tmp_path):
    """detectron2's train loop logged ~30 lines of traceback ("Exception during training:")
    before the one error line of a bad label met during training."""
    import numpy as np
    from PIL import Image

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(images / f"{i}.jpg")
        Image.fromarray(np.full((64, 64), 200, np.uint8)).save(labels / f"{i}.png")  # no such class
    script = tmp_path / "my_train.py"
    script.write_text(textwrap.dedent(f'''
        from cat_seg.cli.train_net import main
        from cat_seg.data.datasets import register_sem_seg_folder

        register_sem_seg_folder("bad_train", {str(images)!r}, {str(labels)!r}, {tiny_benchmark["train_json"]!r})

        if __name__ == "__main__":
            raise SystemExit(main())
    '''))
    proc = subprocess.run([sys.executable, str(script), "--config-file", TINY_CONFIG,
                           *train_opts(tiny_benchmark, str(tmp_path / "out"), **{
                               "SOLVER.MAX_ITER": 1, "DATASETS.TRAIN": "('bad_train',)", "DATASETS.TEST": "()"})],
                          env=run_env(tiny_benchmark), cwd=REPO, capture_output=True, text=True,
                          timeout=1800)  # hang guard only
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: label map {labels}")
    assert ": value(s) 200 outside the" in proc.stderr.strip().splitlines()[-1]
    output = proc.stdout + proc.stderr  # detectron2 logs to stdout
    assert "Traceback" not in output and "Exception during training" not in output
