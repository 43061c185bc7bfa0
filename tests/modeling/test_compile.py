"""``torch.compile`` of the aggregator (``MODEL.COMPILE``): one graph without breaks, the same
results as eager, and a vocabulary size that is a dynamic dimension (no recompilation per size).

Tiny aggregator on CPU. The graph-break and recompilation checks trace with dynamo only
(``aot_eager``: the traced graph run by PyTorch's kernels); one test runs inductor's code
generation (a C++ compiler is needed; it is the slowest test here, the kernels are cached
by inductor across runs).
"""
import pytest
import torch
import torch._dynamo

from cat_seg.modeling.aggregator import Aggregator

PAD_LEN = 8


def make_aggregator(attention_type="linear"):
    torch.manual_seed(0)
    aggregator = Aggregator(text_dim=16, appearance_dim=16, hidden_dim=16, text_guidance_proj_dim=8,
                            appearance_guidance_proj_dim=8, decoder_dims=(8, 8), decoder_guidance_dims=(8, 8),
                            decoder_guidance_proj_dims=(4, 4), num_layers=1, num_heads=2, window=4,
                            pad_len=PAD_LEN, attention_type=attention_type).eval()
    with torch.no_grad():  # non-trivial padding tokens
        for layer in aggregator.layers:
            layer.classes.padding_tokens.normal_()
            layer.classes.padding_guidance.normal_()
    return aggregator


def make_inputs(num_classes, seed=0, size=8):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 16, size, size, generator=g)
    text = torch.randn(num_classes, 1, 16, generator=g)
    guidance = [torch.randn(2, 8, 2 * size, 2 * size, generator=g), torch.randn(2, 8, 4 * size, 4 * size, generator=g)]
    torch._dynamo.maybe_mark_dynamic(text, 0)  # as CATSegHead.forward does
    return image, text, image, guidance


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("attention_type", ["linear", "full"])
@pytest.mark.parametrize("num_classes", [5, 12])  # padded / top-k pruned
def test_no_graph_breaks(attention_type, num_classes):
    aggregator = make_aggregator(attention_type)
    with torch.no_grad():
        explanation = torch._dynamo.explain(aggregator)(*make_inputs(num_classes))
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_no_graph_breaks_with_shifted_windows():
    """A 16x16 map with window 4: the shifted block masks the border windows only."""
    aggregator = make_aggregator()
    with torch.no_grad():
        explanation = torch._dynamo.explain(aggregator)(*make_inputs(5, size=16))
    assert explanation.graph_break_count == 0


def test_compiled_equals_eager_and_vocabulary_size_is_dynamic():
    aggregator = make_aggregator()
    compilations = []

    def backend(graph_module, example_inputs):
        compilations.append(graph_module)
        from torch._dynamo.backends.common import aot_autograd

        return aot_autograd(fw_compiler=lambda gm, _: gm.forward)(graph_module, example_inputs)

    compiled = torch.compile(aggregator, backend=backend)
    with torch.no_grad():
        for num_classes in (5, 7, 3):  # below PAD_LEN: padded
            inputs = make_inputs(num_classes, seed=num_classes)
            out = compiled(*inputs)
            assert out.shape == (2, num_classes, 32, 32)
            assert (out - aggregator(*inputs)).abs().max() <= 1e-4
        assert len(compilations) == 1  # one graph for every padded vocabulary size
        for num_classes in (12, 15):  # above PAD_LEN: the top-k branch, one more graph
            inputs = make_inputs(num_classes, seed=num_classes)
            assert (compiled(*inputs) - aggregator(*inputs)).abs().max() <= 1e-4
        assert len(compilations) == 2


def test_inductor_compiled_equals_eager():
    aggregator = make_aggregator()
    compiled = torch.compile(aggregator)  # inductor: generated C++ kernels on CPU
    with torch.no_grad():
        inputs = make_inputs(5)
        assert (compiled(*inputs) - aggregator(*inputs)).abs().max() <= 1e-4


def test_model_compile_key_compiles_the_aggregator(tiny_model):
    model = tiny_model("b", MODEL__COMPILE=True)
    assert model.compiled and model.sem_seg_head.aggregator._compiled_call_impl is not None
    assert tiny_model("b").sem_seg_head.aggregator._compiled_call_impl is None


def compiled_and_eager(tiny_model):
    """``(model, eager, compilations)``: the tiny model with ``MODEL.COMPILE True`` whose
    aggregator is compiled by a backend that records each graph it is given (and runs it as
    traced; the product compiles with inductor), the same model eager, and that record."""
    model = tiny_model("b", MODEL__COMPILE=True).eval()
    eager = tiny_model("b").eval()
    compilations = []

    def backend(graph_module, example_inputs):
        compilations.append(graph_module)
        return graph_module.forward

    model.sem_seg_head.aggregator.compile(backend=backend)
    return model, eager, compilations


def test_compiled_model_does_not_recompile_per_vocabulary(tiny_model):
    """Through the model (the head marks the class dimension dynamic; auto chunking is off
    when compiled): three vocabulary sizes, one graph, the eager results."""
    model, eager, compilations = compiled_and_eager(tiny_model)
    images = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for size in (5, 9, 3):
            names = [f"thing {i}" for i in range(size)]
            out = model.predict_logits(images, names, (1, 1))
            assert (out - eager.predict_logits(images, names, (1, 1))).abs().max() <= 1e-4
    assert len(compilations) == 1


def test_compile_setting_resolution():
    from cat_seg.modeling.meta_arch.cat_seg import resolve_compile

    assert resolve_compile(None, "cuda") and resolve_compile("auto", "cuda:0") and resolve_compile("AUTO", "cuda")
    assert not resolve_compile(None, "cpu") and not resolve_compile("auto", torch.device("cpu"))
    assert not resolve_compile(None, None)  # device unknown (construction): only an explicit True
    # the YAML default written on a command line (MODEL.COMPILE null) is auto too
    assert resolve_compile("null", "cuda") and not resolve_compile("null", "cpu") and resolve_compile("none", "cuda")
    assert resolve_compile(True, "cpu") and resolve_compile("true", None)
    assert not resolve_compile(False, "cuda") and not resolve_compile("False", "cuda")
    with pytest.raises(ValueError, match="MODEL.COMPILE='yes': expected True, False or auto"):
        resolve_compile("yes", "cuda")


@pytest.mark.parametrize("value, expected", [("True", True), ("False", False), ("auto", "auto"), ("None", None)])
def test_compile_key_accepts_booleans_and_auto(value, expected):
    """The key defaults to None (auto) so that yacs takes booleans as well as ``auto``."""
    from detectron2.config import get_cfg

    from cat_seg.config import add_cat_seg_config

    cfg = add_cat_seg_config(get_cfg())
    assert cfg.MODEL.COMPILE is None
    cfg.merge_from_list(["MODEL.COMPILE", value])
    assert cfg.MODEL.COMPILE == expected


def test_auto_compile_stays_eager_on_cpu(tiny_model):
    model = tiny_model("b").eval()  # MODEL.COMPILE auto (the default)
    with torch.no_grad():
        model.predict_logits(torch.zeros(1, 3, 128, 128), ["a", "b"], (1, 1))
    assert not model.compiled and model.sem_seg_head.aggregator._compiled_call_impl is None


def test_auto_compiled_on_cuda_then_moved_to_the_cpu_runs_eagerly(tiny_model):
    """MODEL.COMPILE auto compiles the aggregator at the first CUDA call; a model moved to the
    CPU afterwards kept running the compiled module there (minutes of C++ kernel builds)."""
    model = tiny_model("b").eval()
    model._compile_aggregator()  # what the first call on a CUDA device does
    assert model.sem_seg_head.aggregator._compiled_call_impl is not None
    with torch.no_grad():
        model.predict_logits(torch.zeros(1, 3, 128, 128), ["a", "b"], (1, 1))  # now on the CPU
    assert not model.compiled and model.sem_seg_head.aggregator._compiled_call_impl is None


def test_the_compile_decision_is_made_for_a_losses_that_calls_the_head_itself(tiny_model, random_images):
    """An auxiliary-loss meta-architecture (docs/architecture.md) calls the backbone and the head
    in its own ``losses``, bypassing predict_logits, where MODEL.COMPILE auto was decided: a
    model moved from CUDA to the CPU kept its compiled aggregator there."""
    model = tiny_model("b", train=True)
    model._compile_aggregator()  # what the first call on a CUDA device does
    model.losses = lambda batched_inputs, class_names=None: {"loss_sem_seg": torch.zeros(())}  # runs nothing
    image = random_images([(64, 64)])[0]
    model([{"image": image, "sem_seg": torch.zeros(64, 64, dtype=torch.long)}], class_names=["a", "b"])
    assert not model.compiled and model.sem_seg_head.aggregator._compiled_call_impl is None


def test_compiled_training_step_equals_eager(tiny_model, random_images):
    """A training step through the compiled aggregator (what MODEL.COMPILE auto does on CUDA):
    the traced forward and backward give the eager loss and gradients (graph traced by dynamo
    and AOTAutograd, run by PyTorch's kernels: no C++ build)."""
    images = random_images([(64, 64), (64, 64)], seed=3)
    g = torch.Generator().manual_seed(4)
    batch = [{"image": im, "sem_seg": torch.randint(0, 5, (64, 64), generator=g)} for im in images]
    eager = tiny_model("b", train=True)
    compiled = tiny_model("b", train=True)
    compiled.sem_seg_head.aggregator.compile(backend="aot_eager")
    losses = []
    for model in (eager, compiled):
        loss = model(batch)["loss_sem_seg"]
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_smaller_batch_reuses_the_compiled_graph(tiny_model, random_images):
    """Inference with the compiled aggregator: a smaller batch after a larger one (an
    evaluation's last batch) runs through the graph already compiled, padded with copies of
    its last view, and gets the eager results; a batch of a size not run before compiles."""
    model, eager, compilations = compiled_and_eager(tiny_model)
    model.sliding_window = eager.sliding_window = True
    images = random_images([(64, 96), (80, 60), (70, 70)], seed=5)
    names = [f"thing {i}" for i in range(5)]
    with torch.no_grad():
        model([{"image": image} for image in images], class_names=names)
        assert len(compilations) == 1
        for batch in ([images[1]], images[:2]):  # 5 and 10 views: padded to the 15 views run before
            got = model([{"image": image} for image in batch], class_names=names)
            want = eager([{"image": image} for image in batch], class_names=names)
            for g, w in zip(got, want):
                assert (g["sem_seg"] - w["sem_seg"]).abs().max() <= 1e-4
        assert len(compilations) == 1
        assert model._padded_view_count(15) == 15 and model._padded_view_count(5) == 15


def test_clip_image_tower_traces_as_one_graph(tiny_model):
    """The CLIP image tower (open_clip's ViT with the dense last block) has no graph break, so
    ``cat-seg-benchmark --compile-clip`` (the GPU script's step ``vitb_infer_150_compile_clip``)
    measures it compiled whole; traced with dynamo only, and the traced graph == eager."""
    backbone = tiny_model("b").eval().backbone
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        explanation = torch._dynamo.explain(backbone)(images)
        assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]
        assert explanation.graph_count == 1
        want = backbone(images)
        got = torch.compile(backbone, backend="aot_eager")(images)
    assert (got["dense_embeddings"] - want["dense_embeddings"]).abs().max() <= 1e-5
    for g, w in zip(*([out[f"block{i}"] for i in backbone.guidance_blocks] for out in (got, want))):
        assert (g - w).abs().max() <= 1e-5
