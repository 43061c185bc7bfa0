"""The tiny model on a CUDA device (skipped without one; ``tools/gpu_benchmark.sh`` runs these
on the lent GPU machine): the fp32 CUDA path equals the CPU path, inductor-compiled CUDA code
equals eager without a recompilation per vocabulary, CUDA-graph replay equals eager, and
bf16 stays within bf16's error of fp32.
"""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# vocabulary sizes, all under the tiny config's PAD_LEN (32): padded, not pruned (the top-k
# pruning: test_pruned_vocabulary_compiled_and_graphed_equals_eager)
SIZES = (5, 9, 3)


def names(size):
    return [f"thing {i}" for i in range(size)]


def images(batch=1, size=128, device="cuda"):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, size, size, generator=g).to(device)


def eager(tiny_model, **overrides):
    """The tiny model on CUDA without compilation or graphs (MODEL.COMPILE auto compiles there)."""
    settings = {"MODEL__DEVICE": "cuda", "MODEL__COMPILE": False, "TEST__CUDA_GRAPHS": False}
    return tiny_model("b", **{**settings, **overrides}).eval()


def test_defaults_on_cuda_compile_without_graphs(tiny_model):
    """CUDA graphs are off by default until the compiled + graphed variant of
    test_cuda_graph_replay_equals_eager passes on a GPU (config.py, TEST.CUDA_GRAPHS)."""
    model = tiny_model("b", MODEL__DEVICE="cuda").eval()
    assert model.compiled and not model._graphed_views.enabled
    assert not tiny_model("b").eval().compiled  # CPU: eager


def test_cuda_fp32_equals_cpu(tiny_model):
    cpu = tiny_model("b").eval()
    gpu = eager(tiny_model)
    with torch.no_grad():
        for size in SIZES:
            expected = cpu.predict_logits(images(device="cpu"), names(size), (1, 1))
            got = gpu.predict_logits(images(), names(size), (1, 1)).cpu()
            assert (got - expected).abs().max() <= 1e-4, size


def test_inductor_on_cuda_equals_eager_and_compiles_once(tiny_model):
    """The first CUDA compilation of the product code (inductor's Triton kernels): the eager
    results, and vocabulary sizes that share one graph per branch (padded / pruned)."""
    import torch._dynamo

    torch._dynamo.reset()
    reference = eager(tiny_model)
    compiled = eager(tiny_model, MODEL__COMPILE=True)
    counters = torch._dynamo.utils.counters
    counters.clear()
    with torch.no_grad():
        for size in (5, 7, 3):
            out = compiled.predict_logits(images(), names(size), (1, 1))
            assert (out - reference.predict_logits(images(), names(size), (1, 1))).abs().max() <= 1e-4, size
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch._dynamo.reset()


def _per_view_error(out, expected):
    return [float(f"{float(e):.3g}") for e in (out - expected).abs().flatten(1).max(dim=1).values]


@pytest.mark.parametrize("compiled,graphs", [(False, True), (True, False), (True, True)],
                         ids=["eager-graphs", "compiled", "compiled-graphs"])
def test_cuda_graph_replay_equals_eager(tiny_model, compiled, graphs):
    """Several random views per call, three calls: each setting equals eager within 1e-4.

    The compiled variant without graphs runs the same inputs, so that a failure of the
    compiled + graphed variant tells a replay fault from a difference of the compiled code;
    its message also gives the same model's output with the graphs switched off, per view.
    """
    import torch._dynamo

    torch._dynamo.reset()
    model = eager(tiny_model, TEST__CUDA_GRAPHS=graphs, MODEL__COMPILE=compiled)
    reference = eager(tiny_model)
    graphed = model._graphed_views
    previous = None
    with torch.no_grad():
        for seed in range(3):
            views = torch.randn(5, 3, 128, 128, generator=torch.Generator().manual_seed(seed)).cuda()
            out = model.predict_logits(views, names(9), (1, 1)).clone()
            expected = reference.predict_logits(views, names(9), (1, 1))
            error = (out - expected).abs().max().item()
            if error > 1e-4:
                # which input, whether the replay returned the previous input's logits (a stale
                # static buffer), and the same model without graphs (the compiled code's own error)
                same_as_previous = previous is not None and torch.equal(out, previous)
                graphed.enabled = False
                direct = model.predict_logits(views, names(9), (1, 1))
                graphed.enabled = graphs
                raise AssertionError(
                    f"views of seed {seed} (call {seed + 1}, captures {graphed.captures}, replays "
                    f"{graphed.replays}): max error {error:.3g}, per view {_per_view_error(out, expected)}; "
                    f"output equal to the previous call's: {same_as_previous}; without graphs: per view "
                    f"{_per_view_error(direct, expected)}, graphed vs without {_per_view_error(out, direct)}")
            previous = out
        if graphs:
            assert graphed.captures == 1 and graphed.replays == 3
            model.predict_logits(images(), names(5), (1, 1))  # another vocabulary / batch: another graph
            assert graphed.captures == 2
        else:
            assert graphed.captures == 0
    torch._dynamo.reset()


def test_pruned_vocabulary_compiled_and_graphed_equals_eager(tiny_model):
    """More classes than PAD_LEN (40 > 32): the top-k branch, compiled and replayed in a CUDA
    graph as the GPU benchmarks run it (the 847-class benchmark's path), equals eager on new
    inputs, including which classes are pruned (-100)."""
    import torch._dynamo

    torch._dynamo.reset()
    model = tiny_model("b", MODEL__DEVICE="cuda", TEST__CUDA_GRAPHS=True).eval()
    reference = eager(tiny_model)
    assert model.compiled and model._graphed_views.enabled
    with torch.no_grad():
        for seed in range(2):
            views = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(10 + seed)).cuda()
            out = model.predict_logits(views, names(40), (1, 1))
            expected = reference.predict_logits(views, names(40), (1, 1))
            assert torch.equal(out == -100, expected == -100), f"seed {seed}: other classes pruned"
            assert (out - expected).abs().max() <= 1e-4, f"seed {seed}"
        assert (out == -100).any()  # the branch pruned classes
    torch._dynamo.reset()


def test_sliding_window_inference_defaults_and_bf16(tiny_model):
    """The whole detectron2 inference path on CUDA: the defaults (compiled) and the speed
    settings (compiled, graphs) change nothing; bf16 stays within a bf16-sized error of the
    fp32 probabilities.

    bf16 is checked on the probabilities, not the labels: with random weights the top-2 margin
    of most pixels is below bf16's error (the same comparison on the CPU, 2-core AMD EPYC with
    native bf16: probabilities 0.40-0.65, median top-2 margin 7e-4, bf16 error median 3.2e-4,
    max 3.1e-3). The toy model's label agreement is ``tests/perf/test_bf16_agreement.py``.
    """
    import torch._dynamo

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(1)
    inputs = [{"image": torch.randint(0, 256, (3, 170, 230), generator=g, dtype=torch.uint8)}]
    fp32 = eager(tiny_model)
    defaults = tiny_model("b", MODEL__DEVICE="cuda").eval()
    graphed = tiny_model("b", MODEL__DEVICE="cuda", TEST__CUDA_GRAPHS=True).eval()
    bf16 = eager(tiny_model, MODEL__PRECISION="bf16")
    with torch.no_grad():
        reference = fp32(inputs, names(9))[0]["sem_seg"]
        assert (defaults(inputs, names(9))[0]["sem_seg"] - reference).abs().max() <= 1e-4
        assert (graphed(inputs, names(9))[0]["sem_seg"] - reference).abs().max() <= 1e-4
        error = (bf16(inputs, names(9))[0]["sem_seg"] - reference).abs()
    assert error.max() <= 0.01 and error.mean() <= 2e-3, (float(error.max()), float(error.mean()))
    assert error.max() > 0  # bf16 did run (an fp32 fallback would give 0)
    torch._dynamo.reset()
