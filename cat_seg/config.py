"""Config keys of cat-seg: the official CAT-Seg key names plus a few of our own.

This module is the one place where config defaults live. ``add_cat_seg_config(cfg)`` is
called on a fresh ``detectron2.config.get_cfg()`` (after detectron2's DeepLab keys) by
``train_net.py``, the demo, the Python API and the tests.

Official keys keep their names and meaning (see README, "Config keys"), so command lines
written for the official code work unchanged. Keys that only existed for removed legacy
code are still accepted (``MODEL.SWIN.*``, ``DATASETS.VAL_ALL``,
``MODEL.SEM_SEG_HEAD.TRAIN/TEST_CLASS_INDEXES``, ``MODEL.PROMPT_ENSEMBLE``) and ignored.
"""
from detectron2.config import CfgNode as CN


def add_cat_seg_config(cfg):
    """Add all CAT-Seg keys (with their defaults) to ``cfg`` in place and return it."""
    from detectron2.projects.deeplab import add_deeplab_config

    if not hasattr(cfg.SOLVER, "POLY_LR_POWER"):
        add_deeplab_config(cfg)

    # ---------------------------------------------------------------- data
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    cfg.DATASETS.VAL_ALL = ("coco_2017_val_all_stuff_sem_seg",)  # legacy, unused

    # ---------------------------------------------------------------- solver
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.CLIP_MULTIPLIER = 0.01
    # Mixed precision: detectron2 has SOLVER.AMP.ENABLED; we add the dtype (bf16 | fp16).
    cfg.SOLVER.AMP.PRECISION = "bf16"

    # ---------------------------------------------------------------- model
    cfg.MODEL.MASK_FORMER = CN()
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32

    head = cfg.MODEL.SEM_SEG_HEAD
    head.TRAIN_CLASS_JSON = "datasets/coco.json"
    head.TEST_CLASS_JSON = "datasets/coco.json"
    head.TRAIN_CLASS_INDEXES = "datasets/coco/coco_stuff/split/seen_indexes.json"  # legacy
    head.TEST_CLASS_INDEXES = "datasets/coco/coco_stuff/split/unseen_indexes.json"  # legacy
    # CLIP architecture: an official name ("ViT-B/16", "ViT-L/14@336px"), an open_clip model
    # name ("ViT-B-16", "ViT-H-14", ...) or a path to an open_clip model-config JSON.
    head.CLIP_PRETRAINED = "ViT-B/16"
    # Where the CLIP weights come from: an open_clip pretrained tag ("openai", downloads on
    # first use), a local checkpoint file, or "" / "none" (random init: tests, or when a full
    # CAT-Seg checkpoint is loaded afterwards through MODEL.WEIGHTS).
    head.CLIP_WEIGHTS = "openai"
    # Side of the square image fed to CLIP. 0 = derive: FEATURE_RESOLUTION x patch size
    # (the official recipe: a 24x24 grid, so ViT-B/16 at 384 px and ViT-L/14 at 336 px).
    head.CLIP_RESOLUTION = 0
    # Blocks whose outputs guide the decoder. Empty = derive from depth (official 3/7 for
    # 12 blocks, 7/15 for 24 blocks).
    head.GUIDANCE_BLOCK_INDEXES = []
    head.PROMPT_DEPTH = 0
    head.PROMPT_LENGTH = 0
    head.TEXT_GUIDANCE_DIM = 512
    head.TEXT_GUIDANCE_PROJ_DIM = 128
    head.APPEARANCE_GUIDANCE_DIM = 512
    head.APPEARANCE_GUIDANCE_PROJ_DIM = 128
    head.DECODER_DIMS = [64, 32]
    head.DECODER_GUIDANCE_DIMS = [256, 128]
    head.DECODER_GUIDANCE_PROJ_DIMS = [32, 16]
    head.NUM_LAYERS = 4
    head.NUM_HEADS = 4
    head.HIDDEN_DIMS = 128
    head.POOLING_SIZES = [6, 6]
    # Pooling of the class aggregation at inference (the official eval.sh sets
    # POOLING_SIZES [1,1] for evaluation; this key lets training-time evaluation differ).
    # Empty = use POOLING_SIZES.
    head.TEST_POOLING_SIZES = []
    head.FEATURE_RESOLUTION = [24, 24]
    head.WINDOW_SIZES = 12
    head.ATTENTION_TYPE = "linear"
    head.CLIP_FINETUNE = "attention"
    head.PAD_LEN = 256
    # Official quirk Q4: the class block adds its (pooled) input again. Released weights
    # were trained with it; turn off only for new trainings.
    head.CLASS_RESIDUAL_QUIRK = True

    cfg.MODEL.PROMPT_ENSEMBLE = False  # legacy, unused
    cfg.MODEL.PROMPT_ENSEMBLE_TYPE = "single"
    cfg.MODEL.CLIP_PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]
    cfg.MODEL.CLIP_PIXEL_STD = [68.5005327, 66.6321579, 70.3231630]

    # Legacy Swin feature backbone of the arXiv-v1 model: accepted, unused.
    cfg.MODEL.SWIN = CN()
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224
    cfg.MODEL.SWIN.PATCH_SIZE = 4
    cfg.MODEL.SWIN.EMBED_DIM = 96
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    cfg.MODEL.SWIN.QKV_BIAS = True
    cfg.MODEL.SWIN.QK_SCALE = None
    cfg.MODEL.SWIN.DROP_RATE = 0.0
    cfg.MODEL.SWIN.ATTN_DROP_RATE = 0.0
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3
    cfg.MODEL.SWIN.APE = False
    cfg.MODEL.SWIN.PATCH_NORM = True
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]

    # ---------------------------------------------------------------- test
    cfg.TEST.SLIDING_WINDOW = False
    # Sliding-window geometry (official values hard-coded: crop 384, overlap 1/3, canvas 640).
    cfg.TEST.SLIDING_WINDOW_CROP = 384
    cfg.TEST.SLIDING_WINDOW_OVERLAP = 0.333
    cfg.TEST.SLIDING_WINDOW_CANVAS = 640
    # Images per forward during evaluation (the official code is fixed at 1).
    cfg.TEST.IMS_PER_BATCH = 1
    # Classes per chunk (per image) in the per-class spatial blocks, the decoder and the
    # sliding-window post-processing at inference (0 = all at once; -1 = auto: 32 on CPU,
    # where it is ~1.3x faster, all at once on GPU). Bounds memory for large vocabularies;
    # results do not depend on it. With MODEL.FAST.CHECKPOINT_ACTIVATIONS it is also the
    # recomputation chunk in training (0 or -1 = one image).
    cfg.TEST.CLASS_CHUNK_SIZE = -1

    # ---------------------------------------------------------------- precision and speed
    # Compute precision for training and inference: auto | fp32 | bf16 | fp16
    # (cat_seg/modeling/precision.py; auto = bf16 where the device computes it natively).
    cfg.MODEL.PRECISION = "auto"
    # torch.compile the aggregator and decoder.
    cfg.MODEL.COMPILE = False
    # Training: recompute the per-class aggregation/decoder activations in the backward pass.
    cfg.MODEL.CHECKPOINT_ACTIVATIONS = False

    cfg.MODEL.FAST = CN()
    # Exact mode (fp32, TF32 off) when False: the reference computation.
    cfg.MODEL.FAST.INFERENCE_AUTOCAST = False
    cfg.MODEL.FAST.AUTOCAST_DTYPE = "bf16"
    # Under autocast (inference or SOLVER.AMP), run the CLIP image tower in the autocast dtype
    # too; False keeps it in fp32 (slower, closer to the exact mode).
    cfg.MODEL.FAST.AUTOCAST_CLIP = True
    # At inference under autocast, compute in fp32 where bf16 rounding flips the label
    # between similar classes: the cost embedding (reads the fp32 cosine scores; its fp32
    # output keeps the per-class maps fp32 through the aggregator's residual additions) and
    # the last decoder up-block. Both on: about half the label changes against the exact mode,
    # ~20% slower on CPU (docs/benchmarks.md). Training (SOLVER.AMP) is not affected.
    cfg.MODEL.FAST.FP32_COST_EMBEDDING = False
    cfg.MODEL.FAST.FP32_LAST_DECODER_BLOCK = False
    # Activation checkpointing of the per-class aggregation/decoder in training.
    cfg.MODEL.FAST.CHECKPOINT_ACTIVATIONS = False
    # Exact reorganisations of the computation (outputs within 1e-4 of all-off, the
    # reference; see cat_seg/modeling/fast.py and docs/benchmarks.md for what each does).
    cfg.MODEL.FAST.WINDOW_ATTENTION_4D = True  # window attention on the fused 4-D SDPA kernels
    cfg.MODEL.FAST.TOKEN_LAYOUT = True  # [B,T,H,W,D] class maps, one-gather windows, channels-last decoder
    cfg.MODEL.FAST.PADDING_CLOSED_FORM = True  # class-attention padding tokens in closed form
    cfg.MODEL.FAST.FUSED_UPCONV = True  # decoder transposed conv + first conv as one low-res conv
    cfg.MODEL.FAST.SKIP_PRUNED_CLASSES = True  # sliding window: classes pruned in every view -> constant
    cfg.MODEL.FAST.TRUNCATE_TEXT = True  # text tower on prompts cut after the last end-of-text token
    return cfg
