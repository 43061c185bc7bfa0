"""Device-independent measure of the work of a forward / training step: FLOPs, bytes, ops.

:class:`WorkCounter` is a context manager that watches every aten op dispatched inside it
(a ``TorchDispatchMode``, i.e. after autograd and the composite decompositions: the ops that
run kernels) and counts, per op:

* **FLOPs**: those of ``torch.utils.flop_counter.FlopCounterMode`` (its formulas: matmuls,
  convolutions, attention, their backward; every other op counts 0 FLOPs), with its attention
  formula also given to the CPU attention kernel, which it does not know (:data:`CPU_ATTENTION_FLOPS`),
  so that the counts do not depend on the device. The counter runs a ``FlopCounterMode``
  below itself and attributes each op's increment of its total.
* **bytes**: bytes read + bytes written by the op. A tensor argument is *read* and a
  returned tensor is *written*; each counts ``itemsize x`` the number of distinct elements
  it addresses (its element count with broadcast, stride-0, dimensions counted once), at
  most the bytes of its storage from its offset on. The same tensor passed twice to one op
  is read once. Arguments an op mutates (``Tensor(a!)`` in its schema) are read and written,
  except the ``out=`` arguments and the targets of ``copy_``/``fill_``/``zero_`` and the
  random fills, which are only written; a result that is a mutated argument is not counted
  a second time. Ops whose results alias an input without writing it (views: ``view``,
  ``permute``, ``expand``, ``slice``, ``split``, ``_unsafe_view``, ``detach`` ..., and the
  in-place ``unsqueeze_``, ``t_`` ...), metadata queries and allocations (``empty``,
  ``empty_like``, ``empty_strided`` ...) count 0 bytes and are not counted as ops, nor
  does a ``copy_`` of a tensor onto the very same view (what ``t[region] += u`` dispatches
  after the in-place add), which torch returns from without a kernel. Factories such as
  ``zeros_like`` and ``new_zeros`` write their result and do not read their template.
  In-place indexed writes (``index_put_``: ``t[index] = values``) read the indices and values
  and write only the indexed region of their target (also read when accumulating): a boolean
  mask selects its True elements, a full slice its whole dimension.
  Scalars and Python numbers are not counted. Cache effects are ignored: this is the
  traffic a kernel-per-op execution moves, the quantity that kernel fusion reduces.
* **ops**: the number of computing ops (every op but the views and allocations above), a
  proxy for the number of kernel launches.

``bytes_storage`` (totals only) is the same sum with each tensor counted by its whole
storage instead (what a naive "sum of storage sizes" gives; a slice of a large tensor then
counts as the large tensor).

Attribution to named groups (:data:`GROUPS`): the counter keeps the set of modules running
(global forward pre/post hooks). Each forward op goes to the group of the innermost running
module that has one (see :func:`default_group_rules`: by type first, by the attribute path
otherwise), or to an explicit :meth:`WorkCounter.region` (which wins), or to ``"other"``
(inside the model, no group) / ``"outside_model"``. Each backward op goes to the group of
the forward op that created its autograd node (matched by the node's sequence number);
where there is no such node (gradient accumulation) it goes to the modules whose backward is
running, tracked with ``register_multi_grad_hook`` on module outputs and inputs (the scheme
of ``torch.utils.module_tracker.ModuleTracker``, which only exposes names, while the groups
are decided on the module objects). The backward of a custom ``autograd.Function`` (whose
forward runs without recording) goes to the group of the first op of its forward. The seed
gradient of ``backward()`` is made outside the backward pass (group ``outside_model``).
Phases: ``forward``, ``backward`` and ``optimizer`` (the optimizer group's ops).

**saved activations** (training): the bytes of the distinct tensor storages autograd saves
for the backward pass during the forward (``torch.autograd.graph.saved_tensors_hooks``;
parameters and their views excluded, a storage saved by several ops counted once, for the
group that saved it first). They are all alive at the end of the forward, so their sum is the
activation memory a training step holds at its peak, before the backward frees them.

**peak memory** (:meth:`WorkCounter.memory`): the largest sum, after any op, of the bytes of
the distinct tensor storages alive on the counted device: those alive when the counter is
entered (found by a scan of the garbage collector's objects: parameters, gradients, optimizer
state, inputs, caches) plus those the ops inside make, each freed when its storage is (a
weak reference to the storage). This is what ``torch.cuda.max_memory_allocated`` reports for
the same program, at op granularity and without the allocator's rounding or the workspaces
kernels allocate internally; it is reported with what was alive at that moment, by who made
it (before the step: parameters, gradients, optimizer state, other; during it: the phase and
group of the op that allocated it).

The counts do not depend on the device load or speed (they are deterministic for a given
program, shapes and dtypes).
"""
import bisect
import contextlib
import gc
import math
import re
import weakref
from collections import Counter, defaultdict
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn
from torch.autograd.graph import register_multi_grad_hook
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from ..utils import same_device

# the autograd sequence counter (torch >= 2.4 has it; without it backward ops are attributed by
# the module hooks alone)
_sequence_nr = getattr(getattr(torch._C, "_autograd", None), "_get_sequence_nr", None)

# Named groups of the CAT-Seg step, in report order.
GROUPS = (
    "clip_image",  # CLIP image tower (patch embedding, transformer blocks, dense last block)
    "clip_text",  # CLIP text tower (class-name embeddings; cached at inference)
    "cost_volume",  # cosine cost volume, class selection, cost embedding (the aggregator outside its blocks)
    "guidance",  # appearance / text / decoder guidance projections and upsampling
    "spatial_blocks",  # per-class Swin blocks
    "class_blocks",  # class-attention blocks
    "decoder",  # cost decoder (up-blocks)
    "pre_post_processing",  # meta-architecture outside the above: normalisation, crops, window merge, loss
    "optimizer",  # training: the optimizer step and zero_grad
    "other",  # inside the model but in no group above
    "outside_model",  # outside every module (e.g. the sum of the losses)
)

def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                  **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode has formulas for the CUDA attention kernels only: the CPU kernel's (every
# attention of the model on a CPU) would count 0 FLOPs, which made the counts device-dependent
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}

# aten ops that allocate without touching the data
_ALLOCATIONS = frozenset({
    "aten::empty", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided", "aten::resize_",
    "aten::set_", "aten::empty_like", "aten::empty_permuted",
})
# factories whose tensor argument only gives the shape, dtype and device: written, not read
_TEMPLATE_FACTORIES = frozenset({
    "aten::zeros_like", "aten::ones_like", "aten::full_like", "aten::rand_like", "aten::randn_like",
    "aten::randint_like", "aten::new_zeros", "aten::new_ones", "aten::new_full",
})
# in-place ops that change only the view's metadata (no kernel, no data)
_INPLACE_VIEWS = frozenset({
    "aten::unsqueeze_", "aten::squeeze_", "aten::t_", "aten::transpose_", "aten::as_strided_",
    "aten::swapdims_", "aten::swapaxes_",
})
# mutating ops that only write their ``self`` argument
_WRITE_ONLY_SELF = frozenset({
    "aten::copy_", "aten::fill_", "aten::zero_", "aten::normal_", "aten::uniform_", "aten::bernoulli_",
    "aten::random_", "aten::exponential_", "aten::index_fill_", "aten::masked_fill_",
})
# in-place indexed writes ``self[indices] = values`` (``accumulate``: ``+=``): they write (and,
# accumulating, read) only the indexed region of ``self``, not all of it
_INDEXED_WRITES = frozenset({"aten::index_put_", "aten::_index_put_impl_"})
# fused optimizer steps: their schema marks the gradients mutated because with ``grad_scale``
# (a gradient scaler's factor) they unscale them in place; without it they only read them
_FUSED_OPTIMIZER_STEPS = frozenset({"aten::_fused_adamw_", "aten::_fused_adam_", "aten::_fused_sgd_",
                                    "aten::_fused_adagrad_"})
# metadata queries and dtype rules (no kernel)
_METADATA = frozenset({
    "aten::size", "aten::sym_size", "aten::stride", "aten::sym_stride", "aten::dim", "aten::numel",
    "aten::sym_numel", "aten::is_contiguous", "aten::sym_is_contiguous", "aten::storage_offset",
    "aten::sym_storage_offset", "aten::is_strides_like_format", "aten::is_non_overlapping_and_dense",
    "aten::promote_types", "aten::result_type", "aten::can_cast",
})
# ops returning an alias of an input whose schema does not say so
_UNANNOTATED_VIEWS = frozenset({"aten::_unsafe_view", "aten::lift_fresh"})


def _tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements ``t`` addresses (broadcast dims once), capped by its storage."""
    if t.numel() == 0:
        return 0
    elements = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            elements *= size
    nbytes = elements * t.element_size()
    try:
        available = t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
    except (RuntimeError, NotImplementedError):  # tensors without storage (some subclasses)
        return nbytes
    return min(nbytes, max(available, 0))


def _indexed_write_bytes(args, kwargs) -> Tuple[int, int]:
    """``(read, written)`` bytes of ``self[indices] = values`` (``index_put_``): the indices and
    the values are read, the indexed region of ``self`` is written (and read when accumulating).
    The region is the indexed shape: the broadcast index shape, then the dimensions of ``self``
    after the indexed ones."""
    names = ("self", "indices", "values", "accumulate")
    bound = dict(zip(names, args), **kwargs)
    target, indices, values = bound["self"], bound["indices"], bound["values"]
    indices = list(indices)
    index_tensors = [i for i in indices if i is not None]
    # a boolean mask covers as many dimensions as it has and selects its True elements; an
    # integer index covers one; None (a full slice) covers one dimension whole
    covered, sliced, index_shapes = 0, 1, []
    for index in indices:
        if index is None:
            sliced *= target.shape[covered]
            covered += 1
        elif index.dtype in (torch.bool, torch.uint8):
            index_shapes.append((int(index.count_nonzero()),))
            covered += index.dim()
        else:
            index_shapes.append(tuple(index.shape))
            covered += 1
    index_shape = torch.broadcast_shapes(*index_shapes) if index_shapes else ()
    region = target.dtype.itemsize * math.prod(index_shape) * sliced * math.prod(target.shape[covered:])
    read = _tensor_bytes(values) + sum(_tensor_bytes(i) for i in index_tensors)
    if bound.get("accumulate", False):
        read += region
    return read, region


def _storage_bytes(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


def _storage_key(t: torch.Tensor) -> Optional[Tuple[str, int, int]]:
    """``(device type, device index, data pointer)``: the identity of ``t``'s storage, None for
    tensors without one (meta, fake and some subclasses)."""
    if t.is_meta:
        return None
    try:
        storage = t.untyped_storage()
        if storage.device.type == "meta":  # fake tensors (left over from tracing)
            return None
        return t.device.type, t.device.index or 0, storage.data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


def _tensor_key(t: torch.Tensor):
    """Identity of the memory a tensor argument addresses (the same tensor passed twice is read once)."""
    storage = _storage_key(t)
    if storage is None:
        return id(t)
    return (storage, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


class _OpKind:
    """Per-op-overload facts from the schema: view (0 bytes, no kernel), allocation, mutated arguments."""

    __slots__ = ("name", "view", "allocation", "written_args", "write_only_args")

    def __init__(self, func):
        schema = func._schema
        self.name = schema.name
        self.allocation = self.name in _ALLOCATIONS
        written, write_only = set(), set()
        for i, arg in enumerate(schema.arguments):
            info = arg.alias_info
            if info is not None and info.is_write:
                written.add(arg.name)
                if arg.kwarg_only or (i == 0 and self.name in _WRITE_ONLY_SELF):
                    write_only.add(arg.name)
        self.written_args = frozenset(written)
        self.write_only_args = frozenset(write_only)
        aliased_returns = [r.alias_info is not None and not r.alias_info.is_write for r in schema.returns]
        self.view = bool(not written and schema.returns and all(aliased_returns)) or self.name in _UNANNOTATED_VIEWS
        self.view = self.view or self.name in _METADATA or self.name in _INPLACE_VIEWS
        self.view = self.view or self.name.startswith(("prim::", "profiler::"))  # no kernels: prim ops, profiler ranges


class _Tally:
    __slots__ = ("flops", "bytes_read", "bytes_written", "ops")

    def __init__(self):
        self.flops = self.bytes_read = self.bytes_written = self.ops = 0

    def as_dict(self) -> Dict[str, int]:
        return {"flops": self.flops, "bytes": self.bytes_read + self.bytes_written, "bytes_read": self.bytes_read,
                "bytes_written": self.bytes_written, "ops": self.ops}


class _LiveMemory:
    """Bytes of the tensor storages alive on one device, their peak and what made them.

    A storage is registered once (by device and data pointer) with a label and forgotten
    when it is freed (a weak reference to the storage: CPython frees it, and calls back, as
    soon as its last tensor goes). Storages of other devices and meta tensors are ignored.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.live = 0
        self.peak = 0
        self.before = 0
        self.peak_at: Dict[str, str] = {}
        self._by_label: Counter = Counter()
        self.peak_by_label: Dict[str, int] = {}
        self._entries: Dict[Tuple[str, int, int], Tuple[object, int, str]] = {}

    def add(self, t: torch.Tensor, label: str) -> None:
        """Register ``t``'s storage under ``label`` unless it is known already."""
        key = _storage_key(t) if same_device(t.device, self.device) else None
        if key is None or key in self._entries:
            return
        storage = t.untyped_storage()
        nbytes = storage.nbytes()
        if nbytes == 0:
            return
        ref = weakref.ref(storage, lambda _ref, key=key: self._free(key))
        self._entries[key] = (ref, nbytes, label)
        self.live += nbytes
        self._by_label[label] += nbytes

    def _free(self, key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.live -= entry[1]
            self._by_label[entry[2]] -= entry[1]

    def scan(self, labels: Dict[Tuple[str, int, int], str]) -> None:
        """Register every tensor the garbage collector knows (alive before the step), labelled
        by ``labels`` (storage key -> label), ``other`` otherwise."""
        gc.collect()  # unreachable tensors are not alive
        for obj in gc.get_objects():
            # type(), not isinstance(): some deprecated objects warn when asked their __class__
            if issubclass(type(obj), torch.Tensor) and same_device(obj.device, self.device):
                self.add(obj, labels.get(_storage_key(obj), "before: other"))
        self.before = self.live
        self.update_peak({})

    def update_peak(self, where: Dict[str, str]) -> None:
        if self.live > self.peak:
            self.peak = self.live
            self.peak_at = where
            self.peak_by_label = {k: v for k, v in self._by_label.items() if v}

    def report(self) -> Dict[str, object]:
        return {
            "device": str(self.device),
            "peak_bytes": self.peak,
            "before_step_bytes": self.before,
            "end_bytes": self.live,
            "peak_at": dict(self.peak_at),
            "live_at_peak": dict(sorted(self.peak_by_label.items(), key=lambda kv: -kv[1])),
        }


class WorkCounter(TorchDispatchMode):
    """Count FLOPs, bytes read + written and ops of everything run inside, per group.

    Args:
        root: the model whose modules are grouped (None: every op goes to ``outside_model``
            or to an explicit :meth:`region`).
        rules: ``[(group, predicate(module, path) -> bool)]``, the first match decides a
            module's group (default: :func:`default_group_rules` of ``root``).
        memory_device: the device whose live storages :meth:`memory` follows (default: that
            of ``root``'s first parameter, else the CPU).
        before_step: labelled tensors alive before the step, e.g. ``{"optimizer state":
            [...]}``, for the breakdown of :meth:`memory` (``root``'s parameters and their
            gradients are labelled ``parameters`` / ``gradients`` without being listed).

    Usage::

        with WorkCounter(model) as counter:
            model(inputs)
        counter.totals()   # {"flops", "bytes", "bytes_read", "bytes_written", "bytes_storage", "ops", "views"}
        counter.groups()   # {group: {"flops", "bytes", "bytes_read", "bytes_written", "ops"}}

    Not reentrant; one counter at a time (it registers global module hooks).
    """

    def __init__(self, root: Optional[nn.Module] = None, rules=None, memory_device=None,
                 before_step: Optional[Dict[str, Iterable[torch.Tensor]]] = None):
        super().__init__()
        params = list(root.parameters()) if root is not None else []
        if memory_device is None:
            memory_device = params[0].device if params else torch.device("cpu")
        self._memory = _LiveMemory(memory_device)
        labelled = {"parameters": params, "gradients": [p.grad for p in params if p.grad is not None]}
        labelled.update(before_step or {})
        self._before_labels = {}
        for label, tensors in labelled.items():
            for t in tensors:
                key = _storage_key(t) if isinstance(t, torch.Tensor) else None
                if key is not None:
                    self._before_labels.setdefault(key, f"before: {label}")
        self._kinds: Dict[object, _OpKind] = {}
        self._tallies: Dict[str, _Tally] = defaultdict(_Tally)
        self._phase_tallies: Dict[str, _Tally] = defaultdict(_Tally)
        self._per_op: Counter = Counter()
        self.bytes_storage = 0
        self.views = 0
        self._module_group: Dict[nn.Module, Tuple[int, str]] = {}
        if root is not None:
            rules = default_group_rules(root) if rules is None else rules
            for path, module in root.named_modules():
                depth = path.count(".") + 1 if path else 0
                group = next((g for g, match in rules if match(module, path)), None)
                self._module_group[module] = (depth, group)  # None: inherits the enclosing module's
        self._active_fw: Counter = Counter()
        self._active_bw: Counter = Counter()
        self._regions: List[str] = []
        self._grad_hooks = []
        self._hooks = []
        self._bw_callback_queued = False
        self._flops: Optional[FlopCounterMode] = None
        # forward ops in order: the autograd sequence number after each, and its group
        self._seq_after: List[int] = []
        self._seq_group: List[str] = []
        # storages saved for backward: storage key -> (group, bytes); the tensors are kept
        # alive by autograd until the backward, so their keys cannot be reused meanwhile
        self._saved: Dict[Tuple[str, int, int], Tuple[str, int]] = {}
        self._saved_hooks = None

    # ------------------------------------------------------------------ attribution
    def current_group(self) -> str:
        if self._regions:
            return self._regions[-1]
        best, inside = None, False
        for active in (self._active_fw, self._active_bw):
            for module, count in active.items():
                entry = self._module_group.get(module)
                if count > 0 and entry is not None:
                    inside = True
                    if entry[1] is not None and (best is None or entry[0] > best[0]):
                        best = entry
        if best is not None:
            return best[1]
        return "other" if inside else "outside_model"

    @contextlib.contextmanager
    def region(self, group: str):
        """Attribute everything run inside to ``group`` (overrides the module groups)."""
        self._regions.append(group)
        try:
            yield
        finally:
            self._regions.pop()

    @contextlib.contextmanager
    def regions(self, regions: Iterable[Tuple[object, str, str]]):
        """For each ``(object, attribute, group)``, wrap the callable ``object.attribute`` for
        the duration so that what it runs is attributed to ``group`` (work done by plain
        callables rather than modules, e.g. a text encoder object)."""
        restore = []
        try:
            for obj, attr, group in regions:
                original = getattr(obj, attr)

                def wrapped(*args, _original=original, _group=group, **kwargs):
                    with self.region(_group):
                        return _original(*args, **kwargs)

                setattr(obj, attr, wrapped)
                restore.append((obj, attr, original))
            yield self
        finally:
            for obj, attr, original in reversed(restore):
                setattr(obj, attr, original)

    def _enter(self, active: Counter, module):
        active[module] += 1

    def _leave(self, active: Counter, module):
        if active[module] > 0:
            active[module] -= 1

    def _fw_pre(self, module, args):
        if module not in self._module_group:
            return
        self._enter(self._active_fw, module)
        # (only while gradients are recorded: under no_grad a view of a parameter says
        # requires_grad but has no gradient function to hook)
        tensors = [a for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor) and a.requires_grad]
        if tensors and torch.is_grad_enabled():  # backward: the module is done when the gradients of its inputs are
            self._grad_hooks.append(register_multi_grad_hook(tensors, lambda _: self._leave(self._active_bw, module)))

    def _fw_post(self, module, args, output):
        if module not in self._module_group:
            return
        self._leave(self._active_fw, module)
        tensors = [a for a in tree_flatten(output)[0] if isinstance(a, torch.Tensor) and a.requires_grad]
        if tensors and torch.is_grad_enabled():  # backward: the module starts when the gradients of its outputs are there
            self._grad_hooks.append(register_multi_grad_hook(tensors, lambda _: self._bw_enter(module)))

    def _bw_enter(self, module):
        if not self._bw_callback_queued:
            self._bw_callback_queued = True

            def reset():  # modules whose inputs need no gradient are never left: clear at the end
                self._active_bw.clear()
                self._bw_callback_queued = False

            torch.autograd.Variable._execution_engine.queue_callback(reset)
        self._enter(self._active_bw, module)

    def _pack_saved(self, tensor: torch.Tensor) -> torch.Tensor:
        """Record a tensor saved for backward during the forward pass (activation
        checkpointing's inputs are saved this way too; what its recomputation saves in the
        backward pass is not recorded)."""
        in_backward = torch._C._current_autograd_node() is not None
        base = tensor._base if tensor._base is not None else tensor  # a parameter's view (W.t()) is the parameter
        if not in_backward and not (base.is_leaf and base.requires_grad):
            key = _storage_key(tensor)
            if key is not None and key not in self._saved:
                self._saved[key] = (self.current_group(), tensor.untyped_storage().nbytes())
        return tensor

    # ------------------------------------------------------------------ context
    def __enter__(self):
        self._memory.scan(self._before_labels)
        self._hooks = [register_module_forward_pre_hook(self._fw_pre), register_module_forward_hook(self._fw_post)]
        self._flops = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
        self._flops.__enter__()
        self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(self._pack_saved, lambda tensor: tensor)
        self._saved_hooks.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        result = super().__exit__(*exc)
        self._saved_hooks.__exit__(*exc)
        self._flops.__exit__(*exc)
        for handle in self._hooks + self._grad_hooks:
            handle.remove()
        self._hooks, self._grad_hooks = [], []
        return result

    def _group_of_op(self, backward: bool) -> str:
        """The group of the op being dispatched. A backward op goes to the group of the forward
        op that made its autograd node (the node's sequence number); where that is unknown
        (the seed of the backward pass, gradient accumulation, torch without the sequence
        counter), to the modules whose backward is running (module hooks)."""
        if backward and self._seq_after and not self._regions:
            node = torch._C._current_autograd_node()
            if node is not None:
                i = bisect.bisect_right(self._seq_after, node._sequence_nr())
                if i < len(self._seq_after):
                    return self._seq_group[i]
        return self.current_group()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = self._kinds.get(func)
        if kind is None:
            kind = self._kinds[func] = _OpKind(func)
        backward = torch._C._current_graph_task_id() != -1
        group = self._group_of_op(backward)
        if not backward and _sequence_nr is not None:
            # autograd made this op's node (if any) before dispatching here: its sequence
            # number is below the counter now, above the one of the previous op. Ops run
            # without recording are listed too: those of a custom autograd.Function's forward
            # follow the Function's node, whose backward is theirs (an op that makes no node
            # repeats the number, which the lookup's bisect_right passes over)
            self._seq_after.append(_sequence_nr())
            self._seq_group.append(group)
        flops_before = self._flops.get_total_flops()
        out = func(*args, **kwargs)  # the FlopCounterMode below counts it
        if not kind.view:
            label = f"{group} backward" if backward else group
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self._memory.add(t, label)  # known storages (mutated arguments) are skipped
            self._memory.update_peak({"phase": "backward" if backward else "forward", "group": group,
                                      "op": kind.name})
        self_copy = kind.name == "aten::copy_" and _tensor_key(args[0]) == _tensor_key(args[1])
        if kind.view or kind.allocation or self_copy:
            self.views += kind.view
            return out
        flops = self._flops.get_total_flops() - flops_before
        if kind.name in _INDEXED_WRITES:
            read, written = _indexed_write_bytes(args, kwargs)
            self._tally(group, backward, kind.name, flops, read, written)
            self.bytes_storage += read + written
            return out
        read = written = storage = 0
        seen = set()
        written_keys = set()
        written_args = kind.written_args
        if kind.name in _FUSED_OPTIMIZER_STEPS and kwargs.get("grad_scale") is None:
            written_args = written_args - {"grads"}
        schema_args = [] if kind.name in _TEMPLATE_FACTORIES else func._schema.arguments
        for i, arg in enumerate(schema_args):
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            tensors = [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
            for t in tensors:
                key = _tensor_key(t)
                nbytes = _tensor_bytes(t)
                if arg.name in written_args:
                    if key not in written_keys:
                        written_keys.add(key)
                        written += nbytes
                        storage += _storage_bytes(t)
                    if arg.name in kind.write_only_args:
                        continue
                if key not in seen:
                    seen.add(key)
                    read += nbytes
                    storage += _storage_bytes(t)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                key = _tensor_key(t)
                if key not in written_keys:
                    written_keys.add(key)
                    written += _tensor_bytes(t)
                    storage += _storage_bytes(t)
        self._tally(group, backward, kind.name, flops, read, written)
        self.bytes_storage += storage
        return out

    def _tally(self, group: str, backward: bool, name: str, flops: int, read: int, written: int):
        phase = "backward" if backward else "optimizer" if group == "optimizer" else "forward"
        for tally in (self._tallies[group], self._phase_tallies[phase]):
            tally.flops += flops
            tally.bytes_read += read
            tally.bytes_written += written
            tally.ops += 1
        self._per_op[(group, phase, name)] += 1

    # ------------------------------------------------------------------ results
    def totals(self) -> Dict[str, int]:
        """``flops``, ``bytes`` (= read + written), ``bytes_read``, ``bytes_written``, ``ops``,
        plus ``bytes_storage`` and ``views`` (see the module docstring); ``flops`` equals
        ``FlopCounterMode.get_total_flops()`` of the same run."""
        total = _Tally()
        for tally in self._tallies.values():
            total.flops += tally.flops
            total.bytes_read += tally.bytes_read
            total.bytes_written += tally.bytes_written
            total.ops += tally.ops
        out = total.as_dict()
        out["flops_flop_counter"] = self._flops.get_total_flops() if self._flops is not None else 0
        out["bytes_storage"] = self.bytes_storage
        out["views"] = self.views
        return out

    def groups(self) -> Dict[str, Dict[str, int]]:
        """Per group (the non-empty ones of :data:`GROUPS`, then any region name), the counts."""
        order = list(GROUPS) + sorted(set(self._tallies) - set(GROUPS))
        return {g: self._tallies[g].as_dict() for g in order if g in self._tallies}

    def saved_activations(self) -> Dict[str, int]:
        """Bytes saved for the backward pass per group (non-empty groups, :data:`GROUPS`
        order) and ``total`` (see the module docstring); empty without gradients."""
        per_group: Counter = Counter()
        for group, nbytes in self._saved.values():
            per_group[group] += nbytes
        order = list(GROUPS) + sorted(set(per_group) - set(GROUPS))
        out = {g: per_group[g] for g in order if per_group[g]}
        if out:
            out["total"] = sum(per_group.values())
        return out

    def memory(self) -> Dict[str, object]:
        """Peak of the live tensor storages on the counted device (see the module docstring):
        ``device``, ``peak_bytes``, ``before_step_bytes`` (alive when the counter was
        entered), ``end_bytes``, ``peak_at`` (``phase``, ``group``, ``op`` of the op after which
        the peak was reached) and ``live_at_peak`` (bytes per label, largest first: ``before:
        parameters`` / ``gradients`` / ``other`` / the ``before_step`` labels, then the group
        that allocated it, ``<group> backward`` for the backward pass)."""
        return self._memory.report()

    def phases(self) -> Dict[str, Dict[str, int]]:
        """``forward`` / ``backward`` totals."""
        return {p: t.as_dict() for p, t in sorted(self._phase_tallies.items())}

    def top_ops(self, n: int = 15, group: Optional[str] = None, phase: Optional[str] = None) -> List[Tuple[str, int]]:
        """The ``n`` most frequent computing ops (aten name, count), of one group and/or phase
        (``forward``/``backward``) if given."""
        counts: Counter = Counter()
        for (g, p, name), c in self._per_op.items():
            if (group is None or g == group) and (phase is None or p == phase):
                counts[name] += c
        return counts.most_common(n)


# ---------------------------------------------------------------------------- group rules
def _types(*names: str) -> Tuple[type, ...]:
    """Classes ``module:Class`` that exist (missing modules or classes are skipped, so a
    renamed class falls back to the path rules instead of breaking the count)."""
    import importlib

    found = []
    for name in names:
        module_name, _, cls = name.partition(":")
        try:
            found.append(getattr(importlib.import_module(module_name), cls))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _path(pattern: str) -> Callable[[nn.Module, str], bool]:
    regex = re.compile(pattern)
    return lambda module, path: bool(regex.search(path))


def _is(types: Tuple[type, ...]) -> Callable[[nn.Module, str], bool]:
    return lambda module, path: bool(types) and isinstance(module, types)


def _clip_parts(root: nn.Module, clip_types: Tuple[type, ...]):
    """Predicates for the image and the text tower of the open_clip CLIP models inside
    ``root``: a CLIP model's ``visual`` subtree is its image tower, the rest of it the text
    tower (open_clip's own layout)."""
    image, text = set(), set()
    for m in root.modules():
        if clip_types and isinstance(m, clip_types):
            visual = getattr(m, "visual", None)
            vis = {id(v) for v in visual.modules()} if isinstance(visual, nn.Module) else set()
            image.update(vis)
            text.update(id(x) for x in m.modules() if id(x) not in vis)
    return (lambda module, path: id(module) in image), (lambda module, path: id(module) in text)


def default_group_rules(root: nn.Module):
    """The CAT-Seg module groups of ``root``'s modules, first match wins: by type where the
    class exists, by the module path (attribute names) otherwise. Decided once per module
    when the counter is made."""
    clip_roots = _types("open_clip.model:CLIP", "open_clip.model:CustomTextCLIP")
    is_image, is_text = _clip_parts(root, clip_roots)
    backbone = _types("cat_seg.modeling.backbone.clip_vit:CLIPVisionBackbone")
    spatial = _types("cat_seg.modeling.spatial_aggregation:SpatialAggregation",
                     "cat_seg.modeling.spatial_aggregation:SwinBlock")
    classes = _types("cat_seg.modeling.class_aggregation:ClassAggregation")
    decoder = _types("cat_seg.modeling.decoder:CostDecoder", "cat_seg.modeling.decoder:UpBlock")
    aggregator = _types("cat_seg.modeling.aggregator:Aggregator")
    meta = _types("cat_seg.modeling.meta_arch.cat_seg:CATSeg")
    return [
        ("clip_text", is_text),
        ("clip_image", is_image),
        ("clip_image", _is(backbone)),
        ("spatial_blocks", _is(spatial)),
        ("class_blocks", _is(classes)),
        ("decoder", _is(decoder)),
        ("guidance", _path(r"guidance")),
        ("clip_text", _path(r"(^|\.)(text(_tower|_model|_encoder)?|token_embedding|ln_final)(\.|$)")),
        ("clip_image", _path(r"(^|\.)(backbone|visual|image_encoder)(\.|$)")),
        ("spatial_blocks", _path(r"(^|\.)spatial")),
        ("class_blocks", _path(r"(^|\.)class")),
        ("decoder", _path(r"(^|\.)decoder(\.|$)")),
        ("cost_volume", _is(aggregator)),
        ("cost_volume", _path(r"(^|\.)(aggregator|cost)")),
        ("pre_post_processing", _is(meta)),
        ("pre_post_processing", lambda module, path: path == ""),
    ]


def format_table(groups: Dict[str, Dict[str, int]], totals: Dict[str, int]) -> str:
    """A Markdown table: group, GFLOP, GB moved (read + written), ops, share of the bytes."""
    rows = ["| group | GFLOP | GB moved | ops | share of bytes |", "|---|---|---|---|---|"]
    for name, g in list(groups.items()) + [("total", totals)]:
        share = g["bytes"] / totals["bytes"] if totals["bytes"] else 0.0
        rows.append(f"| {name} | {g['flops'] / 1e9:.1f} | {g['bytes'] / 1e9:.2f} | {g['ops']} | {share:.1%} |")
    return "\n".join(rows)


def count(fn: Callable[[], object], root: Optional[nn.Module] = None,
          regions: Iterable[Tuple[object, str, str]] = ()) -> WorkCounter:
    """Run ``fn()`` under a :class:`WorkCounter` of ``root`` (with :meth:`WorkCounter.regions`)
    and return the counter."""
    counter = WorkCounter(root)
    with counter.regions(regions), counter:
        fn()
    return counter
