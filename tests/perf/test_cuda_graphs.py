"""CUDA-graph replay (:mod:`cat_seg.modeling.cuda_graphs`): the signature and cache logic on CPU
(with a stand-in for the captured graph), the real capture/replay on CUDA (skipped without)."""
import pytest
import torch

from cat_seg.modeling.cuda_graphs import GraphedForward, _Graph, module_state, signature

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def views_to_logits(views, text, pooling=(1, 1)):
    """A stand-in per-view forward: ``[V, C, H, W]`` x ``[T, C]`` -> ``[V, T, H, W]``."""
    return torch.einsum("vchw,tc->vthw", views, text).relu() * pooling[0]


def test_signature_separates_shapes_dtypes_values_and_modes():
    views, text = torch.zeros(5, 4, 6, 6), torch.zeros(150, 4)
    key = signature((views, text, (1, 1)))
    assert key == signature((torch.ones(5, 4, 6, 6), torch.ones(150, 4), (1, 1)))  # values do not matter
    assert key != signature((views, torch.zeros(847, 4), (1, 1)))  # vocabulary size
    assert key != signature((torch.zeros(10, 4, 6, 6), text, (1, 1)))  # batch of views
    assert key != signature((views.double(), text, (1, 1)))  # dtype
    assert key != signature((views.transpose(2, 3), text, (1, 1)))  # strides
    assert key != signature((views, text, (2, 2)))  # non-tensor arguments by value
    assert key != signature((views, text), {"pooling": (1, 1)})  # structure
    with torch.no_grad():
        assert key != signature((views, text, (1, 1)))  # grad mode
    with pytest.raises(TypeError, match="not hashable"):
        signature((views, [1, 2], {"a": []}, object.__new__(type("Unhashable", (), {"__hash__": None}))))


def test_cpu_tensors_run_eagerly():
    graphed = GraphedForward(views_to_logits)
    views, text = torch.randn(2, 3, 4, 4), torch.randn(7, 3)
    with torch.no_grad():
        out = graphed(views, text)
    torch.testing.assert_close(out, views_to_logits(views, text), rtol=0, atol=0)
    assert graphed.captures == 0 and graphed.replays == 0


class StandInGraph:
    """Replays by calling the function on the static inputs (what a CUDA graph does on the GPU)."""

    def __init__(self, fn, static_args, static_output):
        self.fn, self.static_args, self.static_output = fn, static_args, static_output

    def replay(self):
        self.static_output.copy_(self.fn(*self.static_args))


class CPUGraphedForward(GraphedForward):
    """The cache, signature and static-buffer logic of GraphedForward, with the CUDA capture
    replaced by :class:`StandInGraph` so that it runs on CPU tensors."""

    def capturable(self, leaves):
        return self.enabled and not torch.is_grad_enabled()


def make_stand_in(fn=views_to_logits, module=None):
    graphed = CPUGraphedForward(fn, max_graphs=2, module=module)

    def capture(args, kwargs):
        static = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        output = graphed.fn(*static)
        return _Graph(StandInGraph(graphed.fn, static, output), static, output)

    graphed._capture = capture
    return graphed


def test_one_capture_per_signature_and_replays_with_new_values():
    graphed = make_stand_in()
    text = torch.randn(150, 3)
    with torch.no_grad():
        for i in range(3):
            views = torch.randn(5, 3, 4, 4)
            torch.testing.assert_close(graphed(views, text), views_to_logits(views, text), rtol=0, atol=0)
        assert graphed.captures == 1 and graphed.replays == 3
        other = torch.randn(847, 3)  # another vocabulary: a second graph
        torch.testing.assert_close(graphed(views, other), views_to_logits(views, other), rtol=0, atol=0)
        assert graphed.captures == 2
        graphed(views, text)  # both kept
        assert graphed.captures == 2
        graphed(torch.randn(1, 3, 4, 4), text)  # a third signature evicts the least recently used (847)
        graphed(views, other)
        assert graphed.captures == 4 and graphed.replays == 7


def test_outputs_are_copies_unless_asked():
    graphed = make_stand_in()
    views, text = torch.randn(5, 3, 4, 4), torch.randn(9, 3)
    with torch.no_grad():
        first = graphed(views, text)
        graphed(views * 2, text)  # a second replay overwrites the static output
        torch.testing.assert_close(first, views_to_logits(views, text), rtol=0, atol=0)  # not overwritten
        graphed.clone_outputs = False
        assert graphed(views, text) is graphed(views, text)


def test_disabled_or_recording_gradients_runs_eagerly():
    graphed = make_stand_in()
    views, text = torch.randn(5, 3, 4, 4), torch.randn(9, 3)
    graphed(views, text)  # grad mode on: eager
    graphed.enabled = False
    with torch.no_grad():
        graphed(views, text)
    assert graphed.captures == 0


class Projection(torch.nn.Module):
    """A module whose forward a graph records: a linear map (weights read at replay) and an
    activation submodule (code chosen at capture)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)
        self.activation = torch.nn.ReLU()

    def forward(self, views, text):
        return self.activation(torch.einsum("vchw,tc->vthw", self.linear(views.movedim(1, -1)).movedim(-1, 1), text))


def test_graphs_follow_the_module_they_run():
    """Captured again when a submodule, a training flag or a tensor of the module is replaced;
    in-place weight updates are read by the replay without a new capture."""
    torch.manual_seed(0)
    model = Projection()
    graphed = make_stand_in(model, module=model)
    views, text = torch.randn(2, 3, 4, 4), torch.randn(5, 3)

    def check(captures):
        torch.testing.assert_close(graphed(views, text), model(views, text), rtol=0, atol=0)
        assert graphed.captures == captures

    with torch.no_grad():
        check(1)
        check(1)
        model.linear.weight.mul_(2)  # in place: the same graph reads the new values
        check(1)
        model.activation = torch.nn.Sigmoid()  # another submodule: other code
        check(2)
        model.linear.weight = torch.nn.Parameter(torch.randn(3, 3))  # a new tensor (assign=True loads)
        check(3)
        model.linear.bias.data = torch.randn(3)  # new memory under the same Parameter (.to() does this)
        check(4)
        model.eval()  # a training flag
        check(5)
        model.load_state_dict(Projection().state_dict())  # copied in place: no capture
        check(5)
    state = module_state(model)
    assert model in state and model.linear in state and model.linear.weight.data_ptr() in state


@cuda
def test_cuda_graph_replay_matches_eager_and_recaptures_per_vocabulary():
    device = torch.device("cuda")
    weight = torch.randn(3, 3, device=device)

    def fn(views, text):
        return torch.einsum("vchw,tc->vthw", views @ weight, text).sigmoid()

    graphed = GraphedForward(fn)
    text = torch.randn(150, 3, device=device)
    with torch.no_grad():
        for _ in range(3):
            views = torch.randn(5, 3, 4, 3, device=device)
            torch.testing.assert_close(graphed(views, text), fn(views, text))
        assert graphed.captures == 1 and graphed.replays == 3
        big = torch.randn(847, 3, device=device)
        torch.testing.assert_close(graphed(views, big), fn(views, big))
        assert graphed.captures == 2
        weight.mul_(2)  # parameters are read by the graph at replay time
        torch.testing.assert_close(graphed(views, text), fn(views, text))
        assert graphed.captures == 2


def test_model_with_cuda_graphs_on_cpu_runs_eagerly_and_equal(tiny_model, random_images):
    """``TEST.CUDA_GRAPHS True`` wires the per-view forward through :class:`GraphedForward`;
    on a CPU it runs eagerly (no capture) and gives the same probabilities as without it
    (the default, False)."""
    image = random_images([(64, 96)], seed=5)[0]
    plain = tiny_model("b", seed=1, TEST__SLIDING_WINDOW=True)
    graphed = tiny_model("b", seed=1, TEST__SLIDING_WINDOW=True, TEST__CUDA_GRAPHS=True)
    assert graphed._graphed_views.enabled and not plain._graphed_views.enabled
    with torch.no_grad():
        want = plain([{"image": image}])[0]["sem_seg"]
        got = graphed([{"image": image}])[0]["sem_seg"]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert graphed._graphed_views.captures == 0 and graphed._graphed_views.replays == 0
