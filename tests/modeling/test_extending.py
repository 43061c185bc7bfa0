"""Building a new method on cat-seg (docs/architecture.md, "Building on cat-seg"): a registered
head without CAT-Seg's aggregator, a head with another constructor, a model with modules its
checkpoints lack."""
import logging

import pytest
import torch
from detectron2.modeling import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY, build_model
from torch import nn

from cat_seg.checkpoint import CATSegCheckpointer, CheckpointMismatchError
from cat_seg.config import check_config_values
from cat_seg.modeling import CATSeg, cosine_cost_volume
from cat_seg.modeling.aggregator import Aggregator, AggregatorLayer
from cat_seg.modeling.class_aggregation import ClassAggregation
from cat_seg.modeling.heads.cat_seg_head import CATSegHead


@SEM_SEG_HEADS_REGISTRY.register()
class ExtendingTestProbeHead(nn.Module):
    """A linear probe of the cost volume: the head interface without an aggregator."""

    def __init__(self, cfg, input_shape, num_templates=1):
        super().__init__()
        self.probe = nn.Conv2d(num_templates, 1, 1)

    def forward(self, features, text_embeddings, pooling=(1, 1), class_chunk=0):
        cost = cosine_cost_volume(features["dense_embeddings"], text_embeddings)  # [B, P, T, h, w]
        batch, templates, classes, height, width = cost.shape
        logits = self.probe(cost.transpose(1, 2).reshape(batch * classes, templates, height, width))
        return logits.view(batch, classes, height, width)


@SEM_SEG_HEADS_REGISTRY.register()
class ExtendingTestOwnAggregatorHead(ExtendingTestProbeHead):
    """A head whose module named ``aggregator`` is its own (not cat-seg's Aggregator)."""

    def __init__(self, cfg, input_shape, num_templates=1):
        super().__init__(cfg, input_shape, num_templates)
        self.aggregator = nn.Identity()


@SEM_SEG_HEADS_REGISTRY.register()
class ExtendingTestDetectron2StyleHead(nn.Module):
    """A head written for detectron2's semantic-segmentation heads: (cfg, input_shape) only."""

    def __init__(self, cfg, input_shape):
        super().__init__()


@META_ARCH_REGISTRY.register()
class ExtendingTestAdapterCATSeg(CATSeg):
    """CATSeg with one module more, which cat-seg checkpoints lack."""

    new_modules = ("adapter",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.adapter = nn.Linear(3, 3)


def test_head_without_an_aggregator_runs_eagerly_under_compile(build_cfg, caplog):
    cfg = build_cfg("b", {"MODEL.SEM_SEG_HEAD.NAME": "ExtendingTestProbeHead", "MODEL.COMPILE": True})
    check_config_values(cfg)
    with caplog.at_level(logging.WARNING, logger="cat_seg"):
        model = build_model(cfg).eval()
    assert "MODEL.COMPILE: the head ExtendingTestProbeHead has no 'aggregator' (the module cat-seg compiles); it " \
           "runs eagerly" in caplog.text
    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
    with torch.no_grad():
        sem_seg = model([{"image": image}], class_names=["cat", "dog", "sky"])[0]["sem_seg"]
    assert sem_seg.shape == (3, 64, 80)


def test_a_heads_own_module_named_aggregator_builds(build_cfg):
    """The build checked the grid with any module named aggregator: one of the user's own,
    without check_grid, failed with an AttributeError."""
    model = build_model(build_cfg("b", {"MODEL.SEM_SEG_HEAD.NAME": "ExtendingTestOwnAggregatorHead"}))
    assert isinstance(model.sem_seg_head.aggregator, nn.Identity)


def test_the_text_encoder_must_use_the_backbones_clip(build_cfg):
    """A TextEncoder of another CLIP holds a reference only: its text tower would be neither
    trained, saved nor moved with the model. Building one in is refused."""
    from cat_seg.modeling.clip import TextEncoder

    cfg = build_cfg("b")
    model = build_model(cfg)
    other = build_model(cfg).backbone.clip
    kwargs = CATSeg.from_config(cfg)
    assert kwargs["text_encoder"].clip is kwargs["backbone"].clip
    with pytest.raises(ValueError, match=r"text_encoder must encode with the backbone's CLIP model"):
        CATSeg(**{**kwargs, "text_encoder": TextEncoder(other)})
    assert not CATSeg(**kwargs)._graphed_views.enabled  # as TEST.CUDA_GRAPHS' default
    assert model is not None


def test_head_with_another_constructor_is_one_line_before_a_run(build_cfg):
    cfg = build_cfg("b", {"MODEL.SEM_SEG_HEAD.NAME": "ExtendingTestDetectron2StyleHead"})
    with pytest.raises(ValueError) as info:
        check_config_values(cfg)
    message = str(info.value)
    assert message.startswith("MODEL.META_ARCHITECTURE='CATSeg' with MODEL.SEM_SEG_HEAD.NAME="
                              "'ExtendingTestDetectron2StyleHead' and MODEL.BACKBONE.NAME='CLIPVisionBackbone' "
                              "cannot be built: ")
    assert "unexpected keyword argument 'num_templates'" in message and "\n" not in message


def test_new_modules_keep_their_initialisation_when_a_checkpoint_lacks_them(build_cfg, tmp_path, caplog):
    torch.manual_seed(0)
    plain = build_model(build_cfg("b"))
    path = tmp_path / "plain.pth"
    torch.save({"model": plain.state_dict()}, path)
    extended = build_model(build_cfg("b", {"MODEL.META_ARCHITECTURE": "ExtendingTestAdapterCATSeg"}))
    adapter = {k: v.clone() for k, v in extended.adapter.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="cat_seg"):
        CATSegCheckpointer(extended).load(str(path))
    assert "new modules adapter: 2 tensor(s) keep their initialisation (adapter.bias, adapter.weight)" in caplog.text
    assert [r.levelname for r in caplog.records if "new modules" in r.getMessage()] == ["INFO"]
    for key, value in plain.state_dict().items():
        assert torch.equal(extended.state_dict()[key], value)
    for key, value in adapter.items():
        assert torch.equal(extended.adapter.state_dict()[key], value)

    # without new_modules, a missing module is an error whose hint says how to declare it
    extended.new_modules = ()
    with pytest.raises(CheckpointMismatchError, match=r"2 missing key\(s\): adapter.bias, adapter.weight .*names them "
                                                      r"in its new_modules attribute"):
        CATSegCheckpointer(extended).load(str(path))


@SEM_SEG_HEADS_REGISTRY.register()
class ExtendingTestWiderHead(CATSegHead):
    """A head of one's own that replaces the cost embedding by a wider one and removes the
    appearance guidance projection, and says so in its own new_modules."""

    new_modules = ("aggregator.cost_embed", "aggregator.appearance_guidance_proj")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        embed = self.aggregator.cost_embed
        self.aggregator.cost_embed = nn.Conv2d(embed.in_channels, embed.out_channels, kernel_size=5, padding=2)
        del self.aggregator.appearance_guidance_proj
        self.aggregator.appearance_guidance_proj = None


def test_a_heads_new_modules_may_replace_and_remove_what_checkpoints_hold(build_cfg, tmp_path, caplog):
    """new_modules excused only tensors a checkpoint lacks, and only on the meta-architecture:
    a head that replaced a module (another shape) or removed one (the checkpoint's tensors
    have no place) could not load cat-seg's checkpoints."""
    torch.manual_seed(0)
    plain = build_model(build_cfg("b"))
    path = tmp_path / "plain.pth"
    torch.save({"model": plain.state_dict()}, path)
    wider = build_model(build_cfg("b", {"MODEL.SEM_SEG_HEAD.NAME": "ExtendingTestWiderHead"}))
    embed = {k: v.clone() for k, v in wider.sem_seg_head.aggregator.cost_embed.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="cat_seg"):
        CATSegCheckpointer(wider).load(str(path))
    # tensors of the checkpoint left out: a warning (a checkpoint of the method evaluated with
    # other options than its training's lost its trained module at INFO level)
    assert [r.levelname for r in caplog.records if "new modules" in r.getMessage()] == ["WARNING"]
    assert "a checkpoint trained with them was trained with other options than this config's" in caplog.text
    # the 7x7 weight has no place in the 5x5 kernel; the bias (same shape) is loaded
    assert ("new modules sem_seg_head.aggregator.cost_embed, sem_seg_head.aggregator.appearance_guidance_proj: 1 "
            "tensor(s) keep their initialisation (sem_seg_head.aggregator.cost_embed.weight); 3 of the checkpoint's "
            "are not loaded (sem_seg_head.aggregator.appearance_guidance_proj.0.bias, "
            "sem_seg_head.aggregator.appearance_guidance_proj.0.weight, sem_seg_head.aggregator.cost_embed.weight)"
            ) in caplog.text
    assert torch.equal(wider.sem_seg_head.aggregator.cost_embed.weight, embed["weight"])
    loaded = wider.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in plain.state_dict().items()
               if key in loaded and key != "sem_seg_head.aggregator.cost_embed.weight")
    # a checkpoint of the model itself loads as usual (its own tensors, nothing excused)
    torch.save({"model": wider.state_dict()}, tmp_path / "wider.pth")
    again = build_model(build_cfg("b", {"MODEL.SEM_SEG_HEAD.NAME": "ExtendingTestWiderHead"}))
    CATSegCheckpointer(again).load(str(tmp_path / "wider.pth"))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), wider.state_dict().values()))


def test_forward_inputs_of_the_wrong_layout_are_named(tiny_model):
    """CATSeg.forward called directly with detectron2's list of dicts: an image that is not
    [3, H, W] or a training label of another size is one ValueError naming the input."""
    model = tiny_model().eval()
    good = torch.randint(0, 256, (3, 32, 40), dtype=torch.uint8)
    with torch.no_grad(), pytest.raises(ValueError, match=r"^input 1: 'image' must be an RGB tensor \[3, H, W\] .*got "
                                                           r"torch.uint8 \(32, 40, 3\) \(channels last\? use "
                                                           r"image.permute\(2, 0, 1\)\)$"):
        model([{"image": good}, {"image": good.permute(1, 2, 0)}], class_names=["cat"])
    model.train()
    with pytest.raises(ValueError, match=r"^input 0: training needs 'sem_seg', an integer label map of the image's size "
                                         r"\(32, 40\), got torch.int64 \(16, 20\)$"):
        model([{"image": good, "sem_seg": torch.zeros(16, 20, dtype=torch.long)}])


class _PlainSpatial(nn.Module):
    """A spatial block of one's own with only what the aggregator requires (no check_grid, no
    normalize_guidance): a residual mix of each token with its appearance guidance."""

    def __init__(self, dim, guidance_dim, num_heads, window):
        super().__init__()
        self.mix = nn.Linear(dim + guidance_dim, dim)
        self.seen_guidance = []

    def forward(self, x, guidance):  # [B, T, H, W, D], [B, H, W, G]
        self.seen_guidance.append(guidance)
        return x + self.mix(torch.cat([x, guidance[:, None].expand(*x.shape[:-1], -1)], dim=-1))


class _ConfiguredClassAggregation(ClassAggregation):
    """A class aggregation that takes a value of its method's config key."""

    def __init__(self, *args, scale, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = scale


class _OwnPartsLayer(AggregatorLayer):
    spatial_class = _PlainSpatial
    class_aggregation_class = _ConfiguredClassAggregation


class _OwnPartsAggregator(Aggregator):
    layer_class = _OwnPartsLayer


@SEM_SEG_HEADS_REGISTRY.register()
class ExtendingTestOwnPartsHead(CATSegHead):
    aggregator_class = _OwnPartsAggregator

    @classmethod
    def aggregator_options(cls, cfg):
        return {"layer_options": {"class_options": {"scale": cfg.MODEL.EXTENDING_TEST.SCALE}}}


def test_parts_of_ones_own_take_config_values_and_need_only_their_calls(build_cfg):
    """A spatial block that was not a subclass of SpatialAggregation failed to build (the
    aggregator read its Swin blocks' geometry and called its normalize_guidance), and a config
    value could not reach a block (the layer built it with fixed arguments)."""
    from detectron2.config import CfgNode

    cfg = build_cfg("b", {"MODEL.SEM_SEG_HEAD.NAME": "ExtendingTestOwnPartsHead"})
    cfg.MODEL.EXTENDING_TEST = CfgNode({"SCALE": 0.25})
    model = build_model(cfg).eval()
    layers = model.sem_seg_head.aggregator.layers
    assert [layer.classes.scale for layer in layers] == [0.25] * len(layers)
    with torch.no_grad():
        sem_seg = model([{"image": torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)}],
                        class_names=["cat", "dog", "sky"])[0]["sem_seg"]
    assert sem_seg.shape == (3, 64, 80)
    guidance = layers[0].spatial.seen_guidance[0]  # the projected guidance as it is: [B, h, w, G]
    assert guidance.shape[-1] == cfg.MODEL.SEM_SEG_HEAD.APPEARANCE_GUIDANCE_PROJ_DIM


def _docs_example(after: str) -> str:
    """The first ```python block of docs/architecture.md after the text ``after``."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    rest = docs[docs.index(after):]
    start = rest.index("```python\n") + len("```python\n")
    return rest[start:rest.index("```", start)]


def test_the_docs_example_replaces_the_class_aggregation_with_a_config_value(build_cfg, tmp_path):
    """Replacing the class aggregation needed the aggregator rebuilt by hand (the head built
    Aggregator inline, the layer its two blocks). The example of docs/architecture.md: the class
    attributes of the head, the aggregator and its layer select the part, aggregator_options
    gives it its config value; cat-seg's checkpoints load with the new gains declared in
    new_modules, and the model infers and trains."""
    from detectron2.config import CfgNode

    if "MyHead" not in SEM_SEG_HEADS_REGISTRY:
        exec(_docs_example("A part of your own gets"), {})  # its imports included
    cfg = build_cfg("b", {"MODEL.SEM_SEG_HEAD.NAME": "MyHead"})
    cfg.MODEL.MY_METHOD = CfgNode({"SCALE": 0.5})
    model = build_model(cfg)
    layers = model.sem_seg_head.aggregator.layers
    assert [layer.classes.gain.item() for layer in layers] == [0.5, 0.5]
    torch.save({"model": build_model(build_cfg("b")).state_dict()}, tmp_path / "plain.pth")
    CATSegCheckpointer(model).load(str(tmp_path / "plain.pth"))
    assert layers[0].classes.gain.item() == 0.5  # kept: not in the checkpoint
    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
    model.eval()
    with torch.no_grad():
        sem_seg = model([{"image": image}], class_names=["cat", "dog", "sky"])[0]["sem_seg"]
    assert sem_seg.shape == (3, 64, 80)
    model.train()
    label = torch.randint(0, 3, (64, 80))
    loss = model([{"image": image, "sem_seg": label}], class_names=["cat", "dog", "sky"])["loss_sem_seg"]
    loss.backward()
    assert layers[0].classes.gain.grad is not None


def test_the_docs_auxiliary_loss_example_trains_on_the_aggregators_intermediates(build_cfg):
    """The meta-architecture of docs/architecture.md that adds a loss on the first layer's
    tokens (``return_intermediates``): its main loss is CATSeg's, and the auxiliary loss
    reaches the aggregator's first layer."""
    if "MyAuxCATSeg" not in META_ARCH_REGISTRY:
        exec(_docs_example("A meta-architecture with an auxiliary loss"), {})  # its imports included
    torch.manual_seed(0)
    model = build_model(build_cfg("b", {"MODEL.META_ARCHITECTURE": "MyAuxCATSeg"})).train()
    plain = build_model(build_cfg("b")).train()
    plain.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(1)
    # training crops of one size, a multiple of the padding's 32 (as the example assumes)
    batch = [{"image": torch.randint(0, 256, (3, 64, 96), generator=g, dtype=torch.uint8),
              "sem_seg": torch.randint(0, 3, (64, 96), generator=g)} for _ in range(2)]
    names = ["cat", "dog", "sky"]
    losses = model(batch, class_names=names)
    assert sorted(losses) == ["loss_aux", "loss_sem_seg"]
    torch.testing.assert_close(losses["loss_sem_seg"], plain(batch, class_names=names)["loss_sem_seg"])
    first_layer = model.sem_seg_head.aggregator.layers[0]
    losses["loss_aux"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in first_layer.parameters())


def test_the_head_takes_the_clip_blocks_among_other_backbone_features(build_cfg):
    """A backbone subclass may return features of its own beside ``blockN``: the head picks
    the numbered CLIP blocks (it parsed every name starting with "block" as a number)."""
    from detectron2.modeling import ShapeSpec

    cfg = build_cfg("b")
    torch.manual_seed(0)
    backbone = build_model(cfg).backbone
    shapes = {**backbone.output_shape(), "block_mean": ShapeSpec(channels=7, stride=1),
              "block\u00b2": ShapeSpec(channels=7, stride=1)}  # isdigit() but not int()
    head = CATSegHead(cfg, shapes)
    assert head.guidance_features == [name for name in backbone.output_shape() if name != "dense_embeddings"]


class _SharperCostAggregator(Aggregator):
    def compute_cost_volume(self, image_embeddings, text_embeddings):
        return 2.0 * super().compute_cost_volume(image_embeddings, text_embeddings)


@SEM_SEG_HEADS_REGISTRY.register()
class ExtendingTestSharperCostHead(CATSegHead):
    aggregator_class = _SharperCostAggregator


def test_an_aggregator_subclass_replaces_the_cost_volume(build_cfg):
    """``Aggregator.compute_cost_volume`` is where the cost is made: a subclass that overrides it
    changes the cost alone (here a temperature on the cosine), with the class selection, the
    embedding and the weights as they are (a checkpoint of the plain model loads)."""
    torch.manual_seed(0)
    plain = build_model(build_cfg("b")).eval()
    sharper = build_model(build_cfg("b", {"MODEL.SEM_SEG_HEAD.NAME": "ExtendingTestSharperCostHead"})).eval()
    sharper.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, plain.backbone.embed_dim, 8, 8, generator=g)
    text = torch.randn(3, 1, plain.backbone.embed_dim, generator=g)
    guidance = [None] * len(plain.sem_seg_head.aggregator.decoder_guidance_proj)
    with torch.no_grad():
        ours = plain.sem_seg_head.aggregator(image, text, None, guidance, return_intermediates=True)
        theirs = sharper.sem_seg_head.aggregator(image, text, None, guidance, return_intermediates=True)
    torch.testing.assert_close(ours.cost_volume, cosine_cost_volume(image, text))
    torch.testing.assert_close(theirs.cost_volume, 2.0 * cosine_cost_volume(image, text))
    assert not torch.allclose(theirs.logits, ours.logits)
