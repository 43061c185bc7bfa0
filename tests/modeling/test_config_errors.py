"""Config mistakes give clear one-line errors naming the key and the bad value."""
import json
import re

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


@pytest.mark.parametrize("name,reason", [
    ("RN50", "its image tower is a ResNet"),
    ("convnext_base", "its image tower is the timm model 'convnext_base'"),
    ("coca_ViT-B-32", "a CoCa model (multimodal_cfg)"),
    ("ViT-B-16-SigLIP", "a model with a custom text tower"),
    ("roberta-ViT-B-32", "its text tower is the Hugging Face model 'roberta-base'"),
    ("ViT-L-14-CLIPA", "its text tower reads the tokens of the Hugging Face tokenizer 'bert-base-uncased'"),
])
def test_clip_kinds_cat_seg_cannot_use_are_named_before_building(name, reason):
    """open_clip models without a ViT image tower and open_clip's own text transformer and
    tokenizer: one line naming what they have, before anything is built (they failed with an
    AttributeError, TypeError or IndexError inside the model)."""
    from detectron2.config import get_cfg

    from cat_seg import add_cat_seg_config
    from cat_seg.config import check_config_values
    from cat_seg.modeling.clip.model_configs import resolve_clip_arch

    with pytest.raises(ValueError) as info:
        resolve_clip_arch(name)
    assert one_line(info).startswith(f"MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED={name!r}: {reason}")
    assert "CAT-Seg needs an open_clip CLIP with a ViT image tower" in str(info.value)
    cfg = add_cat_seg_config(get_cfg())
    cfg.MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED, cfg.MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS = name, "none"
    with pytest.raises(ValueError, match=re.escape(reason)):
        check_config_values(cfg)


def test_every_plain_open_clip_vit_is_accepted():
    """The open_clip ViT CLIPs (any width, patch size, QuickGELU or not) resolve; the released
    architectures among them."""
    import open_clip

    from cat_seg.modeling.clip.model_configs import OFFICIAL_CLIP_NAMES, resolve_clip_arch, unsupported_tower

    accepted = [name for name in open_clip.list_models() if unsupported_tower(open_clip.get_model_config(name)) is None]
    for name in ("ViT-B-16", "ViT-B-32", "ViT-L-14-336", "ViT-H-14", "ViT-bigG-14", "ViT-M-16-alt"):
        assert name in accepted
    for official in OFFICIAL_CLIP_NAMES:
        assert resolve_clip_arch(official).name in accepted
    # a hand-written model config with CoCa's attention pooling on a plain ViT
    vit = dict(open_clip.get_model_config("ViT-B-16"))
    vit["vision_cfg"] = dict(vit["vision_cfg"], attentional_pool=True)
    assert unsupported_tower(vit) == "its image tower pools with attention (attentional_pool)"


@pytest.mark.parametrize("opts, message", [
    ({"MODEL.SEM_SEG_HEAD.NUM_HEADS": 3}, "hidden dim 32 is not divisible by 3 heads (MODEL.SEM_SEG_HEAD.HIDDEN_DIMS, "
                                          "NUM_HEADS)"),
    ({"MODEL.SEM_SEG_HEAD.CLIP_RESOLUTION": 96}, "the 6x6 cost map (the CLIP patch grid) does not split into 4x4 "
                                                 "windows: MODEL.SEM_SEG_HEAD.WINDOW_SIZES=4"),
    ({"TEST.SLIDING_WINDOW": True, "TEST.SLIDING_WINDOW_OVERLAP": 0.1},
     "sliding-window crops leave the last 85 pixels of the canvas uncovered"),
    ({"MODEL.SEM_SEG_HEAD.DECODER_DIMS": [16, 8, 4]}, "DECODER_DIMS [16, 8, 4] and DECODER_GUIDANCE_PROJ_DIMS [8, 4] "
                                                      "must have the same length"),
    ({"MODEL.SEM_SEG_HEAD.DECODER_DIMS": [16, 0]},
     "MODEL.SEM_SEG_HEAD.DECODER_DIMS=[16, 0]: expected a positive number of channels per decoder block"),
    ({"MODEL.SEM_SEG_HEAD.DECODER_GUIDANCE_PROJ_DIMS": [0, 0]},
     "MODEL.SEM_SEG_HEAD.DECODER_GUIDANCE_PROJ_DIMS=[0, 0]: expected a positive number of channels"),
    ({"MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_PROJ_DIM": -1},
     "MODEL.SEM_SEG_HEAD.TEXT_GUIDANCE_PROJ_DIM=-1: expected 0 (no text guidance) or a positive"),
    ({"MODEL.CLIP_PIXEL_STD": [68.5, 0.0, 70.3]},
     "MODEL.CLIP_PIXEL_STD=[68.5, 0.0, 70.3]: expected three positive numbers, one per RGB channel"),
    ({"MODEL.CLIP_PIXEL_MEAN": [122.8]}, "MODEL.CLIP_PIXEL_MEAN=[122.8]: expected three numbers, one per RGB"),
    ({"TEST.CLASS_CHUNK_SIZE": -5}, "TEST.CLASS_CHUNK_SIZE=-5: expected -1 (auto), 0 (all classes at once) or a "),
    ({"INPUT.MIN_SIZE_TEST": -1}, "INPUT.MIN_SIZE_TEST=-1: expected 0 (keep the image's size) or the shorter side"),
    ({"INPUT.MAX_SIZE_TEST": 0}, "INPUT.MAX_SIZE_TEST=0: expected a positive longest side in pixels"),
    ({"SOLVER.CLIP_MULTIPLIER": -0.01},
     "SOLVER.CLIP_MULTIPLIER=-0.01: expected a factor >= 0 of SOLVER.BASE_LR for CLIP's parameters"),
    ({"SOLVER.WEIGHT_DECAY_NORM": -1e-4}, "SOLVER.WEIGHT_DECAY_NORM=-0.0001: expected a weight decay >= 0"),
    ({"SOLVER.BASE_LR": 0.0}, "SOLVER.BASE_LR=0.0: expected a positive learning rate"),
    ({"SOLVER.CLIP_GRADIENTS.NORM_TYPE": 0.0},
     "SOLVER.CLIP_GRADIENTS.NORM_TYPE=0.0: expected a positive norm order p (2.0: Euclidean; .inf: the largest"),
    ({"MODEL.META_ARCHITECTURE": "GeneralizedRCNN"},
     "MODEL.META_ARCHITECTURE='GeneralizedRCNN': registered, but not CATSeg or a subclass of it"),
    ({"MODEL.META_ARCHITECTURE": "MyCATSeg"},
     "MODEL.META_ARCHITECTURE='MyCATSeg': not registered; expected CATSeg or a subclass of it (register yours in a "
     "script of your own that runs train_net, or import the module that registers it before building the model in "
     "Python: docs/architecture.md, 'Building on cat-seg')"),
    ({"MODEL.SEM_SEG_HEAD.NAME": "CATSegHeads"}, "MODEL.SEM_SEG_HEAD.NAME='CATSegHeads': not a registered head"),
    ({"MODEL.BACKBONE.NAME": "CLIPVisionBackbones"},
     "MODEL.BACKBONE.NAME='CLIPVisionBackbones': not registered; expected CLIPVisionBackbone or a registered subclass"),
    ({"MODEL.BACKBONE.NAME": "build_resnet_backbone"},
     "MODEL.BACKBONE.NAME='build_resnet_backbone': CAT-Seg needs a CLIP backbone, expected CLIPVisionBackbone"),
    ({"MODEL.SEM_SEG_HEAD.PAD_LEN": -1}, "MODEL.SEM_SEG_HEAD.PAD_LEN=-1: expected 0 (no padding) or a positive"),
    ({"MODEL.SEM_SEG_HEAD.FEATURE_RESOLUTION": [0, 0]}, "MODEL.SEM_SEG_HEAD.FEATURE_RESOLUTION=[0, 0]: expected two "
                                                       "positive integers"),
    ({"TEST.IMS_PER_BATCH": -1}, "TEST.IMS_PER_BATCH=-1: expected 0 (auto) or a positive number"),
    ({"TEST.SLIDING_WINDOW_CROP": 0}, "TEST.SLIDING_WINDOW_CROP=0: expected a positive crop side"),
    ({"SOLVER.CHECKPOINT_PERIOD": 0}, "SOLVER.CHECKPOINT_PERIOD=0: expected a positive number of iterations"),
    ({"DATALOADER.NUM_WORKERS": -1}, "DATALOADER.NUM_WORKERS=-1: expected 0 (load in the main process) or more"),
    ({"INPUT.FORMAT": "BGR"}, "INPUT.FORMAT='BGR': expected 'RGB', the channel order of CLIP's images"),
    ({"INPUT.DATASET_MAPPER_NAME": "mask_former_panoptic"},
     "INPUT.DATASET_MAPPER_NAME='mask_former_panoptic': expected one of mask_former_semantic"),
    ({"MODEL.SEM_SEG_HEAD.PROMPT_LENGTH": -1},
     "MODEL.SEM_SEG_HEAD.PROMPT_LENGTH=-1: expected 0 or more prompt tokens per block"),
    ({"MODEL.SEM_SEG_HEAD.PROMPT_DEPTH": 13, "MODEL.SEM_SEG_HEAD.PROMPT_LENGTH": 2},
     "MODEL.SEM_SEG_HEAD.PROMPT_DEPTH=13: expected 0 to "),
    ({"MODEL.SEM_SEG_HEAD.CLIP_RESOLUTION": 100},
     "CLIP resolution (100, 100) is not a multiple of the patch size 16 (MODEL.SEM_SEG_HEAD.CLIP_RESOLUTION)"),
    # torch's SGD raised these once training started, with a traceback
    ({"SOLVER.OPTIMIZER": "SGD", "SOLVER.NESTEROV": True, "SOLVER.MOMENTUM": 0.0},
     "SOLVER.NESTEROV True with SOLVER.MOMENTUM=0.0: Nesterov momentum needs a momentum > 0 (SGD)"),
    # accepted without a word before: clipping silently off, a crop constraint that cannot hold,
    # padding to a negative multiple (no padding)
    ({"SOLVER.CLIP_GRADIENTS.ENABLED": True, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": -1.0},
     "SOLVER.CLIP_GRADIENTS.CLIP_VALUE=-1.0: expected a positive clipping threshold"),
    ({"INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 0.0},
     "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA=0.0: expected a fraction in (0, 1] of the crop one class may cover"),
    ({"MODEL.MASK_FORMER.SIZE_DIVISIBILITY": -7},
     "MODEL.MASK_FORMER.SIZE_DIVISIBILITY=-7: expected 0 (no padding) or a positive size"),
])
def test_what_the_model_would_reject_is_found_before_building(build_cfg, opts, message):
    """check_config_values (train_net --check-only, the API, eval.sh) builds the model on the
    meta device: the constructors' errors come before a run starts, with no memory or weights;
    they used to come with a traceback after the data and the CLIP weights were loaded."""
    from cat_seg.config import check_config_values

    cfg = build_cfg("b", opts)
    with pytest.raises(ValueError) as info:
        check_config_values(cfg, eval_only=False)
    assert one_line(info).startswith(message)
    check_config_values(build_cfg("b"), eval_only=False)


def test_meta_architecture_and_input_format_default_to_cat_segs():
    """A config that does not set MODEL.META_ARCHITECTURE (detectron2's default is
    GeneralizedRCNN) builds CAT-Seg, and one that does not set INPUT.FORMAT reads RGB images."""
    from detectron2.config import get_cfg

    from cat_seg import add_cat_seg_config

    assert add_cat_seg_config(get_cfg()).MODEL.META_ARCHITECTURE == "CATSeg"
    assert add_cat_seg_config(get_cfg()).INPUT.FORMAT == "RGB"  # detectron2's default is BGR


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


def test_training_checks_use_the_values_reference_world_size_scales_to(build_cfg):
    """SOLVER.REFERENCE_WORLD_SIZE N: the trainer scales batch and schedule by processes / N
    (detectron2's auto_scale_workers), so the checks judge the scaled values."""
    from cat_seg.config import check_config_values

    cfg = build_cfg("b", {"SOLVER.IMS_PER_BATCH": 3, "SOLVER.REFERENCE_WORLD_SIZE": 1,
                          "SOLVER.CHECKPOINT_PERIOD": 4})
    check_config_values(cfg, processes=2, eval_only=False)  # batch 6 on 2 processes
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 0
    with pytest.raises(ValueError, match=r"^SOLVER.IMS_PER_BATCH=3: expected a positive multiple of the 2 "):
        check_config_values(cfg, processes=2, eval_only=False)
    cfg.SOLVER.REFERENCE_WORLD_SIZE, cfg.SOLVER.CHECKPOINT_PERIOD = 1, 1
    with pytest.raises(ValueError, match=r"^SOLVER.CHECKPOINT_PERIOD=0: expected a positive number of iterations "
                                         r"\(after scaling for 2 training process\(es\) from "
                                         r"SOLVER.REFERENCE_WORLD_SIZE=1\)$"):
        check_config_values(cfg, processes=2, eval_only=False)
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 2
    with pytest.raises(ValueError, match=r"^SOLVER.REFERENCE_WORLD_SIZE=2: SOLVER.IMS_PER_BATCH=3 must be a "
                                         r"multiple of it"):
        check_config_values(cfg, processes=2, eval_only=False)
    cfg.SOLVER.REFERENCE_WORLD_SIZE = -1
    with pytest.raises(ValueError, match=r"^SOLVER.REFERENCE_WORLD_SIZE=-1: expected 0 \(no scaling\)"):
        check_config_values(cfg, processes=2, eval_only=False)
    cfg.SOLVER.REFERENCE_WORLD_SIZE, cfg.MODEL.PRECISION = 1, "fp64"  # not a scaled key: no note
    with pytest.raises(ValueError, match=r"^MODEL.PRECISION='fp64': expected one of [^(]*$"):
        check_config_values(cfg, processes=2, eval_only=False)
