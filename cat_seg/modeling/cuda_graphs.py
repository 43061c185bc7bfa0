"""CUDA-graph replay of a fixed-shape forward (inference): one capture per input signature.

A sliding-window inference runs the same per-view forward (normalised crops ``[V, 3, S, S]``
and the text embeddings ``[T, P, C]`` -> logits) again and again with the same shapes: the
kernels it launches can be recorded once in a ``torch.cuda.CUDAGraph`` and replayed, which
removes the CPU-side launch overhead of the hundreds of small kernels.

:class:`GraphedForward` wraps such a callable. Per *signature* (the shapes, dtypes, strides and
devices of the tensor arguments, the values of the other arguments, the grad mode and the
autocast state) it captures the callable once into a graph with static input and output
buffers; later calls with that signature copy the inputs into the static buffers (skipped
when the caller passes the static buffer itself), replay the graph and return the outputs
(cloned by default: the static buffers are overwritten by the next replay). Anything that is
not a capturable call runs eagerly: tensors not on CUDA (CPU), or a call that records
gradients. All graphs of one wrapper share one memory pool.

A graph also depends on what the callable reads besides its arguments: the code of the
modules it runs and the memory of their parameters and buffers, whose addresses the kernels
were recorded with. Given the ``module`` that holds them, the wrapper drops its graphs when
that changes (:func:`module_state`): a submodule replaced by another, a training flag
switched, a tensor replaced by a new one (``load_state_dict(..., assign=True)``, ``.to()``,
``p.data = ...``). In-place updates of the weights need nothing: a replay reads their current
values.

The captured callable must be capturable: no host synchronisation (``.item()``, ``.any()``
in Python control flow, ``nonzero``), no shapes that depend on values, and no CPU->GPU copies
after its first calls (lazily built constants must be cached on the device by then; the
capture runs ``warmup`` eager calls first, on a side stream, as torch requires).

Why not torch's own: ``torch.cuda.make_graphed_callables`` captures one fixed signature and
the backward too (it needs ``requires_grad`` inputs and replays whatever shapes it was given),
while the per-view forward meets several signatures (vocabulary sizes, the last smaller batch
of an evaluation) and is inference only; ``torch.compile(mode="reduce-overhead")`` graphs
only what it compiles and re-records on every new shape, and the model's compile covers the
aggregator, not the CLIP towers and the cost volume that one graph here replays with it.
"""
from collections import OrderedDict
from typing import Callable, Hashable, Optional

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten


def signature(args: tuple, kwargs: Optional[dict] = None) -> Hashable:
    """Hashable key of a call: per tensor (shape, stride, dtype, device), other leaves by value,
    plus the pytree structure, the grad mode and the CUDA autocast state.

    Two calls with the same key can replay the same graph; a different vocabulary size
    (text embeddings ``[T, P, C]``), batch or dtype gives a different key.
    """
    leaves, spec = tree_flatten((args, kwargs or {}))
    parts = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            parts.append(("tensor", tuple(leaf.shape), tuple(leaf.stride()), leaf.dtype, str(leaf.device),
                          leaf.requires_grad))
        else:
            try:
                hash(leaf)
            except TypeError:
                raise TypeError(f"GraphedForward: argument of type {type(leaf).__name__} is not hashable; "
                                "pass tensors or hashable values") from None
            parts.append(("value", leaf))
    autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
    return (str(spec), tuple(parts), torch.is_grad_enabled(), autocast)


def module_state(module: torch.nn.Module) -> list:
    """What a graph of ``module``'s forward depends on besides its arguments: every submodule
    (by identity), its training flag, and the address of each parameter and buffer.

    Written as one walk over the module dicts: it runs before every replay, and it is about 5x
    faster than ``modules()`` + ``parameters()`` + ``buffers()`` (a few hundred microseconds
    for the ViT-B model on a slow CPU).
    """
    parts = []
    stack = [module]
    while stack:
        current = stack.pop()
        parts.append(current)
        parts.append(current.training)
        parts.extend(t.data_ptr() for t in current._parameters.values() if t is not None)
        parts.extend(t.data_ptr() for t in current._buffers.values() if t is not None)
        stack.extend(child for child in current._modules.values() if child is not None)
    return parts


class _Graph:
    """One captured call: the graph, its static input leaves and its static output."""

    def __init__(self, graph, static_leaves, static_output):
        self.graph = graph
        self.static_leaves = static_leaves
        self.static_output = static_output

    def replay(self, leaves):
        for static, leaf in zip(self.static_leaves, leaves):
            if isinstance(leaf, torch.Tensor) and leaf.data_ptr() != static.data_ptr():
                static.copy_(leaf)
        self.graph.replay()
        return self.static_output


class GraphedForward:
    """Call ``fn`` through CUDA graphs, captured once per :func:`signature`, eagerly elsewhere.

    Args:
        fn: the callable (e.g. the per-view forward ``(views [V, 3, S, S], text [T, P, C]) ->
            logits [V, T, h, w]``); its tensor arguments are copied into static buffers.
        warmup: eager calls on a side stream before the capture (cuDNN/cuBLAS autotuning,
            lazily built constants).
        max_graphs: captured signatures kept (least recently used dropped first).
        clone_outputs: return copies of the static outputs (False: the static buffers
            themselves, valid until the next call with the same signature).
        enabled: False runs ``fn`` eagerly always.
        module: the module whose submodules, parameters and buffers ``fn`` runs and reads;
            its graphs are dropped when they change (:func:`module_state`). None: the
            caller calls :meth:`reset` after such a change.

    ``captures`` counts the captures made, ``replays`` the replays.
    """

    def __init__(self, fn: Callable, warmup: int = 2, max_graphs: int = 8, clone_outputs: bool = True,
                 enabled: bool = True, module: Optional[torch.nn.Module] = None):
        if max_graphs < 1:
            raise ValueError(f"max_graphs={max_graphs}: expected at least 1")
        self.fn = fn
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.clone_outputs = clone_outputs
        self.enabled = enabled
        self.module = module
        self._module_state = None  # module_state(module) when the graphs were captured
        self._graphs: "OrderedDict[Hashable, _Graph]" = OrderedDict()
        self._pool = None
        self.captures = 0
        self.replays = 0

    def capturable(self, leaves) -> bool:
        """Whether a call with these argument leaves can run as a graph: enabled, no gradient
        recording, at least one tensor, every tensor on a CUDA device."""
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        return (self.enabled and not torch.is_grad_enabled() and bool(tensors)
                and all(t.is_cuda for t in tensors))

    def __call__(self, *args, **kwargs):
        leaves, _ = tree_flatten((args, kwargs))
        if not self.capturable(leaves):
            return self.fn(*args, **kwargs)
        if self.module is not None:
            state = module_state(self.module)
            if state != self._module_state:
                self.reset()
                self._module_state = state
        key = signature(args, kwargs)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(args, kwargs)
            self.captures += 1
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        output = entry.replay(leaves)
        self.replays += 1
        if self.clone_outputs:
            return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, output)
        return output

    def reset(self):
        """Drop every captured graph and the memory pool they share (e.g. after the weights
        were replaced by new tensors, or to give the memory back)."""
        self._graphs.clear()
        self._pool = None
        self._module_state = None

    def _capture(self, args: tuple, kwargs: dict) -> _Graph:
        """Warm up on a side stream, then capture one call with static copies of the inputs."""
        leaves, spec = tree_flatten((args, kwargs))
        static_leaves = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        static_args, static_kwargs = tree_unflatten(static_leaves, spec)
        device = next(leaf.device for leaf in leaves if isinstance(leaf, torch.Tensor))
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*static_args, **static_kwargs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_output = self.fn(*static_args, **static_kwargs)
        return _Graph(graph, static_leaves, static_output)

    def __repr__(self) -> str:
        return (f"GraphedForward({getattr(self.fn, '__qualname__', self.fn)!r}, graphs={len(self._graphs)}, "
                f"captures={self.captures}, replays={self.replays})")

