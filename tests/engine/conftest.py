"""Fixtures for engine tests: a tiny synthetic benchmark and a tiny training config."""
import json

import pytest


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory):
    """A small synthetic benchmark (24 train / 6 val images of 64 px) and its class jsons."""
    from cat_seg.data.synthetic import generate_synthetic, train_class_names, val_class_names

    root = tmp_path_factory.mktemp("datasets")
    generate_synthetic(root, num_train=24, num_val=6, image_size=64, seed=3, verbose=False)
    jsons = {}
    for split, names in (("train", train_class_names()), ("val", val_class_names())):
        path = root / f"synthetic_{split}.json"
        path.write_text(json.dumps(names))
        jsons[split] = str(path)
    return {"root": str(root), "train_json": jsons["train"], "val_json": jsons["val"]}
