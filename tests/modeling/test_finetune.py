"""CLIP fine-tuning policies: trainable parameter sets (names and counts)."""
import json
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

import cat_seg.modeling  # noqa: F401

VITB_TRAINABLE = 25_115_873
VITB_CLIP_TRAINABLE = 20_447_232
VITB_AGGREGATOR = 2_308_961
VITB_UPSAMPLERS = 2_359_680
VITB_TOTAL = 154_289_378


def trainable(module, prefix=""):
    return {n for n, p in module.named_parameters(prefix=prefix) if p.requires_grad}


def count(module, names=None):
    return sum(p.numel() for n, p in module.named_parameters() if (names is None or n in names))


def qv_names(visual_depth, text_depth):
    names = set()
    for tower, depth in (("visual.transformer", visual_depth), ("transformer", text_depth)):
        for i in range(depth):
            names |= {f"{tower}.resblocks.{i}.attn.q_proj_weight", f"{tower}.resblocks.{i}.attn.v_proj_weight"}
    return names


# --------------------------------------------------------------------------- real ViT-B sizes
@pytest.fixture(scope="module")
def vitb(build_cfg):
    cfg = build_cfg("configs/vitb_384.yaml", MODEL__SEM_SEG_HEAD__CLIP_WEIGHTS="none")
    torch.manual_seed(0)
    return build_model(cfg)


def test_vitb_attention_mode_counts(vitb):
    clip = vitb.backbone.clip
    assert sum(p.numel() for p in vitb.parameters() if p.requires_grad) == VITB_TRAINABLE
    assert sum(p.numel() for p in clip.parameters() if p.requires_grad) == VITB_CLIP_TRAINABLE
    assert count(vitb.sem_seg_head.aggregator) == VITB_AGGREGATOR
    assert all(p.requires_grad for p in vitb.sem_seg_head.parameters())
    assert count(vitb.sem_seg_head.guidance_upsample) == VITB_UPSAMPLERS
    assert count(vitb) == VITB_TOTAL


def test_vitb_attention_mode_names(vitb):
    names = trainable(vitb.backbone.clip)
    assert len(names) == 48
    assert names == qv_names(12, 12)
    assert all(n.endswith(("attn.q_proj_weight", "attn.v_proj_weight")) for n in names)
    # everything trainable outside CLIP is the head
    outside = {n for n, p in vitb.named_parameters() if p.requires_grad and not n.startswith("backbone.clip.")}
    assert outside == {n for n, _ in vitb.named_parameters() if n.startswith("sem_seg_head.")}
    frozen = {n for n, p in vitb.backbone.clip.named_parameters() if not p.requires_grad}
    for name in ("visual.positional_embedding", "positional_embedding", "visual.transformer.resblocks.0.attn.in_proj_bias",
                 "visual.transformer.resblocks.0.attn.k_proj_weight", "transformer.resblocks.0.attn.out_proj.weight",
                 "visual.proj", "text_projection", "token_embedding.weight", "logit_scale"):
        assert name in frozen


def test_vitb_derived_geometry(vitb):
    bb = vitb.backbone
    assert bb.resolution == (384, 384) and bb.grid_size == (24, 24)
    assert bb.guidance_blocks == [3, 7]
    assert (bb.width, bb.embed_dim, bb.depth) == (768, 512, 12)
    ups = vitb.sem_seg_head.guidance_upsample
    assert tuple(ups[0].weight.shape) == (768, 256, 2, 2) and tuple(ups[1].weight.shape) == (768, 128, 4, 4)
    assert tuple(bb.clip.visual.positional_embedding.shape) == (197, 768)
    # a small input through the real-size backbone (6x6 grid, cheap)
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 96, 96))
    assert out["dense_embeddings"].shape == (1, 512, 6, 6)
    assert [tuple(out[f"block{i}"].shape) for i in bb.guidance_blocks] == [(1, 768, 6, 6)] * 2


# --------------------------------------------------------------------------- tiny configs
def tiny_dims():
    with open(Path(__file__).resolve().parents[2] / "configs/clip_models/tiny-vit-b16.json") as f:
        cfg = json.load(f)
    return cfg["vision_cfg"]["width"], cfg["vision_cfg"]["layers"], cfg["text_cfg"]["width"], cfg["text_cfg"]["layers"]


def block_params(w):
    # q, k, v, out_proj weights; in_proj_bias (3W) + out bias; ln_1, ln_2; MLP W->4W->W
    return 4 * w * w + 3 * w + w + 4 * w + (w * 4 * w + 4 * w) + (4 * w * w + w)


@pytest.mark.parametrize("mode", ["attention", "full", "none"])
def test_tiny_modes(tiny_model, mode):
    model = tiny_model("b", MODEL__SEM_SEG_HEAD__CLIP_FINETUNE=mode)
    clip = model.backbone.clip
    vw, vd, tw, td = tiny_dims()
    all_names = [n for n, _ in clip.named_parameters()]
    names = trainable(clip)
    if mode == "attention":
        assert names == qv_names(vd, td)
        assert count(clip, names) == 2 * vw * vw * vd + 2 * tw * tw * td
    elif mode == "full":
        assert names == {n for n in all_names if "transformer" in n}
        assert count(clip, names) == block_params(vw) * vd + block_params(tw) * td
        assert {"visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre.weight",
                "visual.ln_post.weight", "visual.proj", "token_embedding.weight", "positional_embedding",
                "ln_final.weight", "text_projection", "logit_scale"}.isdisjoint(names)
    else:
        assert names == set()
    assert model.backbone.visual_prompt_tokens is None
    assert trainable(model.backbone) == {f"clip.{n}" for n in names}
    assert all(p.requires_grad for p in model.sem_seg_head.parameters())


@pytest.mark.parametrize("mode,trained", [("prompt", True), ("full", True), ("attention", False), ("none", False)])
def test_prompt_tokens_follow_the_rule_of_their_official_name(tiny_model, mode, trained):
    """The official code keeps the deep prompts in CLIP as visual.transformer.prompt_tokens,
    a name with "transformer": trained in full mode too (they were frozen there)."""
    model = tiny_model("b", MODEL__SEM_SEG_HEAD__CLIP_FINETUNE=mode, MODEL__SEM_SEG_HEAD__PROMPT_DEPTH=2,
                       MODEL__SEM_SEG_HEAD__PROMPT_LENGTH=3)
    assert model.backbone.visual_prompt_tokens.requires_grad is trained


def test_tiny_prompt_mode(tiny_model, random_images):
    model = tiny_model("b", train=True, MODEL__SEM_SEG_HEAD__CLIP_FINETUNE="prompt",
                       MODEL__SEM_SEG_HEAD__PROMPT_DEPTH=4, MODEL__SEM_SEG_HEAD__PROMPT_LENGTH=3)
    vw, vd, _, _ = tiny_dims()
    assert trainable(model.backbone.clip) == set()
    assert trainable(model.backbone) == {"visual_prompt_tokens"}
    assert tuple(model.backbone.visual_prompt_tokens.shape) == (4, 3, vw)
    assert sum(p.numel() for p in model.backbone.parameters() if p.requires_grad) == 4 * 3 * vw
    batch = [{"image": im, "sem_seg": torch.zeros(128, 128, dtype=torch.long)} for im in random_images([(128, 128)])]
    model(batch)["loss_sem_seg"].backward()
    assert model.backbone.visual_prompt_tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.clip.parameters())


def test_prompt_tokens_change_output_and_partial_depth(tiny_model):
    """Prompts affect the features; a depth below the number of blocks keeps every patch token."""
    for depth in (4, 2):
        model = tiny_model("b", MODEL__SEM_SEG_HEAD__CLIP_FINETUNE="prompt",
                           MODEL__SEM_SEG_HEAD__PROMPT_DEPTH=depth, MODEL__SEM_SEG_HEAD__PROMPT_LENGTH=2)
        x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            a = model.backbone(x)["dense_embeddings"]
            tokens = model.backbone.visual_prompt_tokens
            tokens.copy_(10 * torch.randn(tokens.shape, generator=torch.Generator().manual_seed(1)))
            b = model.backbone(x)["dense_embeddings"]
        assert a.shape == b.shape == (1, model.backbone.embed_dim, 8, 8)
        assert (a - b).abs().max() > 1e-3


def test_attention_mode_gradients(tiny_model, random_images):
    """Training reaches text and image q/v weights; the last visual q weight gets exactly zero."""
    model = tiny_model("b", train=True)
    batch = [{"image": im, "sem_seg": torch.randint(0, 5, (128, 128), generator=torch.Generator().manual_seed(i))}
             for i, im in enumerate(random_images([(128, 128), (128, 128)]))]
    model(batch)["loss_sem_seg"].backward()
    params = dict(model.backbone.clip.named_parameters())
    last = len(model.backbone.clip.visual.transformer.resblocks) - 1
    last_q = params[f"visual.transformer.resblocks.{last}.attn.q_proj_weight"]
    assert last_q.requires_grad and (last_q.grad is None or torch.count_nonzero(last_q.grad) == 0)
    assert params[f"visual.transformer.resblocks.{last}.attn.v_proj_weight"].grad.abs().sum() > 0
    assert params["visual.transformer.resblocks.0.attn.q_proj_weight"].grad.abs().sum() > 0
    assert params["transformer.resblocks.0.attn.q_proj_weight"].grad.abs().sum() > 0
    assert params["transformer.resblocks.1.attn.v_proj_weight"].grad.abs().sum() > 0
    assert all(p.grad is None for p in params.values() if not p.requires_grad)
