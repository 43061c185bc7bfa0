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


def test_cuda_fp32_equals_cpu(tiny_model):
    cpu = tiny_model("b").eval()
    gpu = tiny_model("b", MODEL__DEVICE="cuda").eval()
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
    eager = tiny_model("b", MODEL__DEVICE="cuda").eval()
    compiled = tiny_model("b", MODEL__DEVICE="cuda", MODEL__COMPILE=True).eval()
    counters = torch._dynamo.utils.counters
    counters.clear()
    with torch.no_grad():
        for size in (5, 7, 3):
            out = compiled.predict_logits(images(), names(size), (1, 1))
            assert (out - eager.predict_logits(images(), names(size), (1, 1))).abs().max() <= 1e-4, size
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch._dynamo.reset()


def test_cuda_graph_replay_equals_eager(tiny_model):
    model = tiny_model("b", MODEL__DEVICE="cuda", TEST__CUDA_GRAPHS=True).eval()
    eager = tiny_model("b", MODEL__DEVICE="cuda").eval()
    graphed = model._graphed_views
    with torch.no_grad():
        for seed in range(3):
            views = torch.randn(5, 3, 128, 128, generator=torch.Generator().manual_seed(seed)).cuda()
            out = model.predict_logits(views, names(9), (1, 1)).clone()
            assert (out - eager.predict_logits(views, names(9), (1, 1))).abs().max() <= 1e-4
        assert graphed.captures == 1 and graphed.replays == 3
        model.predict_logits(images(), names(5), (1, 1))  # another vocabulary / batch: another graph
        assert graphed.captures == 2


def test_sliding_window_inference_with_graphs_and_bf16(tiny_model):
    """The whole detectron2 inference path on CUDA: graphs change nothing; bf16 keeps the
    fp32 labels on nearly every pixel (random weights: a lower bar than the toy model's)."""
    g = torch.Generator().manual_seed(1)
    inputs = [{"image": torch.randint(0, 256, (3, 170, 230), generator=g, dtype=torch.uint8)}]
    fp32 = tiny_model("b", MODEL__DEVICE="cuda").eval()
    graphs = tiny_model("b", MODEL__DEVICE="cuda", TEST__CUDA_GRAPHS=True).eval()
    bf16 = tiny_model("b", MODEL__DEVICE="cuda", MODEL__PRECISION="bf16").eval()
    with torch.no_grad():
        reference = fp32(inputs, names(9))[0]["sem_seg"]
        assert (graphs(inputs, names(9))[0]["sem_seg"] - reference).abs().max() <= 1e-4
        labels = bf16(inputs, names(9))[0]["sem_seg"].argmax(0)
    assert (labels == reference.argmax(0)).float().mean() >= 0.95
