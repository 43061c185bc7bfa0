"""SemSegEvaluator / VOCbEvaluator against hand-computed confusion matrices."""
import csv
import json
import logging
import math
import re
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from cat_seg.evaluation import (
    SemSegEvaluator,
    VOCbEvaluator,
    build_evaluator,
    evaluator_problem,
    evaluator_type_of,
    load_sem_seg_gt,
)


@pytest.fixture
def make_dataset(tmp_path):
    """Write GT label maps to tmp_path and register a uniquely named dataset."""
    names = []

    def _make(gts, classes, ignore_label=255, suffix=".png", **meta):
        name = f"test_semseg_{uuid.uuid4().hex}"
        records = []
        for i, gt in enumerate(gts):
            gt_file = tmp_path / f"{name}_{i}{suffix}"
            Image.fromarray(gt).save(gt_file)
            records.append({"file_name": f"img_{i}.jpg", "sem_seg_file_name": str(gt_file)})
        DatasetCatalog.register(name, lambda records=records: records)
        MetadataCatalog.get(name).set(
            stuff_classes=list(classes), ignore_label=ignore_label, **meta
        )
        names.append(name)
        return name, records

    yield _make
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def scores_from_pred(pred, num_channels):
    """One-hot float scores [T, H, W] whose argmax is `pred`."""
    pred = torch.as_tensor(np.asarray(pred, dtype=np.int64))
    return torch.nn.functional.one_hot(pred, num_channels).permute(2, 0, 1).float()


def nan_equal_dicts(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert a[k] == pytest.approx(b[k], rel=1e-12, abs=1e-12), k


# Image 0 (2x4), classes a=0, b=1, c=2, ignore 255:
#   GT   = [[0, 0, 1, 1], [0, 255, 1, 1]]
#   pred = [[0, 1, 1, 1], [0, 0,   2, 1]]
# Non-ignored pixels: gt a: pred a,b,a -> TP_a 2 / 3; gt b: pred b,b,c,b -> TP_b 3 / 4;
# pred counts (non-ignored): a 2, b 4, c 1; class c never in GT -> NaN, not averaged.
# IoU_a = 2/(3+2-2) = 2/3, IoU_b = 3/(4+4-3) = 3/5, mIoU = 19/30
# fwIoU = 3/7*2/3 + 4/7*3/5 = 22/35, ACC_a = 2/3, ACC_b = 3/4, mACC = 17/24, pACC = 5/7
# Image 1 (2x2) is all ignore: its (arbitrary) predictions must not count.
GT0 = np.array([[0, 0, 1, 1], [0, 255, 1, 1]], dtype=np.uint8)
PRED0 = np.array([[0, 1, 1, 1], [0, 0, 2, 1]])
GT1 = np.full((2, 2), 255, dtype=np.uint8)
PRED1 = np.array([[2, 2], [0, 1]])
EXPECTED = {
    "mIoU": 100 * 19 / 30,
    "fwIoU": 100 * 22 / 35,
    "IoU-a": 100 * 2 / 3,
    "IoU-b": 100 * 3 / 5,
    "IoU-c": float("nan"),
    "mACC": 100 * 17 / 24,
    "pACC": 100 * 5 / 7,
    "ACC-a": 100 * 2 / 3,
    "ACC-b": 100 * 3 / 4,
    "ACC-c": float("nan"),
}


def run(evaluator, records, preds, num_channels, batch_size=1):
    evaluator.reset()
    for start in range(0, len(records), batch_size):
        chunk = list(range(start, min(start + batch_size, len(records))))
        evaluator.process(
            [{"file_name": records[i]["file_name"]} for i in chunk],
            [{"sem_seg": scores_from_pred(preds[i], num_channels)} for i in chunk],
        )
    return evaluator.evaluate()


def test_hand_computed_confusion_matrix(make_dataset):
    name, records = make_dataset([GT0, GT1], ["a", "b", "c"])
    evaluator = SemSegEvaluator(name)
    res = run(evaluator, records, [PRED0, PRED1], 3)["sem_seg"]
    nan_equal_dicts(res, EXPECTED)
    assert list(res)[:2] == ["mIoU", "fwIoU"]
    # confusion matrix [pred, gt] with the ignore bin last
    expected_cm = np.array(
        [[2, 0, 0, 1 + 1], [1, 3, 0, 0 + 1], [0, 1, 0, 0 + 2], [0, 0, 0, 0]], dtype=np.int64
    )
    np.testing.assert_array_equal(evaluator._conf_matrix, expected_cm)


def test_seen_unseen_and_harmonic_mean(make_dataset, caplog):
    name, records = make_dataset(
        [GT0, GT1], ["a", "b", "c"], seen_classes=[0], unseen_classes=[1, 2]
    )
    with caplog.at_level(logging.INFO, logger="cat_seg.evaluation.sem_seg_evaluation"):
        res = run(SemSegEvaluator(name), records, [PRED0, PRED1], 3)["sem_seg"]
    assert res["mIoU-seen"] == pytest.approx(100 * 2 / 3)
    assert res["mIoU-unseen"] == pytest.approx(100 * 3 / 5)  # c is absent from GT
    assert res["hIoU"] == pytest.approx(100 * 12 / 19)  # 2*(2/3)*(3/5) / (2/3+3/5)
    assert res["mIoU"] == pytest.approx(EXPECTED["mIoU"])
    # copypaste lines of their own (detectron2's leave out names with a "-")
    copypaste = [r.getMessage() for r in caplog.records if r.getMessage().startswith("copypaste: ")]
    assert copypaste == [f"copypaste: Task: sem_seg, seen / unseen classes of {name}",
                         "copypaste: mIoU-seen,mIoU-unseen,hIoU", "copypaste: 66.6667,60.0000,63.1579"]


def test_input_sem_seg_file_name_and_distinct_datasets(make_dataset):
    name, records = make_dataset([GT0], ["a", "b", "c"])
    evaluator = SemSegEvaluator(name)
    evaluator.process(
        [{"file_name": "not/in/catalog.jpg", "sem_seg_file_name": records[0]["sem_seg_file_name"]}],
        [{"sem_seg": scores_from_pred(PRED0, 3)}],
    )
    nan_equal_dicts(evaluator.evaluate()["sem_seg"], EXPECTED)
    with pytest.raises(KeyError, match="not/in/catalog.jpg"):
        evaluator.process(
            [{"file_name": "not/in/catalog.jpg"}], [{"sem_seg": scores_from_pred(PRED0, 3)}]
        )


def _brute_force_metrics(gts, preds, num_classes, ignore):
    tp = np.zeros(num_classes)
    n_gt = np.zeros(num_classes)
    n_pred = np.zeros(num_classes)
    for gt, pred in zip(gts, preds):
        valid = gt != ignore
        for c in range(num_classes):
            tp[c] += np.sum((gt == c) & (pred == c) & valid)
            n_gt[c] += np.sum(gt == c)
            n_pred[c] += np.sum((pred == c) & valid)
    present = n_gt > 0
    iou = tp[present] / (n_gt + n_pred - tp)[present]
    return {
        "mIoU": 100 * iou.mean(),
        "fwIoU": 100 * np.sum(iou * n_gt[present] / n_gt.sum()),
        "mACC": 100 * np.mean(tp[present] / n_gt[present]),
        "pACC": 100 * tp.sum() / n_gt.sum(),
    }


def test_batch_size_invariance_and_brute_force(make_dataset):
    rng = np.random.default_rng(0)
    num_classes, shapes = 5, [(7, 9), (12, 5), (6, 6), (9, 11), (4, 13)]
    gts, preds = [], []
    for h, w in shapes:
        gt = rng.integers(0, num_classes - 1, size=(h, w)).astype(np.uint8)  # class 4 absent
        gt[rng.random((h, w)) < 0.2] = 255
        gts.append(gt)
        preds.append(rng.integers(0, num_classes, size=(h, w)))
    name, records = make_dataset(gts, [f"k{i}" for i in range(num_classes)])
    evaluator = SemSegEvaluator(name)
    results = [run(evaluator, records, preds, num_classes, bs)["sem_seg"] for bs in (1, 2, 5)]
    nan_equal_dicts(results[0], results[1])
    nan_equal_dicts(results[0], results[2])
    expected = _brute_force_metrics(gts, preds, num_classes, 255)
    for key, value in expected.items():
        assert results[0][key] == pytest.approx(value, rel=1e-12), key
    assert math.isnan(results[0]["IoU-k4"])


def test_distributed_gather_sums_confusion_matrices(make_dataset, monkeypatch):
    from detectron2.evaluation import sem_seg_evaluation as d2_sem_seg

    name, records = make_dataset([GT0, GT1], ["a", "b", "c"])
    rank0, rank1 = SemSegEvaluator(name), SemSegEvaluator(name)
    for evaluator, record, pred in ((rank0, records[0], PRED0), (rank1, records[1], PRED1)):
        evaluator.process(
            [{"file_name": record["file_name"]}], [{"sem_seg": scores_from_pred(pred, 3)}]
        )
    # what rank 1 contributes to each all_gather call of rank 0, keyed by rank 0's object
    rank1_state = {
        id(rank0._conf_matrix): rank1._conf_matrix.copy(),
        id(rank0._predictions): list(rank1._predictions),
    }
    if hasattr(rank0, "_b_conf_matrix"):  # detectron2 versions with boundary IoU
        rank1_state[id(rank0._b_conf_matrix)] = rank1._b_conf_matrix.copy()

    def fake_all_gather(data, group=None):  # rank 0 gathers its own data plus rank 1's
        return [data, rank1_state.get(id(data), rank1._counts())]

    for module in (comm, d2_sem_seg):
        monkeypatch.setattr(module, "all_gather", fake_all_gather)
        monkeypatch.setattr(module, "synchronize", lambda: None)
    result = rank0.evaluate()["sem_seg"]
    nan_equal_dicts(result, EXPECTED)
    for module in (comm, d2_sem_seg):  # rank 1: gathers, but returns nothing
        monkeypatch.setattr(module, "all_gather", lambda data, group=None: [data, data])
        monkeypatch.setattr(module, "is_main_process", lambda: False)
    assert rank1.evaluate() is None


def test_voc20b_maps_extra_channels_to_background(make_dataset):
    classes = [f"voc{i}" for i in range(20)] + ["background"]
    gt = np.array([[0, 20, 20, 255, 3]], dtype=np.uint8)
    # 25 channels (prompts); channel 22 and 24 are extra "background" prompts
    pred = np.array([[0, 22, 5, 24, 3]])
    name, records = make_dataset([gt], classes, evaluator_type="sem_seg_background")
    res = run(VOCbEvaluator(name), records, [pred], 25)["sem_seg"]
    # gt0->0 TP, gt20->20 TP, gt20->5, ignore (pred 24 -> 20 not counted), gt3->3 TP
    assert res["IoU-voc0"] == pytest.approx(100.0)
    assert res["IoU-voc3"] == pytest.approx(100.0)
    assert res["IoU-background"] == pytest.approx(100 * 1 / 2)  # TP 1 / (GT 2 + pred 1 - 1)
    assert math.isnan(res["IoU-voc5"])  # predicted but absent from GT
    assert res["mIoU"] == pytest.approx(100 * 2.5 / 3)
    assert res["pACC"] == pytest.approx(100 * 3 / 4)
    # the plain evaluator refuses a channel count that does not match the classes
    with pytest.raises(ValueError, match=r"\[21, H, W\]"):
        run(SemSegEvaluator(name), records, [pred], 25)


def test_the_background_evaluator_takes_the_last_class_as_background_for_any_class_count(make_dataset):
    """The background index is the last class's (20 for VOC-20b, written into the evaluator
    before, which refused any other count): a dataset of 3 classes + background of the same
    evaluator type is scored too."""
    name, _ = make_dataset([np.zeros((1, 2), dtype=np.uint8)], ["background"])
    with pytest.raises(ValueError, match=r"needs the classes of .* and a last one, the background"):
        VOCbEvaluator(name)
    gt = np.array([[0, 3, 3, 255, 2]], dtype=np.uint8)
    name, records = make_dataset([gt], ["a", "b", "c", "background"], evaluator_type="sem_seg_background")
    pred = np.array([[0, 5, 1, 4, 2]])  # 6 prompts: 3 and up are background concepts
    res = run(VOCbEvaluator(name), records, [pred], 6)["sem_seg"]
    # gt0->0 TP, gt3->bg (5) TP, gt3->1, ignored, gt2->2 TP
    assert res["IoU-background"] == pytest.approx(100 * 1 / 2) and res["IoU-c"] == pytest.approx(100.0)
    assert res["pACC"] == pytest.approx(100 * 3 / 4)


def test_uint16_tiff_ground_truth(make_dataset):
    num_classes = 300  # like pc459: ignore label == K, labels above 255 need 16 bits
    gt = np.array([[299, 299, 258], [0, 300, 258]], dtype=np.uint16)
    pred = np.array([[299, 258, 258], [0, 1, 299]])
    name, records = make_dataset(
        [gt], [f"c{i}" for i in range(num_classes)], ignore_label=300, suffix=".tif"
    )
    np.testing.assert_array_equal(load_sem_seg_gt(records[0]["sem_seg_file_name"]), gt)
    res = run(SemSegEvaluator(name), records, [pred], num_classes)["sem_seg"]
    # c299: gt 2, pred 2 (one on c258's pixel), TP 1 -> 1/3; c258: gt 2, pred 2, TP 1 -> 1/3
    assert res["IoU-c299"] == pytest.approx(100 / 3)
    assert res["IoU-c258"] == pytest.approx(100 / 3)
    assert res["IoU-c0"] == pytest.approx(100.0)
    assert math.isnan(res["IoU-c1"])  # only predicted on the ignore pixel
    assert res["pACC"] == pytest.approx(100 * 3 / 5)


def test_results_written_as_json_and_csv(make_dataset, tmp_path):
    name, records = make_dataset([GT0, GT1], ["a", "b", "c"])
    out = tmp_path / "inference"
    res = run(SemSegEvaluator(name, output_dir=str(out)), records, [PRED0, PRED1], 3)["sem_seg"]
    payload = json.loads((out / "sem_seg_results.json").read_text())
    assert payload["dataset"] == name
    assert payload["num_images"] == 2
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert payload["metrics"][key] == pytest.approx(res[key])
    assert payload["per_class"]["b"]["IoU"] == pytest.approx(60.0)
    assert payload["per_class"]["c"]["IoU"] is None  # NaN written as null (valid JSON)
    with open(out / "per_class_iou.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["class", "IoU", "ACC", "gt_pixels"]
    assert rows[1] == ["a", "66.6667", "66.6667", "3"]
    assert rows[2] == ["b", "60.0000", "75.0000", "4"]
    assert rows[3] == ["c", "nan", "nan", "0"]


def test_a_crash_while_writing_the_results_leaves_no_partial_file(make_dataset, tmp_path, monkeypatch):
    name, records = make_dataset([GT0, GT1], ["a", "b", "c"])
    out = tmp_path / "inference"

    def crash(*args, **kwargs):  # as a kill or a full disk in the middle of the CSV
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(csv, "writer", crash)
    with pytest.raises(OSError, match="No space left"):
        run(SemSegEvaluator(name, output_dir=str(out)), records, [PRED0, PRED1], 3)
    assert not (out / "per_class_iou.csv").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file either
    assert json.loads((out / "sem_seg_results.json").read_text())["num_images"] == 2  # written before, whole


def test_a_failed_evaluation_leaves_no_previous_results(make_dataset, tmp_path):
    """A new evaluation into the same folder first removes the previous one's files, so one
    that fails leaves none that look like its own."""
    name, records = make_dataset([GT0, GT1], ["a", "b", "c"])
    out = tmp_path / "inference"
    run(SemSegEvaluator(name, output_dir=str(out)), records, [PRED0, PRED1], 3)
    written = {"sem_seg_results.json", "per_class_iou.csv", "sem_seg_predictions.json", "sem_seg_evaluation.pth"}
    assert {p.name for p in out.iterdir()} == written
    (out / "notes.txt").write_text("mine")
    evaluator = SemSegEvaluator(name, output_dir=str(out))
    assert written <= {p.name for p in out.iterdir()}  # building an evaluator removes nothing
    evaluator.reset()  # an evaluation starts (inference_on_dataset calls it first)
    with pytest.raises(ValueError, match="does not match GT"):
        evaluator.process([records[0]], [{"sem_seg": torch.zeros(3, 5, 7)}])
    assert {p.name for p in out.iterdir()} == {"notes.txt"}


def test_errors_name_the_file(make_dataset, tmp_path):
    bad_gt = np.array([[0, 7]], dtype=np.uint8)
    name, records = make_dataset([bad_gt], ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"label map .*: value\(s\) 7 outside the 3 classes of dataset '.*' \(0\.\.2\) "
                                         r"and not the ignore value 255$"):
        run(SemSegEvaluator(name), records, [np.array([[0, 1]])], 3)
    gt_file = records[0]["sem_seg_file_name"]
    assert gt_file.endswith(".png")
    with open(gt_file, "wb") as f:
        f.write(b"not an image")
    with pytest.raises(ValueError, match=re.escape(records[0]["sem_seg_file_name"]) + ": cannot be read"):
        run(SemSegEvaluator(name), records, [np.array([[0, 1]])], 3)
    name2, records2 = make_dataset([GT0], ["a", "b", "c"])
    with pytest.raises(ValueError, match="does not match GT .*; the image: " + re.escape(records2[0]["file_name"])):
        run(SemSegEvaluator(name2), records2, [np.zeros((3, 4), dtype=np.int64)], 3)


def test_build_evaluator_by_evaluator_type(make_dataset, tmp_path):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    plain, _ = make_dataset([GT0], ["a", "b", "c"], evaluator_type="sem_seg")
    voc, _ = make_dataset([GT0], [f"v{i}" for i in range(21)], evaluator_type="sem_seg_background")
    other, _ = make_dataset([GT0], ["a", "b", "c"], evaluator_type="coco")
    unset, _ = make_dataset([GT0], ["a", "b", "c"])  # registered without an evaluator_type
    evaluator = build_evaluator(cfg, plain)
    assert type(evaluator) is SemSegEvaluator
    # one folder per dataset: two datasets' results never overwrite each other
    assert evaluator._output_dir == str(tmp_path / "inference" / plain)
    assert type(build_evaluator(cfg, voc, str(tmp_path / "x"))) is VOCbEvaluator
    # the trainer's pre-launch vocabulary check and the evaluator read a missing type alike
    assert type(build_evaluator(cfg, unset)) is SemSegEvaluator and evaluator_type_of(unset) == "sem_seg"
    assert evaluator_problem(plain) is None
    assert evaluator_problem(other) == (f"no evaluator for dataset {other!r} with evaluator_type 'coco' "
                                        "(supported: sem_seg, sem_seg_background)")
    with pytest.raises(NotImplementedError, match="coco"):
        build_evaluator(cfg, other)


def test_same_numbers_as_detectron2s_own_evaluator(make_dataset):
    """The subclass changes no metric: detectron2's SemSegEvaluator, given the numpy-2-safe
    reader, reports the same values for every key it computes (boundary IoU aside)."""
    from detectron2.evaluation import SemSegEvaluator as D2SemSegEvaluator

    rng = np.random.default_rng(1)
    gts = [rng.integers(0, 4, size=(6, 7)).astype(np.uint8) for _ in range(3)]
    gts[0][0, :3] = 255
    preds = [rng.integers(0, 4, size=(6, 7)) for _ in range(3)]
    name, records = make_dataset(gts, ["w", "x", "y", "z"])
    ours = run(SemSegEvaluator(name), records, preds, 4)["sem_seg"]
    d2 = run(D2SemSegEvaluator(name, distributed=False, sem_seg_loading_fn=load_sem_seg_gt),
             records, preds, 4)["sem_seg"]
    d2 = {k: v for k, v in d2.items() if "B-Iou" not in k and not k.startswith("BoundaryIoU")}
    nan_equal_dicts(ours, d2)


# ---------------------------------------------------------------- labels instead of scores
def run_outputs(evaluator, records, outputs, batch_size=2):
    """Evaluate ready-made output dicts (one per record)."""
    evaluator.reset()
    for start in range(0, len(records), batch_size):
        chunk = range(start, min(start + batch_size, len(records)))
        evaluator.process([{"file_name": records[i]["file_name"]} for i in chunk], [outputs[i] for i in chunk])
    return evaluator.evaluate()


def tied_scores(rng, num_channels, shape):
    """Scores [T, H, W] from few distinct values, so that most pixels have tied maxima."""
    return torch.as_tensor(rng.integers(0, 3, size=(num_channels, *shape)).astype(np.float32) / 2)


def first_argmax(scores):
    """Lowest channel index of the maximum [H, W] (numpy's argmax: the first one)."""
    return torch.as_tensor(np.argmax(scores.numpy(), axis=0))


@pytest.mark.parametrize("seen_unseen", [False, True])
def test_labels_give_the_same_metrics_as_scores(make_dataset, seen_unseen, tmp_path):
    rng = np.random.default_rng(4)
    num_classes, shapes = 6, [(5, 7), (8, 3), (6, 6), (4, 9)]
    gts = []
    for h, w in shapes:
        gt = rng.integers(0, num_classes, size=(h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.15] = 255
        gts.append(gt)
    meta = {"seen_classes": [0, 2, 4], "unseen_classes": [1, 3, 5]} if seen_unseen else {}
    name, records = make_dataset(gts, [f"k{i}" for i in range(num_classes)], **meta)
    scores = [tied_scores(rng, num_classes, shape) for shape in shapes]
    assert any(((s == s.max(0).values).sum(0) > 1).any() for s in scores)  # ties present
    labels = [first_argmax(s) for s in scores]
    by_scores = SemSegEvaluator(name, output_dir=str(tmp_path / "scores"))
    res_scores = run_outputs(by_scores, records, [{"sem_seg": s} for s in scores])["sem_seg"]
    by_labels = SemSegEvaluator(name, output_dir=str(tmp_path / "labels"))
    # what the model returns in labels mode: labels + confidence, no "sem_seg"
    outputs = [{"sem_seg_labels": lab, "sem_seg_confidence": s.max(0).values} for lab, s in zip(labels, scores)]
    res_labels = run_outputs(by_labels, records, outputs)["sem_seg"]
    nan_equal_dicts(res_labels, res_scores)
    np.testing.assert_array_equal(by_labels._conf_matrix, by_scores._conf_matrix)
    assert ("hIoU" in res_labels) == seen_unseen
    expected = _brute_force_metrics(gts, [lab.numpy() for lab in labels], num_classes, 255)
    for key, value in expected.items():
        assert res_labels[key] == pytest.approx(value, rel=1e-12), key
    for sub in ("scores", "labels"):  # the same files
        assert json.loads((tmp_path / sub / "sem_seg_results.json").read_text())["num_images"] == len(shapes)
    assert (tmp_path / "labels" / "per_class_iou.csv").read_text() == \
        (tmp_path / "scores" / "per_class_iou.csv").read_text()
    # labels win over scores when both are given (the scores are then not read)
    both = [{"sem_seg_labels": lab, "sem_seg": torch.zeros(num_classes, *lab.shape)} for lab in labels]
    nan_equal_dicts(run_outputs(SemSegEvaluator(name), records, both)["sem_seg"], res_scores)


def test_voc20b_labels_give_the_same_metrics_as_scores(make_dataset):
    classes = [f"voc{i}" for i in range(20)] + ["background"]
    rng = np.random.default_rng(5)
    num_prompts, shapes = 25, [(6, 5), (4, 7), (5, 5)]
    gts = []
    for h, w in shapes:
        gt = rng.integers(0, 21, size=(h, w)).astype(np.uint8)
        gt[:, 0] = 20  # plenty of background in GT
        gt[rng.random((h, w)) < 0.1] = 255
        gts.append(gt)
    name, records = make_dataset(gts, classes, evaluator_type="sem_seg_background",
                                 seen_classes=list(range(10)), unseen_classes=list(range(10, 21)))
    scores = []
    for h, w in shapes:
        s = tied_scores(rng, num_prompts, (h, w))
        s[rng.integers(0, 20), :2] = 2.0  # VOC class tied with ...
        s[22, :2] = 2.0  # ... a background prompt: the VOC class wins
        s[21, -1], s[23, -1] = 3.0, 3.0  # two background prompts tied
        scores.append(s)
    labels = [first_argmax(s) for s in scores]  # raw prompt indexes 0..24
    assert all(int(lab.max()) >= 20 for lab in labels)
    by_scores, by_labels = VOCbEvaluator(name), VOCbEvaluator(name)
    res_scores = run_outputs(by_scores, records, [{"sem_seg": s} for s in scores])["sem_seg"]
    res_labels = run_outputs(by_labels, records, [{"sem_seg_labels": lab} for lab in labels])["sem_seg"]
    nan_equal_dicts(res_labels, res_scores)
    np.testing.assert_array_equal(by_labels._conf_matrix, by_scores._conf_matrix)
    assert {"mIoU-seen", "mIoU-unseen", "hIoU"} <= set(res_labels)
    # both equal the brute force on predictions min(argmax over the prompts, 20)
    expected = _brute_force_metrics(gts, [np.minimum(lab.numpy(), 20) for lab in labels], 21, 255)
    for key, value in expected.items():
        assert res_labels[key] == pytest.approx(value, rel=1e-12), key


def test_voc20b_hand_computed_with_labels(make_dataset):
    classes = [f"voc{i}" for i in range(20)] + ["background"]
    gt = np.array([[0, 20, 20, 255, 3]], dtype=np.uint8)
    name, records = make_dataset([gt], classes, evaluator_type="sem_seg_background")
    res = run_outputs(VOCbEvaluator(name), records, [{"sem_seg_labels": torch.tensor([[0, 22, 5, 24, 3]])}])
    res = res["sem_seg"]  # the same numbers as test_voc20b_maps_extra_channels_to_background
    assert res["IoU-background"] == pytest.approx(100 * 1 / 2)
    assert res["mIoU"] == pytest.approx(100 * 2.5 / 3)
    assert res["pACC"] == pytest.approx(100 * 3 / 4)


def test_bad_labels_are_refused(make_dataset):
    name, records = make_dataset([GT0], ["a", "b", "c"])
    evaluator = SemSegEvaluator(name)
    for labels, message in (
        (torch.tensor([[0, 1, 1, 3], [0, 0, 2, 1]]), r"class index 3 outside 0\.\.2"),
        (torch.tensor([[0, 1, 1, -1], [0, 0, 2, 1]]), r"class index -1 outside"),
        (torch.zeros(2, 4), r"integer tensor \[H, W\]"),
        (torch.zeros(1, 2, 4, dtype=torch.long), r"integer tensor \[H, W\]"),
        (torch.zeros(3, 4, dtype=torch.long), "does not match GT"),
    ):
        with pytest.raises(ValueError, match=message):
            run_outputs(evaluator, records, [{"sem_seg_labels": labels}])
    with pytest.raises(KeyError, match="neither 'sem_seg_labels' nor 'sem_seg'"):
        run_outputs(evaluator, records, [{"sem_seg_confidence": torch.zeros(2, 4)}])
    voc, voc_records = make_dataset([GT0], [f"v{i}" for i in range(21)], evaluator_type="sem_seg_background")
    with pytest.raises(ValueError, match="class index -2 outside >= 0"):
        run_outputs(VOCbEvaluator(voc), voc_records, [{"sem_seg_labels": torch.full((2, 4), -2)}])


class FakeClock:
    """``time.perf_counter`` of the evaluator module: the given readings, one per call."""

    def __init__(self, *readings):
        self.readings = list(readings)

    def perf_counter(self):
        return self.readings.pop(0)


def test_throughput_counts_the_images_after_the_first_batch(make_dataset, tmp_path, monkeypatch, caplog):
    from cat_seg.evaluation import sem_seg_evaluation

    gts = [GT0, GT1] * 3
    name, records = make_dataset(gts, ["a", "b", "c"])
    # batches of 2: the first ends at t=10, the two others at 10.5 and 11.25 -> 4 images in 1.25 s
    monkeypatch.setattr(sem_seg_evaluation, "time", FakeClock(10.0, 10.5, 11.25))
    out = tmp_path / "inference"
    with caplog.at_level("INFO", logger=sem_seg_evaluation.__name__):
        run(SemSegEvaluator(name, output_dir=str(out)), records, [PRED0, PRED1] * 3, 3, batch_size=2)
    payload = json.loads((out / "sem_seg_results.json").read_text())
    assert payload["num_images"] == 6
    assert payload["throughput"] == {"images_per_s": 3.2, "images": 4, "seconds": 1.25}
    assert f"Evaluation throughput on {name}: 3.20 images/s (4 images in 1.25 s" in caplog.text


def test_throughput_needs_a_second_batch(make_dataset, tmp_path, monkeypatch):
    from cat_seg.evaluation import sem_seg_evaluation

    name, records = make_dataset([GT0, GT1], ["a", "b", "c"])
    monkeypatch.setattr(sem_seg_evaluation, "time", FakeClock(10.0))
    out = tmp_path / "inference"
    run(SemSegEvaluator(name, output_dir=str(out)), records, [PRED0, PRED1], 3, batch_size=2)
    assert json.loads((out / "sem_seg_results.json").read_text())["throughput"] is None


def test_distributed_throughput_is_all_images_over_the_longest_rank(make_dataset, monkeypatch, tmp_path):
    from detectron2.evaluation import sem_seg_evaluation as d2_sem_seg

    name, records = make_dataset([GT0, GT1], ["a", "b", "c"])
    evaluator = SemSegEvaluator(name, output_dir=str(tmp_path / "inference"))  # detectron2 writes its files there
    evaluator.process([{"file_name": records[0]["file_name"]}], [{"sem_seg": scores_from_pred(PRED0, 3)}])
    own = (1, 3, 2.0)  # this rank: 3 images timed in 2 s; the other: 5 in 4 s
    monkeypatch.setattr(evaluator, "_counts", lambda: own)

    def fake_all_gather(data, group=None):
        return [data, (6, 5, 4.0)] if data is own else [data, data]

    for module in (comm, d2_sem_seg):
        monkeypatch.setattr(module, "all_gather", fake_all_gather)
        monkeypatch.setattr(module, "synchronize", lambda: None)
    written = {}
    monkeypatch.setattr(evaluator, "_write_outputs", lambda res, n, throughput: written.update(n=n, t=throughput))
    evaluator.evaluate()
    assert written == {"n": 7, "t": {"images_per_s": 2.0, "images": 8, "seconds": 4.0}}


def test_logged_results_show_plain_numbers(make_dataset, caplog):
    """detectron2's evaluator logs the results dict: numbers as ``63.33...``, not ``np.float64(63.33...)``."""
    from detectron2.evaluation import sem_seg_evaluation as d2_sem_seg

    name, records = make_dataset([GT0, GT1], ["a", "b", "c"])
    with caplog.at_level("INFO", logger=d2_sem_seg.__name__):
        res = run(SemSegEvaluator(name), records, [PRED0, PRED1], 3)["sem_seg"]
    logged = [r.getMessage() for r in caplog.records if r.name == d2_sem_seg.__name__ and "mIoU" in r.getMessage()]
    assert len(logged) == 1 and f"'mIoU': {float(res['mIoU'])!r}" in logged[0] and "np." not in logged[0], logged


def test_a_truncated_label_is_refused_not_scored(make_dataset):
    """The ground-truth reader retried files PIL refused with OpenCV, which decodes a truncated
    JPEG with made-up pixels; it now refuses them as training and --check-labels do."""
    from cat_seg.evaluation import load_sem_seg_gt

    gt = np.tile(np.arange(3, dtype=np.uint8), (40, 20))
    name, records = make_dataset([gt], ["a", "b", "c"], suffix=".jpg")  # OpenCV makes up the missing half
    path = records[0]["sem_seg_file_name"]
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(path) + r": cannot be read \(.*[Tt]runcated"):
        load_sem_seg_gt(path)
    with pytest.raises(ValueError, match=re.escape(path) + ": cannot be read"):
        run(SemSegEvaluator(name), records, [gt], 3)


def test_metadata_the_evaluator_reads_is_checked_with_one_line(make_dataset):
    """A dataset registered with detectron2's DatasetCatalog and incomplete metadata passed the
    checks before a run and failed after the whole inference: no ignore_label, class names as
    seen_classes, an index outside the classes; overlapping seen / unseen lists went unseen."""
    from cat_seg.data.datasets import DatasetError
    from cat_seg.evaluation import evaluator_problem

    cases = [
        ({"ignore_label": None}, "ignore_label is None; expected the integer label value of ignored pixels (e.g. 255)"),
        ({"seen_classes": ["a"], "unseen_classes": [1]},
         "seen_classes is ['a']; expected a list of class indexes 0..2 (positions in stuff_classes, not names)"),
        ({"seen_classes": [0], "unseen_classes": [7]}, "unseen_classes is [7]; expected a list of class indexes 0..2"),
        ({"seen_classes": [0, 1], "unseen_classes": [1, 2]}, "class(es) [1] are in both seen_classes and unseen_classes"),
        ({"seen_classes": [0]}, "seen_classes and unseen_classes go together; only one is set"),
    ]
    for meta, message in cases:
        ignore = meta.pop("ignore_label", 255)
        name, _ = make_dataset([GT0], ["a", "b", "c"], ignore_label=ignore, **meta)
        assert evaluator_problem(name).startswith(f"metadata of dataset {name!r}: {message}")
        with pytest.raises(DatasetError, match=re.escape(message)):
            SemSegEvaluator(name)
    name, _ = make_dataset([GT0], ["a", "b", "c"], seen_classes=[0, 1], unseen_classes=[2])
    assert evaluator_problem(name) is None
