"""Shapes through every stage for the tiny B-like and L-like configs.

Expected sizes are derived from the tiny CLIP jsons and the tiny yaml values, not from the
built modules: grid 8x8 (FEATURE_RESOLUTION), hidden 32, guidance projections 16, decoder
dims [16, 8], decoder guidance [16, 8] -> [8, 4], PAD_LEN 32.
"""
import pytest
import torch

import cat_seg.modeling.aggregator as aggregator_module

VARIANTS = {
    # variant: (C = CLIP embed dim, W = visual width, patch, visual depth)
    "b": (32, 48, 16, 4),
    "l": (48, 64, 14, 6),
}
GRID, D, TXT_G, APP_G, DEC, DEC_G, DEC_GP, PAD_LEN = 8, 32, 16, 16, (16, 8), (16, 8), (8, 4), 32
NAMES = ["sky", "grass", "car"]


class Recorder:
    """Records output (and input) shapes of chosen submodules with forward hooks."""

    def __init__(self, modules):
        self.shapes = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name):
        def hook(module, inputs, output):
            self.shapes.setdefault(name, []).append(
                (tuple(inputs[0].shape) if inputs and torch.is_tensor(inputs[0]) else None,
                 tuple(output.shape) if torch.is_tensor(output) else output)
            )
        return hook

    def out(self, name, call=0):
        return self.shapes[name][call][1]

    def inp(self, name, call=0):
        return self.shapes[name][call][0]

    def remove(self):
        for h in self.handles:
            h.remove()


def watch(model):
    head = model.sem_seg_head
    agg = head.aggregator
    modules = {
        "upsample0": head.guidance_upsample[0], "upsample1": head.guidance_upsample[1],
        "cost_embed": agg.cost_embed, "appearance": agg.appearance_guidance_proj, "text": agg.text_guidance_proj,
        "dec_proj0": agg.decoder_guidance_proj[0], "dec_proj1": agg.decoder_guidance_proj[1],
        "dec_block0": agg.decoder.blocks[0], "dec_block1": agg.decoder.blocks[1],
        "decoder": agg.decoder, "aggregator": agg, "head": head,
    }
    for i, layer in enumerate(agg.layers):
        modules[f"spatial{i}"] = layer.spatial
        modules[f"classes{i}"] = layer.classes
    return Recorder(modules)


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant_model(request, tiny_model):
    return request.param, tiny_model(request.param)


def test_backbone_shapes(variant_model):
    variant, model = variant_model
    c, w, patch, depth = VARIANTS[variant]
    bb = model.backbone
    assert bb.resolution == (GRID * patch, GRID * patch)
    assert (bb.embed_dim, bb.width, bb.patch_size, bb.depth) == (c, w, patch, depth)
    assert len(bb.guidance_blocks) == 2
    with torch.no_grad():
        out = bb(torch.randn(2, 3, *bb.resolution))
    assert out["dense_embeddings"].shape == (2, c, GRID, GRID)
    assert [tuple(out[f"block{i}"].shape) for i in bb.guidance_blocks] == [(2, w, GRID, GRID)] * 2
    shapes = bb.output_shape()
    assert shapes["dense_embeddings"].channels == c
    assert [shapes[f"block{i}"].channels for i in bb.guidance_blocks] == [w, w]
    assert model.sem_seg_head.aggregator.cost_embed.in_channels == 1


def test_training_forward_shapes(variant_model, random_images, monkeypatch):
    variant, model = variant_model
    c, w, patch, depth = VARIANTS[variant]
    b, t = 2, len(NAMES)
    costs = []
    real = aggregator_module.cosine_cost_volume
    monkeypatch.setattr(aggregator_module, "cosine_cost_volume", lambda *a: costs.append(real(*a)) or costs[-1])
    rec = watch(model)
    model.train()
    try:
        batch = [{"image": im, "sem_seg": torch.zeros(64, 64, dtype=torch.long)} for im in random_images([(64, 64)] * b)]
        losses = model(batch, class_names=NAMES)
    finally:
        rec.remove()
        model.eval()
    assert set(losses) == {"loss_sem_seg"} and losses["loss_sem_seg"].shape == () and losses["loss_sem_seg"].requires_grad
    assert costs[0].shape == (b, 1, t, GRID, GRID)
    assert rec.out("upsample0") == (b, DEC_G[0], 2 * GRID, 2 * GRID)
    assert rec.out("upsample1") == (b, DEC_G[1], 4 * GRID, 4 * GRID)
    assert rec.out("cost_embed") == (b * t, D, GRID, GRID)
    assert rec.inp("appearance") == (b, c, GRID, GRID) and rec.out("appearance") == (b, APP_G, GRID, GRID)
    assert rec.inp("text") == (b, t, c) and rec.out("text") == (b, t, TXT_G)
    for i in range(2):
        # per-class maps are [B, T, H, W, D] tokens between the aggregator's modules
        assert rec.inp(f"spatial{i}") == (b, t, GRID, GRID, D)
        assert rec.out(f"spatial{i}") == (b, t, GRID, GRID, D)
        assert rec.out(f"classes{i}") == (b, t, GRID, GRID, D)
    assert rec.out("dec_proj0") == (b, DEC_GP[0], 2 * GRID, 2 * GRID)
    assert rec.out("dec_proj1") == (b, DEC_GP[1], 4 * GRID, 4 * GRID)
    assert rec.out("dec_block0") == (b * t, DEC[0], 2 * GRID, 2 * GRID)
    assert rec.out("dec_block1") == (b * t, DEC[1], 4 * GRID, 4 * GRID)
    assert model.sem_seg_head.aggregator.decoder.head.weight.shape == (1, DEC[1], 3, 3)  # the logit head (applied as a function)
    assert rec.out("decoder") == rec.out("aggregator") == rec.out("head") == (b, t, 4 * GRID, 4 * GRID)


def test_inference_output_shapes(variant_model, random_images):
    _, model = variant_model
    images = random_images([(50, 70), (64, 32)])
    inputs = [{"image": images[0]}, {"image": images[1], "height": 100, "width": 40}]
    with torch.no_grad():
        out = model(inputs, class_names=NAMES)
    assert len(out) == 2
    assert out[0]["sem_seg"].shape == (3, 50, 70) and out[1]["sem_seg"].shape == (3, 100, 40)
    for o in out:
        assert 0 <= o["sem_seg"].min() and o["sem_seg"].max() <= 1


def test_large_vocabulary_shapes(variant_model, random_images):
    """T > PAD_LEN through the whole model: [B, T, ...] logits with T - PAD_LEN pruned maps per image."""
    _, model = variant_model
    names = [f"thing{i}" for i in range(PAD_LEN + 6)]
    images = torch.stack(random_images([(64, 64), (64, 64)], seed=1)).float()
    clip_input = torch.nn.functional.interpolate(images, size=model.backbone.resolution, mode="bilinear")
    with torch.no_grad():
        logits = model.sem_seg_head(model.backbone(clip_input), model.text_embeddings(names))
    assert logits.shape == (2, PAD_LEN + 6, 4 * GRID, 4 * GRID)
    for b in range(2):
        assert sum(bool((logits[b, t] == -100).all()) for t in range(len(names))) == 6


def test_train_and_test_pooling(tiny_model, random_images):
    """POOLING_SIZES in training, TEST_POOLING_SIZES at inference (official eval uses [1, 1])."""
    model = tiny_model("b", MODEL__SEM_SEG_HEAD__TEST_POOLING_SIZES=[1, 1])
    seen = []
    layer = model.sem_seg_head.aggregator.layers[0].classes
    handle = layer.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[2])))
    try:
        image = random_images([(32, 32)])[0]
        model.train()
        model([{"image": image, "sem_seg": torch.zeros(32, 32, dtype=torch.long)}], class_names=NAMES)
        model.eval()
        with torch.no_grad():
            model([{"image": image}], class_names=NAMES)
    finally:
        handle.remove()
    assert seen == [(2, 2), (1, 1)]
