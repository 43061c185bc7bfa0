"""Evaluation through ``Trainer.test`` asks the model for the predicted classes only: the same
metrics as with the ``[T, H, W]`` probabilities, which are never materialised, and the model
is left as it was."""
import json
import math
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators, inference_on_dataset
from detectron2.modeling import build_model
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from cat_seg.engine.trainer import Trainer
from cat_seg.evaluation import SemSegEvaluator
from cat_seg.modeling.postprocess import PROBABILITIES, OutputRequest

NUM_CLASSES = 40  # more than the class chunk below: a [T, H, W] map can only come from the full tensor
CLASS_CHUNK = 8
IMAGE_SIZES = [(40, 48), (52, 36), (44, 44)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A registered 3-image dataset of NUM_CLASSES classes (seen/unseen split) and its class json."""
    root = tmp_path_factory.mktemp("eval_labels")
    rng = np.random.default_rng(0)
    name = f"eval_labels_{uuid.uuid4().hex}"
    records = []
    for i, (h, w) in enumerate(IMAGE_SIZES):
        image, gt = root / f"{i}.png", root / f"{i}_gt.png"
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(image)
        labels = rng.integers(0, NUM_CLASSES, size=(h, w)).astype(np.uint8)
        labels[rng.random((h, w)) < 0.1] = 255
        Image.fromarray(labels).save(gt)
        records.append({"file_name": str(image), "sem_seg_file_name": str(gt), "height": h, "width": w,
                        "image_id": i})
    classes = [f"thing number {i}" for i in range(NUM_CLASSES)]
    class_json = root / "classes.json"
    class_json.write_text(json.dumps(classes))
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=classes, ignore_label=255, evaluator_type="sem_seg",
                                  seen_classes=list(range(0, NUM_CLASSES, 2)),
                                  unseen_classes=list(range(1, NUM_CLASSES, 2)))
    yield {"name": name, "class_json": str(class_json)}
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def make_cfg(build_cfg, dataset, out_dir, sliding):
    return build_cfg("b", {
        "DATASETS.TEST": (dataset["name"],),
        "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON": dataset["class_json"],
        "INPUT.MIN_SIZE_TEST": 64,
        "INPUT.SIZE_DIVISIBILITY": 64,
        "MODEL.SEM_SEG_HEAD.FEATURE_RESOLUTION": [4, 4],
        "MODEL.SEM_SEG_HEAD.WINDOW_SIZES": 2,
        "TEST.SLIDING_WINDOW": sliding,
        "TEST.CLASS_CHUNK_SIZE": CLASS_CHUNK,
        "TEST.IMS_PER_BATCH": 2,
        "OUTPUT_DIR": str(out_dir),
    })


def make_model(cfg):
    torch.manual_seed(0)
    return build_model(cfg).eval()


class RecordingEvaluator(SemSegEvaluator):
    """SemSegEvaluator that keeps the keys and the predicted classes of every output."""

    def reset(self):
        super().reset()
        self.keys, self.labels = [], {}

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            self.keys.append(set(output))
            self.labels[input["file_name"]] = self.predicted_labels(output).cpu().clone()
        super().process(inputs, outputs)


class FullMapsSeen(TorchDispatchMode):
    """Records every tensor that an operation returns with the shape ``[..., T, H, W]`` of the
    full probability maps of one of ``sizes`` (``(H, W)``)."""

    def __init__(self, num_classes, sizes):
        super().__init__()
        self.shapes = {(num_classes, h, w) for h, w in sizes}
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and tuple(t.shape[-3:]) in self.shapes:
                self.seen.append((str(func), tuple(t.shape)))
        return out


def nan_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert (math.isnan(a[key]) and math.isnan(b[key])) or a[key] == b[key], key


@pytest.mark.parametrize("sliding", [False, True], ids=["whole", "sliding"])
def test_labels_mode_same_metrics_and_no_full_maps(build_cfg, dataset, tmp_path, sliding):
    cfg = make_cfg(build_cfg, dataset, tmp_path, sliding)
    model = make_model(cfg)
    assert model.output_request is PROBABILITIES  # the model's default
    name = dataset["name"]

    # probabilities (the model's default), evaluated as before
    by_probs = RecordingEvaluator(name, distributed=False, output_dir=str(tmp_path / "probs"))
    with FullMapsSeen(NUM_CLASSES, IMAGE_SIZES) as probs_mode:
        res_probs = inference_on_dataset(model, Trainer.build_test_loader(cfg, name), by_probs)["sem_seg"]
    assert all("sem_seg" in keys and "sem_seg_labels" not in keys for keys in by_probs.keys)
    assert probs_mode.seen  # the check below can see full maps

    # Trainer.test: labels only, no [T, H, W] tensor anywhere
    by_labels = RecordingEvaluator(name, distributed=False, output_dir=str(tmp_path / "labels"))
    with FullMapsSeen(NUM_CLASSES, IMAGE_SIZES) as labels_mode:
        res_labels = Trainer.test(cfg, model, [by_labels])["sem_seg"]
    assert by_labels.keys == [{"sem_seg_labels", "sem_seg_confidence"}] * len(IMAGE_SIZES)
    assert labels_mode.seen == []
    assert by_labels.labels.keys() == by_probs.labels.keys()
    for file_name, labels in by_labels.labels.items():
        torch.testing.assert_close(labels, by_probs.labels[file_name], rtol=0, atol=0)
    assert {"mIoU", "mIoU-seen", "mIoU-unseen", "hIoU"} <= set(res_labels)
    nan_equal(res_labels, res_probs)

    # the default evaluators (built by Trainer.test itself) report the same numbers
    nan_equal(Trainer.test(cfg, model)["sem_seg"], res_probs)
    assert model.output_request is PROBABILITIES  # left as it was
    # nothing of the evaluation is kept for the rest of a training: its text embeddings are
    # stale after the next step (each periodic evaluation added a cache entry)
    assert len(model.text_encoder._cache) == 0


def test_model_state_restored_and_other_evaluators_get_probabilities(build_cfg, dataset, tmp_path):
    cfg = make_cfg(build_cfg, dataset, tmp_path, sliding=False)
    model = make_model(cfg)
    name = dataset["name"]

    class Keys(DatasetEvaluator):
        """Any other evaluator: expects detectron2's ``sem_seg`` probabilities."""

        def reset(self):
            self.keys = []

        def process(self, inputs, outputs):
            self.keys.extend(set(output) for output in outputs)

        def evaluate(self):
            return {}

    # an evaluator that is not a SemSegEvaluator: the model keeps its own request
    ours, other = RecordingEvaluator(name, distributed=False), Keys()
    Trainer.test(cfg, model, [DatasetEvaluators([ours, other])])
    assert other.keys == [{"sem_seg"}] * len(IMAGE_SIZES)

    # the model's own request is not changed, not even during the evaluation (the inputs the
    # model is given ask for labels; the evaluator's own inputs are left as they were)
    own_request = OutputRequest(labels=True, dtype=torch.float16)
    model.output_request = own_request

    class Failing(RecordingEvaluator):
        def process(self, inputs, outputs):
            assert model.output_request is own_request
            assert all("output_request" not in x for x in inputs)
            assert all(set(output) == {"sem_seg_labels", "sem_seg_confidence"} for output in outputs)
            raise RuntimeError("evaluation failed")

    with pytest.raises(RuntimeError, match="evaluation failed"):
        Trainer.test(cfg, model, [Failing(name, distributed=False)])
    assert model.output_request is own_request and not model.training

    # a wrapped model (DDP): asked the same way through the wrapper
    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, inputs):
            return self.module(inputs)

    model.output_request = PROBABILITIES
    seen = RecordingEvaluator(name, distributed=False)
    model._graphed_views._graphs["captured during the evaluation"] = object()  # what a CUDA run leaves
    Trainer.test(cfg, Wrapper(model), [seen])
    assert seen.keys == [{"sem_seg_labels", "sem_seg_confidence"}] * len(IMAGE_SIZES)
    assert model.output_request is PROBABILITIES
    assert not model._graphed_views._graphs  # released for the rest of the training


def test_evaluators_read_labels():
    class Other(DatasetEvaluator):
        pass

    class OwnBuilder(Trainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            return Other()

    assert Trainer.evaluators_read_labels(None)
    assert not OwnBuilder.evaluators_read_labels(None)  # unknown evaluators: probabilities
    assert not Trainer.evaluators_read_labels([Other()])
    assert not Trainer.evaluators_read_labels(DatasetEvaluators([Other()]))
