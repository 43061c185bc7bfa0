"""The memory knobs do not change results: class chunking at inference (``TEST.CLASS_CHUNK_SIZE``)
and activation checkpointing in training (``MODEL.CHECKPOINT_ACTIVATIONS``); and the bf16
path runs through every branch of the model.

Tiny CPU configs (fp32, TF32 off); vocabularies below and above PAD_LEN (32) so that both the
padding and the top-k pruning run. The model against the reference computation is checked in
``tests/checkpoint/test_reference_equivalence.py`` and ``tests/modeling``.
"""
import pytest
import torch

from cat_seg.modeling import aggregator as aggregator_module
from cat_seg.modeling.aggregator import CPU_CLASS_CHUNK, Aggregator, resolve_class_chunk_size


def names(n):
    return [f"thing {i}" for i in range(n)]


class KnobSpy:
    """What the knobs made the aggregator do: the ``(images, classes)`` of every piece its
    per-class blocks ran on, and its calls of ``torch.utils.checkpoint`` (so that a knob that
    is ignored, which leaves results equal, fails the tests below)."""

    def __init__(self, monkeypatch):
        self.pieces = []
        self.checkpoints = 0
        per_class, checkpoint = Aggregator._per_class, aggregator_module.checkpoint

        def recording_per_class(aggregator, fn, x, guidance, chunk):
            def recorded(piece, *piece_guidance):
                self.pieces.append(tuple(piece.shape[:2]))
                return fn(piece, *piece_guidance)

            return per_class(aggregator, recorded, x, guidance, chunk)

        def counting_checkpoint(*args, **kwargs):
            self.checkpoints += 1
            return checkpoint(*args, **kwargs)

        monkeypatch.setattr(Aggregator, "_per_class", recording_per_class)
        monkeypatch.setattr(aggregator_module, "checkpoint", counting_checkpoint)

    def most_classes(self) -> int:
        """The most classes any piece held since the last call (then forgets them)."""
        most = max(classes for _, classes in self.pieces)
        self.pieces.clear()
        return most

    def images_per_piece(self) -> set:
        return {images for images, _ in self.pieces}


@pytest.fixture
def knob_spy(monkeypatch):
    return KnobSpy(monkeypatch)


@pytest.fixture(scope="module")
def sliding_model(tiny_model, perturb_zero_init):
    model = tiny_model("b", TEST__SLIDING_WINDOW=True, MODEL__SEM_SEG_HEAD__TEST_POOLING_SIZES=[1, 1])
    return perturb_zero_init(model).eval()


def infer(model, image, vocabulary, chunk):
    model.class_chunk_size = chunk
    with torch.no_grad():
        return model([{"image": image, "height": 150, "width": 200}], class_names=vocabulary)[0]["sem_seg"]


def test_chunk_size_resolution():
    assert resolve_class_chunk_size(-1, "cpu") == CPU_CLASS_CHUNK
    assert resolve_class_chunk_size(-1, "cuda") == 0
    assert resolve_class_chunk_size(0, "cpu") == 0 and resolve_class_chunk_size(7, "cuda") == 7
    assert resolve_class_chunk_size(-1, "cpu", compiled=True) == 0  # one graph for any vocabulary size
    assert resolve_class_chunk_size(7, "cpu", compiled=True) == 7


def test_chunk_size_comes_from_the_config(tiny_model):
    assert tiny_model("b", TEST__CLASS_CHUNK_SIZE=5).class_chunk_size == 5


@pytest.mark.parametrize("num_classes", [20, 50])
def test_chunked_equals_unchunked_sliding(sliding_model, random_images, num_classes, knob_spy):
    image = random_images([(170, 230)], seed=4)[0]
    vocabulary = names(num_classes)
    whole = infer(sliding_model, image, vocabulary, 0)
    assert whole.shape == (num_classes, 150, 200)
    aggregated = min(num_classes, 32)  # PAD_LEN 32: a larger vocabulary is pruned to 32 per image
    assert knob_spy.images_per_piece() == {5} and knob_spy.most_classes() == aggregated  # 5 views at once
    for chunk in (1, 7, 32):
        out = infer(sliding_model, image, vocabulary, chunk)
        assert (out - whole).abs().max() <= 1e-5, chunk
        assert knob_spy.images_per_piece() == ({1} if chunk < aggregated else {5})
        assert knob_spy.most_classes() == min(chunk, aggregated), chunk


@pytest.mark.parametrize("attention", ["linear", "full"])
def test_chunked_logits_equal_unchunked(tiny_model, perturb_zero_init, attention, knob_spy):
    """Patch-14 tiny model, both class attentions, with and without class-aggregation pooling:
    logits (more sensitive than probabilities) of chunked and unchunked runs agree."""
    model = perturb_zero_init(tiny_model("l", MODEL__SEM_SEG_HEAD__ATTENTION_TYPE=attention)).eval()
    images = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    for vocabulary in (names(12), names(40)):
        for pooling in ((1, 1), (2, 2)):
            outs = []
            for chunk in (0, 5):
                model.class_chunk_size = chunk
                with torch.no_grad():
                    outs.append(model.predict_logits(images, vocabulary, pooling))
                # balanced chunks of at most 5: 12 classes as 4+4+4; 40 pruned to 32 as 5,5,5,5,4,4,4
                assert knob_spy.most_classes() == ({12: 4, 40: 5}[len(vocabulary)] if chunk else
                                                   min(len(vocabulary), 32)), chunk
            assert (outs[0] - outs[1]).abs().max() <= 1e-4, (len(vocabulary), pooling)


def test_chunked_non_sliding_batch(tiny_model, random_images, perturb_zero_init, knob_spy):
    model = perturb_zero_init(tiny_model("b")).eval()
    batch = [{"image": im} for im in random_images([(128, 160), (96, 128)], seed=5)]
    outs = []
    for chunk in (0, 3):
        model.class_chunk_size = chunk
        with torch.no_grad():
            outs.append([r["sem_seg"] for r in model(batch, class_names=names(10))])
        # 10 classes in chunks of at most 3: four balanced chunks of 3, 3, 2, 2 (or all 10)
        assert knob_spy.images_per_piece() == ({1} if chunk else {2}) and knob_spy.most_classes() == (chunk or 10)
    for ref, out in zip(*outs):
        assert (out - ref).abs().max() <= 1e-5


def _loss_and_grads(model, batch, vocabulary):
    model.zero_grad(set_to_none=True)
    loss = model(batch, class_names=vocabulary)["loss_sem_seg"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("num_classes", [12, 40])
def test_checkpointing_keeps_loss_and_gradients(tiny_model, random_images, perturb_zero_init, num_classes,
                                               knob_spy):
    model = perturb_zero_init(tiny_model("b", train=True))
    g = torch.Generator().manual_seed(0)
    vocabulary = names(num_classes)
    batch = [{"image": im, "sem_seg": torch.randint(0, num_classes, (128, 128), generator=g)}
             for im in random_images([(128, 128), (128, 128)], seed=6)]
    batch[0]["sem_seg"][:10] = 255
    aggregator = model.sem_seg_head.aggregator
    ref_loss, ref_grads = _loss_and_grads(model, batch, vocabulary)
    assert knob_spy.checkpoints == 0
    aggregator.checkpoint_activations = True
    try:
        for chunk in (0, 5):
            model.class_chunk_size = chunk
            knob_spy.checkpoints = 0
            knob_spy.pieces.clear()
            loss, grads = _loss_and_grads(model, batch, vocabulary)
            assert knob_spy.checkpoints > 0, chunk
            # one image per piece; chunk 0 in training: all the image's classes in one piece
            assert knob_spy.images_per_piece() == {1}
            assert knob_spy.most_classes() == (chunk or min(num_classes, 32)), chunk
            assert abs(loss - ref_loss) <= 1e-6, chunk
            assert grads.keys() == ref_grads.keys()
            for name, grad in grads.items():
                scale = ref_grads[name].abs().max().clamp_min(1e-3)
                assert (grad - ref_grads[name]).abs().max() / scale <= 1e-4, (chunk, name)
    finally:
        aggregator.checkpoint_activations = False


def test_checkpoint_activations_comes_from_the_config(tiny_model):
    assert tiny_model("b", MODEL__CHECKPOINT_ACTIVATIONS=True).sem_seg_head.aggregator.checkpoint_activations
    assert not tiny_model("b").sem_seg_head.aggregator.checkpoint_activations


@pytest.mark.parametrize("num_classes", [20, 50])
def test_bf16_autocast_is_safe(sliding_model, random_images, num_classes):
    """bf16 autocast runs through padding, pruning (scatter of -100) and the merge; fp32
    probabilities out (autocast entered here: MODEL.PRECISION bf16 falls back to fp32 on CPUs
    without native bf16)."""
    image = random_images([(170, 230)], seed=7)[0]
    vocabulary = names(num_classes)
    exact = infer(sliding_model, image, vocabulary, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = infer(sliding_model, image, vocabulary, -1)
    assert fast.dtype == torch.float32 and torch.isfinite(fast).all()
    assert fast.min() >= 0 and fast.max() <= 1
    if num_classes <= 32:  # PAD_LEN: no top-k pruning, whose near-ties bf16 may legitimately flip
        assert (fast - exact).abs().max() < 0.05  # bf16 rounding only (random weights, unsaturated)


def test_precision_policy_under_autocast(tiny_model):
    """Under bf16 autocast: the cost volume is fp32, the per-class maps bf16, the logits fp32,
    and the cached text embeddings fp32."""
    model = tiny_model("b")
    seen = {}

    def record(name, tensor):
        seen.setdefault(name, tensor.dtype)  # returns None: the hook changes nothing

    aggregator = model.sem_seg_head.aggregator
    hooks = [
        aggregator.cost_embed.register_forward_pre_hook(lambda m, args: record("cost", args[0])),
        aggregator.layers[0].spatial.register_forward_hook(lambda m, i, out: record("maps", out)),
        aggregator.decoder.register_forward_hook(lambda m, i, out: record("logits", out)),
    ]
    images = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            text = model.text_embeddings(names(5))
            logits = model.predict_logits(images, names(5), (1, 1))
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {"cost": torch.float32, "maps": torch.bfloat16, "logits": torch.float32}
    assert text.dtype == torch.float32 and logits.dtype == torch.float32


def test_inference_autocast_follows_model_precision(tiny_model, random_images, monkeypatch):
    """MODEL.PRECISION is resolved for the device on every inference call: bf16 autocast where
    resolve_precision says so, fp32 otherwise."""
    from cat_seg.modeling.meta_arch import cat_seg as meta_arch

    image = random_images([(64, 64)], seed=9)[0]
    for setting, resolved in (("fp32", None), ("bf16", torch.bfloat16)):
        model = tiny_model("b", MODEL__PRECISION=setting)
        monkeypatch.setattr(meta_arch, "resolve_precision", lambda s, device, _r=resolved: _r)
        seen = []
        hook = model.backbone.register_forward_hook(lambda m, i, out: seen.append(out["dense_embeddings"].dtype))
        with torch.no_grad():
            probs = model([{"image": image}], class_names=names(3))[0]["sem_seg"]
        hook.remove()
        assert probs.dtype == torch.float32 and torch.isfinite(probs).all()
        assert seen == [resolved or torch.float32], setting


def test_bf16_training_step_runs(tiny_model, random_images):
    model = tiny_model("b", train=True, MODEL__CHECKPOINT_ACTIVATIONS=True)
    g = torch.Generator().manual_seed(0)
    batch = [{"image": im, "sem_seg": torch.randint(0, 40, (128, 128), generator=g)}
             for im in random_images([(128, 128)], seed=8)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(batch, class_names=names(40))["loss_sem_seg"]  # 40 > PAD_LEN: pruning in training
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
