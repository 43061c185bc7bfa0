"""The counting class of ``--count`` (:class:`cat_seg.cli.work_count.WorkCounter`) on op sequences
whose FLOPs and bytes are computed here by hand."""
import gc

import pytest
import torch
from torch import nn

from cat_seg.cli.work_count import WorkCounter, count

F32 = 4


def test_mm_flops_and_bytes():
    m, k, n = 3, 5, 7
    a, b = torch.randn(m, k), torch.randn(k, n)
    with WorkCounter() as counter:
        torch.mm(a, b)
    totals = counter.totals()
    assert totals["flops"] == totals["flops_flop_counter"] == 2 * m * n * k
    assert totals["bytes_read"] == (m * k + k * n) * F32
    assert totals["bytes_written"] == m * n * F32
    assert totals["bytes"] == (m * k + k * n + m * n) * F32
    assert totals["ops"] == 1 and totals["views"] == 0
    assert counter.groups() == {"outside_model": {k: totals[k] for k in ("flops", "bytes", "bytes_read",
                                                                          "bytes_written", "ops")}}


def test_views_cost_nothing_and_copies_do():
    x = torch.randn(4, 6)
    with WorkCounter() as counter:
        y = x.t()  # view
        z = y.reshape(24)  # non-contiguous: a copy (clone) then a free _unsafe_view
        x.view(2, 12).permute(1, 0).unsqueeze(0)  # views
    totals = counter.totals()
    assert totals["ops"] == 1 and totals["bytes"] == 2 * 24 * F32
    assert totals["views"] >= 5 and totals["flops"] == 0
    assert z.shape == (24,)


def test_in_place_ops_read_and_write_their_target_and_repeated_inputs_count_once():
    a = torch.randn(10)
    with WorkCounter() as counter:
        a.add_(1.0)  # reads a, writes a
        a.mul_(a)  # reads a once, writes a
        a.zero_()  # only writes a
        b = torch.empty(10)  # allocation: not counted
        b.copy_(a)  # reads a, writes b
    totals = counter.totals()
    assert totals["bytes_read"] == 3 * 10 * F32
    assert totals["bytes_written"] == 4 * 10 * F32
    assert totals["ops"] == 4


def test_augmented_assignment_to_a_region_counts_the_add_only():
    """``t[region] += u`` dispatches the in-place add, then a copy of the region onto itself,
    which torch skips without a kernel: only the add is counted (a copy between different
    regions is)."""
    t, u = torch.zeros(8, 10), torch.ones(3, 10)
    with WorkCounter() as counter:
        t[2:5] += u  # add_ on the view (reads the region and u, writes the region), then the self-copy
    totals = counter.totals()
    assert totals["ops"] == 1
    assert totals["bytes_read"] == 2 * 30 * F32 and totals["bytes_written"] == 30 * F32
    assert torch.equal(t[2:5], torch.ones(3, 10))
    with WorkCounter() as counter:
        t[5:8] = t[2:5]  # a real copy
    assert counter.totals()["ops"] == 1 and counter.totals()["bytes"] == 2 * 30 * F32
    assert torch.equal(t[5:8], torch.ones(3, 10))


def test_indexed_writes_count_the_indexed_region_not_the_whole_target():
    out = torch.zeros(100, 8, 8)
    rows, values, three = torch.tensor([3, 7, 9]), torch.ones(8, 8), torch.ones(3, 8, 8)
    with WorkCounter() as counter:
        out[rows] = values  # index_put_: reads the index and the values, writes 3 rows
    totals = counter.totals()
    assert totals["ops"] == 1
    assert totals["bytes_read"] == 3 * 8 + 8 * 8 * F32  # int64 index + the broadcast values
    assert totals["bytes_written"] == 3 * 8 * 8 * F32
    with WorkCounter() as counter:
        out.index_put_((rows,), three, accumulate=True)  # += reads the region too
    totals = counter.totals()
    assert totals["bytes_read"] == 3 * 8 + 3 * 8 * 8 * F32 + 3 * 8 * 8 * F32
    assert totals["bytes_written"] == 3 * 8 * 8 * F32


def test_indexed_writes_with_masks_and_full_slices():
    """A boolean mask selects its True elements over as many dimensions as it has; a full
    slice before the index covers its dimension whole."""
    target = torch.zeros(10, 16)
    target[0, 0] = target[3, 5] = 9.0
    mask = target > 5
    with WorkCounter() as counter:
        target[mask] = 1.0  # 2 elements written
    assert counter.totals()["bytes_written"] == 2 * F32
    assert counter.totals()["bytes_read"] == 10 * 16 + F32  # the bool mask and the 0-d value
    columns = torch.tensor([1, 3, 5])
    values = torch.ones(10, 3)
    with WorkCounter() as counter:
        target[:, columns] = values  # 10 x 3 elements
    assert counter.totals()["bytes_written"] == 10 * 3 * F32
    assert counter.totals()["bytes_read"] == 3 * 8 + 10 * 3 * F32


def test_allocations_templates_and_metadata_ops():
    """empty_like allocates (no op, no bytes); zeros_like / new_zeros write their result and
    do not read their template; in-place view ops change no data."""
    big = torch.randn(1 << 16)
    with WorkCounter() as counter:
        torch.empty_like(big)
        torch.empty_permuted((4, 8), (1, 0))
    assert counter.totals()["ops"] == 0 and counter.totals()["bytes"] == 0
    with WorkCounter() as counter:
        big.new_zeros(16)
        torch.zeros_like(big[:8])
    assert counter.totals()["bytes_read"] == 0 and counter.totals()["bytes_written"] == (16 + 8) * F32
    square = torch.randn(64, 64)
    with WorkCounter() as counter:
        square.unsqueeze_(0)
        square.squeeze_(0)
        square.t_()
    assert counter.totals()["ops"] == 0 and counter.totals()["bytes"] == 0


def test_attention_flops_on_every_device():
    """FlopCounterMode knows only the CUDA attention kernels: the CPU kernel is given torch's
    attention formula (forward: two batched products of 2*b*h*s*s*d; backward: 2.5x), so the
    counts do not depend on the device."""
    b, h, s, d = 1, 2, 16, 8
    q = torch.randn(b, h, s, d, requires_grad=True)
    with WorkCounter() as counter:
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    forward = 2 * (2 * b * h * s * s * d)
    assert counter.totals()["flops"] == forward
    with WorkCounter() as counter:
        out.sum().backward()
    assert counter.totals()["flops"] == 5 * forward // 2


def test_counts_inference_with_padded_class_sequences(tiny_model, random_images):
    """Inference with fewer classes than PAD_LEN (the padding tokens take part) is counted under
    no_grad; FlopCounterMode's module tracker and the counter's own hooks only see module inputs
    that autograd can hook."""
    model = tiny_model("b")
    image = random_images([(64, 64)])[0]
    with torch.no_grad(), WorkCounter(model) as counter:
        model([{"image": image}], class_names=["sky", "tree", "road"])
    groups = counter.groups()
    assert groups["class_blocks"]["ops"] > 0 and groups["class_blocks"]["flops"] > 0


def test_broadcast_inputs_count_their_distinct_elements_and_out_arguments_are_written_only():
    x, bias = torch.randn(8, 16), torch.randn(16)
    out = torch.empty(8, 16)
    with WorkCounter() as counter:
        torch.add(x, bias.expand(8, 16), out=out)
    totals = counter.totals()
    assert totals["bytes_read"] == (8 * 16 + 16) * F32
    assert totals["bytes_written"] == 8 * 16 * F32
    # storage sums count the whole storage of every tensor
    assert totals["bytes_storage"] == (8 * 16 + 16 + 8 * 16) * F32


def test_slices_count_what_they_address_not_their_storage():
    x = torch.randn(100, 10)
    with WorkCounter() as counter:
        x[:5].sum()
    totals = counter.totals()
    assert totals["bytes_read"] == 5 * 10 * F32 and totals["bytes_written"] == F32
    assert totals["bytes_storage"] == (100 * 10 + 1) * F32


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4, bias=False)
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        return self.norm(self.inner(x) * 2)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        return self.head(self.block(x) + 1)


def rules():
    return [("block", lambda m, p: isinstance(m, Block)), ("head", lambda m, p: p == "head"),
            ("root", lambda m, p: p == "")]


def test_ops_go_to_the_innermost_grouped_module_forward_and_backward():
    net = Net()
    x = torch.randn(2, 4, requires_grad=True)
    counter = WorkCounter(net, rules())
    with counter:
        y = net(x)
        y.sum().backward()
    groups = counter.groups()
    # forward matmuls: block.inner 2*2*4*4, head 2*2*4*3; backward: grad input and weight of each
    assert groups["block"]["flops"] == 3 * (2 * 2 * 4 * 4)
    assert groups["head"]["flops"] == 3 * (2 * 2 * 4 * 3)
    assert "root" in groups  # the "+ 1" of Net.forward
    assert groups["outside_model"]["ops"] >= 1  # the sum and its backward seed
    totals = counter.totals()
    for key in ("flops", "bytes", "ops"):
        assert sum(g[key] for g in groups.values()) == totals[key]
    phases = counter.phases()
    assert phases["forward"]["flops"] == 2 * 2 * 4 * 4 + 2 * 2 * 4 * 3
    assert phases["backward"]["flops"] == 2 * phases["forward"]["flops"]


def test_regions_override_module_groups_and_wrap_plain_callables():
    net = Net()

    class Encoder:  # not a module, like the cached text encoder
        def encode(self, x):
            return net.block(x)

    encoder, x = Encoder(), torch.randn(2, 4)
    counter = count(lambda: encoder.encode(x), net, [(encoder, "encode", "text")])
    assert set(counter.groups()) == {"text"}
    assert counter.groups()["text"]["flops"] == 2 * 2 * 4 * 4
    assert encoder.encode.__func__ is Encoder.encode  # restored afterwards


def test_counts_do_not_depend_on_the_values():
    net = Net()
    results = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        x = torch.randn(2, 4)
        counter = count(lambda: net(x), net, [])
        results.append((counter.totals(), counter.groups()))
    assert results[0] == results[1]


def test_modules_without_group_inherit_or_go_to_other():
    net, x = Net(), torch.randn(2, 4)
    # default CAT-Seg rules: the root of a model is pre/post-processing, inherited by the
    # submodules no rule matches
    assert set(count(lambda: net(x), net, []).groups()) == {"pre_post_processing"}
    counter = WorkCounter(net, [("head", lambda m, p: p == "head")])
    with counter:
        net(x)
    groups = counter.groups()
    assert set(groups) == {"head", "other"} and groups["head"]["flops"] == 2 * 2 * 4 * 3


@pytest.mark.parametrize("dtype, size", [(torch.float32, 4), (torch.bfloat16, 2), (torch.int64, 8)])
def test_bytes_follow_the_dtype(dtype, size):
    x = torch.ones(7, dtype=dtype)
    with WorkCounter() as counter:
        x + x
    assert counter.totals()["bytes"] == 2 * 7 * size


class Branches(nn.Module):
    """A side branch computed first and used last: in the backward pass its gradient is ready
    early, but its own backward runs after the main branch's."""

    def __init__(self):
        super().__init__()
        self.side = nn.Sequential(nn.Sequential(nn.Linear(4, 4, bias=False)))  # deeper than main
        self.main = nn.Linear(4, 4, bias=False)

    def forward(self, x):
        g = self.side(x)
        h = self.main(x)
        return (self.main(h) * g).sum()


def test_backward_ops_follow_the_forward_op_that_made_them():
    net = Branches()
    x = torch.randn(2, 4, requires_grad=True)
    counter = WorkCounter(net, [("side", lambda m, p: p == "side"), ("main", lambda m, p: p == "main")])
    with counter:
        net(x).backward()
    groups = counter.groups()
    mm = 2 * 2 * 4 * 4
    assert groups["side"]["flops"] == 3 * mm  # forward, grad of the input, grad of the weight
    assert groups["main"]["flops"] == 2 * 3 * mm


class _MatmulFunction(torch.autograd.Function):
    """x @ w with a hand-written backward (as the decoder head and the chunked loss have)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad @ w.t(), x.t() @ grad


class _CustomThenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.custom = _Custom()
        self.after = nn.Linear(4, 4, bias=False)

    def forward(self, x):
        return self.after(self.custom(x))


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return _MatmulFunction.apply(x, self.weight)


def test_backward_of_a_custom_autograd_function_goes_to_its_own_group():
    """Its forward runs without recording gradients; its backward went to the group of the next
    recorded forward op (here another module's)."""
    net = _CustomThenLinear()
    x = torch.randn(2, 4, requires_grad=True)
    counter = WorkCounter(net, [("custom", lambda m, p: p == "custom"), ("after", lambda m, p: p == "after")])
    with counter:
        net(x).sum().backward()
    groups = counter.groups()
    mm = 2 * 2 * 4 * 4
    assert groups["custom"]["flops"] == 3 * mm  # forward, and its backward's two products
    assert groups["after"]["flops"] == 3 * mm


def test_saved_activations_count_distinct_storages_and_follow_recomputation():
    """Linear -> GELU -> Linear on a [16, 4] fp32 input that needs no gradient: the first
    linear saves its input (256 B), the GELU its input (512 B), the second linear the GELU's
    output (512 B); recomputing GELU + second linear in the backward keeps only the first
    linear's output (the checkpoint's input); parameters are not counted; nothing without
    gradients."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    first, second, act = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2), torch.nn.GELU()
    x = torch.randn(16, 4)

    def saved(fn):
        counter = WorkCounter()
        with counter:
            out = fn()
        return counter.saved_activations(), out

    plain, out = saved(lambda: second(act(first(x))).sum())
    assert plain == {"outside_model": 1280, "total": 1280}
    out.backward()
    recomputed, out = saved(lambda: checkpoint(lambda h: second(act(h)), first(x), use_reentrant=False).sum())
    assert recomputed == {"outside_model": 768, "total": 768}
    out.backward()  # the recomputation in the backward is not recorded
    with torch.no_grad():
        assert saved(lambda: second(act(first(x))))[0] == {}


def test_peak_memory_is_the_largest_sum_of_live_storages():
    """Linear(256 -> 1024) on x [512, 256], ReLU, sum, backward, in fp32, by hand: the peak
    comes in the backward, with the ReLU's output (kept for its backward), the loss and its
    seed, the gradient of the linear's output and the weight and bias gradients alive on top
    of what was there before. The linear's output is freed when the ReLU has run (ReLU keeps
    its output, not its input) and is not part of the peak."""
    torch.manual_seed(0)
    linear = nn.Linear(256, 1024)
    x = torch.randn(512, 256)
    state = torch.zeros(77)  # stands for some state kept between steps
    map_bytes = 512 * 1024 * F32
    gc.collect()
    with WorkCounter(linear, before_step={"state": [state]}) as counter:
        y = linear(x)
        z = torch.relu(y)
        del y
        loss = z.sum()
        loss.backward()
        del z, loss
    memory = counter.memory()
    scalar = F32  # the loss and the seed of the backward
    gradients = (256 * 1024 + 1024) * F32
    assert memory["peak_bytes"] - memory["before_step_bytes"] == 2 * map_bytes + 2 * scalar + gradients
    assert memory["end_bytes"] - memory["before_step_bytes"] == gradients  # .grad of weight and bias
    assert memory["peak_at"]["phase"] == "backward"
    live = memory["live_at_peak"]
    assert live["before: parameters"] == (256 * 1024 + 1024) * F32
    assert live["before: state"] == 77 * F32
    assert live["outside_model"] == map_bytes + 2 * scalar  # made by the forward (outside any grouped module)
    assert memory["peak_bytes"] == sum(live.values())


def test_peak_memory_counts_a_storage_once_and_frees_it_with_its_last_view():
    gc.collect()
    with WorkCounter() as counter:
        a = torch.ones(1000)  # 4000 B
        views = [a[:10], a.view(10, 100), a[500:]]
        del a
        b = torch.ones(2000)  # 8000 B: with a still alive through its views
        del views
        c = torch.ones(2500)  # 10000 B: a is gone, b is alive
        del b, c
    memory = counter.memory()
    assert memory["peak_bytes"] - memory["before_step_bytes"] == 18000
    assert memory["end_bytes"] == memory["before_step_bytes"]


@pytest.mark.parametrize("scaled", [False, True])
def test_fused_adamw_writes_the_gradients_only_when_it_unscales_them(scaled):
    """The fused step's schema marks the gradients mutated (it unscales them in place with a
    gradient scaler's factor); without a factor it reads them only."""
    net = nn.Linear(64, 32)  # 2080 parameters: 8320 bytes per tensor of them
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1, fused=True)
    for _ in range(2):  # the second step: with its state (exp_avg, exp_avg_sq, step)
        optimizer.zero_grad()
        net(torch.randn(2, 64)).sum().backward()
        if _ == 0:
            optimizer.step()
    if scaled:  # as torch.amp.GradScaler.step passes them
        optimizer.grad_scale, optimizer.found_inf = torch.ones(()), torch.zeros(())
    with WorkCounter() as counter:
        optimizer.step()
    totals = counter.totals()
    per_tensor, steps = 8320, 2 * 4  # the two float32 step counters, read and written by the +1
    # read: parameters, gradients, both moments (and the steps, by the +1 and the fused step);
    # scaled: also the factor and the found-inf flag, and the steps' "- found_inf" reads both
    assert totals["bytes_read"] == 4 * per_tensor + 2 * steps + ((4 + 4) + (steps + 4) if scaled else 0)
    # written: parameters and both moments (and the steps); the gradients too when unscaled
    assert totals["bytes_written"] == (4 if scaled else 3) * per_tensor + (2 * steps if scaled else steps)
