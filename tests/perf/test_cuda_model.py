"""The tiny model on a CUDA device (skipped without one; ``tools/gpu_benchmark.sh`` runs these
on the lent GPU machine): the fp32 CUDA path equals the CPU path, inductor-compiled CUDA code
equals eager without a recompilation per vocabulary, CUDA-graph replay equals eager, and
bf16 keeps the labels of fp32.
"""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SIZES = (5, 9, 3)  # vocabulary sizes: padded, top-k pruned (above the tiny PAD_LEN), padded


def names(size):
    return [f"thing {i}" for i in range(size)]


def images(batch=1, size=128, device="cuda"):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, size, size, generator=g).to(device)


def eager(tiny_model, **overrides):
    """The tiny model on CUDA without compilation or graphs (the defaults turn both on there)."""
    settings = {"MODEL__DEVICE": "cuda", "MODEL__COMPILE": False, "TEST__CUDA_GRAPHS": False}
    return tiny_model("b", **{**settings, **overrides}).eval()


def test_defaults_on_cuda_compile_and_graph(tiny_model):
    model = tiny_model("b", MODEL__DEVICE="cuda").eval()
    assert model.compiled and model._graphed_views.enabled
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


@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_graph_replay_equals_eager(tiny_model, compiled):
    import torch._dynamo

    torch._dynamo.reset()
    model = eager(tiny_model, TEST__CUDA_GRAPHS=True, MODEL__COMPILE=compiled)
    reference = eager(tiny_model)
    graphed = model._graphed_views
    with torch.no_grad():
        for seed in range(3):
            views = torch.randn(5, 3, 128, 128, generator=torch.Generator().manual_seed(seed)).cuda()
            out = model.predict_logits(views, names(9), (1, 1)).clone()
            assert (out - reference.predict_logits(views, names(9), (1, 1))).abs().max() <= 1e-4
        assert graphed.captures == 1 and graphed.replays == 3
        model.predict_logits(images(), names(5), (1, 1))  # another vocabulary / batch: another graph
        assert graphed.captures == 2
    torch._dynamo.reset()


def test_sliding_window_inference_defaults_and_bf16(tiny_model):
    """The whole detectron2 inference path on CUDA: the defaults (compiled, graphs) change
    nothing; bf16 keeps the fp32 label wherever fp32 is not near a tie (random weights make
    many near-ties, so pixels whose top-2 fp32 margin is below 0.01 are not compared)."""
    import torch._dynamo

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(1)
    inputs = [{"image": torch.randint(0, 256, (3, 170, 230), generator=g, dtype=torch.uint8)}]
    fp32 = eager(tiny_model)
    defaults = tiny_model("b", MODEL__DEVICE="cuda").eval()
    bf16 = eager(tiny_model, MODEL__PRECISION="bf16")
    with torch.no_grad():
        reference = fp32(inputs, names(9))[0]["sem_seg"]
        assert (defaults(inputs, names(9))[0]["sem_seg"] - reference).abs().max() <= 1e-4
        labels = bf16(inputs, names(9))[0]["sem_seg"].argmax(0)
    top2 = reference.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) >= 0.01
    assert clear.float().mean() > 0.5
    assert (labels == reference.argmax(0))[clear].float().mean() >= 0.995
    torch._dynamo.reset()
