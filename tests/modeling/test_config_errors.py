"""Config mistakes give clear one-line errors naming the key and the bad value."""
import json

import pytest
import torch
from detectron2.modeling import build_model

import cat_seg.modeling  # noqa: F401


def one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg.strip(), msg
    return msg


@pytest.mark.parametrize(
    "key,value,words",
    [
        ("MODEL.SEM_SEG_HEAD.CLIP_FINETUNE", "qv_only", ["CLIP_FINETUNE", "qv_only", "attention"]),
        ("MODEL.PROMPT_ENSEMBLE_TYPE", "vild", ["PROMPT_ENSEMBLE_TYPE", "vild", "imagenet_select"]),
        ("MODEL.SEM_SEG_HEAD.ATTENTION_TYPE", "flash", ["ATTENTION_TYPE", "flash", "linear"]),
        ("MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED", "configs/clip_models/does-not-exist.json",
         ["CLIP_PRETRAINED", "does-not-exist.json", "not found"]),
        ("MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED", "ViT-Z/99", ["CLIP_PRETRAINED", "ViT-Z/99"]),
        ("MODEL.PRECISION", "fp8", ["MODEL.PRECISION", "fp8", "bf16"]),
    ],
)
def test_bad_values_fail_at_build(build_cfg, key, value, words):
    cfg = build_cfg("b", {key: value})
    with pytest.raises(ValueError) as info:
        build_model(cfg)
    msg = one_line(info)
    for word in words:
        assert word in msg


@pytest.mark.parametrize("split", ["train", "test"])
def test_missing_class_json(build_cfg, random_images, tmp_path, split):
    missing = str(tmp_path / f"no_{split}_classes.json")
    cfg = build_cfg("b", {f"MODEL.SEM_SEG_HEAD.{split.upper()}_CLASS_JSON": missing})
    model = build_model(cfg).train(split == "train")
    image = random_images([(32, 32)])[0]
    batch = [{"image": image, "sem_seg": torch.zeros(32, 32, dtype=torch.long)}]
    with pytest.raises(FileNotFoundError) as info, torch.no_grad():
        model(batch)
    msg = one_line(info)
    assert missing in msg and f"{split.upper()}_CLASS_JSON" in msg


def test_malformed_class_json(build_cfg, random_images, tmp_path):
    bad = tmp_path / "classes.json"
    bad.write_text(json.dumps({"classes": ["a"]}))
    model = build_model(build_cfg("b", MODEL__SEM_SEG_HEAD__TEST_CLASS_JSON=str(bad))).eval()
    with pytest.raises(ValueError) as info, torch.no_grad():
        model([{"image": random_images([(32, 32)])[0]}])
    assert str(bad) in one_line(info)
