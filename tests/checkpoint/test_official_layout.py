"""The official key layout of the generator, and the official -> ours key mapping."""
import math

import pytest
import torch
from official_reference import AGG, CLIP, official_key_shapes

from cat_seg.checkpoint import CheckpointFormatError, convert_official_state_dict, detect_layout


def _count(shapes, predicate):
    return sum(math.prod(shape) for key, shape in shapes.items() if predicate(key))


@pytest.mark.parametrize("arch,keys,aggregator,upsamplers,clip", [
    ("vit-b", 484, 2_308_961, 2_359_680, 149_620_737),
    ("vit-l", 652, 2_636_641, 3_146_112, 427_944_193),
])
def test_generator_matches_spec_counts(arch, keys, aggregator, upsamplers, clip):
    shapes = official_key_shapes(arch)
    assert len(shapes) == keys  # parameters + one attn_mask buffer per aggregator layer
    assert _count(shapes, lambda k: k.startswith(AGG) and not k.endswith("attn_mask")) == aggregator
    assert _count(shapes, lambda k: k.startswith("upsample")) == upsamplers
    assert _count(shapes, lambda k: k.startswith(CLIP)) == clip
    assert all(k.startswith((CLIP, AGG, "upsample1.", "upsample2.")) for k in shapes)


def test_generator_vitb_shapes_from_spec_text():
    """Official ViT-B key shapes, written out."""
    s = official_key_shapes("vit-b")
    expected = {
        CLIP + "positional_embedding": (77, 512),
        CLIP + "text_projection": (512, 512),
        CLIP + "logit_scale": (),
        CLIP + "token_embedding.weight": (49408, 512),
        CLIP + "transformer.resblocks.11.attn.k_proj_weight": (512, 512),
        CLIP + "transformer.resblocks.0.attn.in_proj_bias": (1536,),
        CLIP + "transformer.resblocks.3.mlp.c_fc.weight": (2048, 512),
        CLIP + "visual.class_embedding": (768,),
        CLIP + "visual.positional_embedding": (197, 768),
        CLIP + "visual.proj": (768, 512),
        CLIP + "visual.conv1.weight": (768, 3, 16, 16),
        CLIP + "visual.transformer.resblocks.11.attn.q_proj_weight": (768, 768),
        CLIP + "visual.transformer.resblocks.7.attn.in_proj_bias": (2304,),
        CLIP + "visual.transformer.resblocks.2.mlp.c_proj.weight": (768, 3072),
        AGG + "layers.1.swin_block.block_2.attn.q.weight": (128, 256),
        AGG + "layers.0.swin_block.block_1.attn.v.weight": (128, 128),
        AGG + "layers.1.swin_block.block_2.attn_mask": (4, 144, 144),
        AGG + "layers.0.swin_block.guidance_norm.weight": (128,),
        AGG + "layers.0.attention.padding_tokens": (1, 1, 128),
        AGG + "layers.1.attention.attention.k.weight": (128, 256),
        AGG + "layers.1.attention.MLP.2.weight": (128, 512),
        AGG + "conv1.weight": (128, 1, 7, 7),
        AGG + "guidance_projection.0.weight": (128, 512, 3, 3),
        AGG + "text_guidance_projection.0.weight": (128, 512),
        AGG + "decoder_guidance_projection.0.0.weight": (32, 256, 3, 3),
        AGG + "decoder_guidance_projection.1.0.weight": (16, 128, 3, 3),
        AGG + "decoder1.up.weight": (128, 96, 2, 2),
        AGG + "decoder1.conv.double_conv.0.weight": (64, 128, 3, 3),
        AGG + "decoder1.conv.double_conv.4.bias": (64,),
        AGG + "decoder2.up.weight": (64, 48, 2, 2),
        AGG + "decoder2.conv.double_conv.3.weight": (32, 32, 3, 3),
        AGG + "head.weight": (1, 32, 3, 3),
        "upsample1.weight": (768, 256, 2, 2),
        "upsample2.weight": (768, 128, 4, 4),
        "upsample2.bias": (128,),
    }
    for key, shape in expected.items():
        assert s[key] == shape, key
    assert not any("in_proj_weight" in k for k in s)


def test_generated_tiny_state(official_tiny):
    assert {k: tuple(v.shape) for k, v in official_tiny.items()} == dict(official_key_shapes("tiny-b"))
    assert all(v.dtype == torch.float32 for v in official_tiny.values())


# Hand-written official -> ours pairs, independent of the rule table.
EXPECTED_PAIRS = [
    (CLIP + "visual.transformer.resblocks.3.attn.q_proj_weight", "backbone.clip.visual.transformer.resblocks.3.attn.q_proj_weight"),
    (CLIP + "transformer.resblocks.1.attn.in_proj_bias", "backbone.clip.transformer.resblocks.1.attn.in_proj_bias"),
    (CLIP + "logit_scale", "backbone.clip.logit_scale"),
    (CLIP + "visual.proj", "backbone.clip.visual.proj"),
    (AGG + "conv1.weight", "sem_seg_head.aggregator.cost_embed.weight"),
    (AGG + "guidance_projection.0.bias", "sem_seg_head.aggregator.appearance_guidance_proj.0.bias"),
    (AGG + "text_guidance_projection.0.weight", "sem_seg_head.aggregator.text_guidance_proj.0.weight"),
    (AGG + "decoder_guidance_projection.1.0.weight", "sem_seg_head.aggregator.decoder_guidance_proj.1.0.weight"),
    (AGG + "layers.1.swin_block.block_2.attn.proj.bias", "sem_seg_head.aggregator.layers.1.spatial.block_2.attn.proj.bias"),
    (AGG + "layers.0.swin_block.block_1.mlp.fc2.weight", "sem_seg_head.aggregator.layers.0.spatial.block_1.mlp.fc2.weight"),
    (AGG + "layers.0.swin_block.guidance_norm.bias", "sem_seg_head.aggregator.layers.0.spatial.guidance_norm.bias"),
    (AGG + "layers.1.attention.padding_guidance", "sem_seg_head.aggregator.layers.1.classes.padding_guidance"),
    (AGG + "layers.0.attention.attention.v.bias", "sem_seg_head.aggregator.layers.0.classes.attn.v.bias"),
    (AGG + "layers.1.attention.MLP.2.weight", "sem_seg_head.aggregator.layers.1.classes.mlp.2.weight"),
    (AGG + "layers.1.attention.norm2.weight", "sem_seg_head.aggregator.layers.1.classes.norm2.weight"),
    (AGG + "decoder1.up.weight", "sem_seg_head.aggregator.decoder.blocks.0.up.weight"),
    (AGG + "decoder2.conv.double_conv.1.bias", "sem_seg_head.aggregator.decoder.blocks.1.conv.1.bias"),
    (AGG + "decoder1.conv.double_conv.4.bias", "sem_seg_head.aggregator.decoder.blocks.0.conv.4.bias"),
    (AGG + "head.bias", "sem_seg_head.aggregator.decoder.head.bias"),
    ("upsample1.bias", "sem_seg_head.guidance_upsample.0.bias"),
    ("upsample2.weight", "sem_seg_head.guidance_upsample.1.weight"),
]


def test_conversion_covers_the_model_exactly(official_tiny, tiny_model):
    converted, report = convert_official_state_dict(official_tiny)
    assert report.layout == "official" and report.unknown == [] and report.cast == []
    model_state = tiny_model("b").state_dict()
    assert set(converted) == set(model_state)
    assert all(converted[k].shape == model_state[k].shape for k in converted)
    assert sorted(k for k, _ in report.dropped) == [AGG + f"layers.{l}.swin_block.block_2.attn_mask" for l in (0, 1)]
    assert all("recomputed" in reason for _, reason in report.dropped)
    for official, ours in EXPECTED_PAIRS:
        assert converted[ours] is not None and torch.equal(converted[ours], official_tiny[official]), (official, ours)
        assert report.source_of(ours) == official


def test_packed_in_proj_weight_is_split(official_tiny):
    state = dict(official_tiny)
    prefix = CLIP + "visual.transformer.resblocks.2.attn."
    q, k, v = (state.pop(prefix + f"{n}_proj_weight") for n in "qkv")
    state[prefix + "in_proj_weight"] = torch.cat([q, k, v])
    converted, report = convert_official_state_dict(state)
    ours = "backbone.clip.visual.transformer.resblocks.2.attn."
    for name, tensor in zip("qkv", (q, k, v)):
        assert torch.equal(converted[ours + f"{name}_proj_weight"], tensor)
    assert report.unknown == []
    state[prefix + "q_proj_weight"] = q  # packed and split at once: ambiguous
    with pytest.raises(CheckpointFormatError, match="both map to"):
        convert_official_state_dict(state)


def test_our_layout_passes_through(tiny_model):
    state = tiny_model("b").state_dict()
    converted, report = convert_official_state_dict(state)
    assert report.layout == "ours" and report.mapped == []
    assert list(converted) == list(state) and all(converted[k] is state[k] for k in state)


def test_fp16_ddp_prefix_and_unknown_keys(official_tiny):
    state = {"module." + k: v.half() for k, v in official_tiny.items()}
    state["module." + AGG + "layers.0.swin_block.relative_position_bias_table"] = torch.zeros(3)
    converted, report = convert_official_state_dict(state)
    assert all(v.dtype == torch.float32 for v in converted.values())
    assert len(report.cast) == len(official_tiny) - 2  # the dropped attn_mask buffers are not cast
    assert report.unknown == [AGG + "layers.0.swin_block.relative_position_bias_table"]
    assert "unknown: 1 key(s)" in report.summary()


def test_detect_layout():
    t = torch.zeros(1)
    assert detect_layout({"upsample1.weight": t, AGG + "conv1.weight": t}) == "official"
    assert detect_layout({CLIP + "logit_scale": t}) == "official"
    assert detect_layout({"backbone.clip.logit_scale": t}) == "ours"
    assert detect_layout({"encoder.weight": t}) == "unknown"
    # a model built on cat-seg with modules named like official ones (a head's "predictor", a
    # top-level "upsample1"): its own checkpoints were taken for official ones and converted
    ours = {"backbone.clip.logit_scale": t, "sem_seg_head.aggregator.cost_embed.weight": t}
    assert detect_layout({**ours, "sem_seg_head.predictor.weight": t, "upsample1.weight": t}) == "ours"
