"""detectron2 checkpointer for CAT-Seg models.

``CATSegCheckpointer`` is what ``train_net.py``, the demo and the Python API use for
``MODEL.WEIGHTS`` and for resuming. Compared with ``DetectionCheckpointer`` it

* accepts the released checkpoints by name (``catseg-vitb``, ``catseg-vitl``: downloaded once
  into the Hugging Face cache, see :mod:`cat_seg.hub`);
* reads official CAT-Seg checkpoints (``model_base.pth`` / ``model_large.pth``) directly:
  the official layout is detected and converted (:mod:`.official`), training extras of an
  official checkpoint (optimizer, scheduler, iteration, trainer) are ignored;
* is strict: any unknown official key, any model key the checkpoint lacks, any key the model
  does not have and any shape mismatch raise one :class:`CheckpointMismatchError` naming
  the keys, before anything is loaded (no parameter is ever left at random init silently);
* saves crash-safely (temporary file + rename for the checkpoint and ``last_checkpoint``);
* keeps detectron2's behaviour for our own checkpoints (optimizer / scheduler / trainer
  state and iteration are restored by ``resume_or_load(..., resume=True)``).
"""
import logging
import os
import re
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils import atomic_write, error_line, remove_temp_files
from .errors import CheckpointFormatError, CheckpointMismatchError, show_keys
from .official import (
    OFFICIAL,
    OURS,
    ConversionReport,
    convert_official_state_dict,
    detect_layout,
    read_checkpoint,
    strip_prefix,
)

logger = logging.getLogger(__name__)

ARCH_HINT = (
    "does the config match the checkpoint? CAT-Seg (B) model_base.pth: configs/vitb_384.yaml, "
    "(L) model_large.pth: configs/vitl_336.yaml; a model you trained: the config.yaml in its OUTPUT_DIR"
)


def describe_image_tower(state: Mapping[str, Any]) -> Optional[str]:
    """``"width 768, 12 blocks, patch 16"``: the CLIP image tower a state dict (our layout)
    holds, read from its tensors; ``None`` without one."""
    conv = next((v for k, v in state.items() if k.endswith("visual.conv1.weight")), None)
    if conv is None or getattr(conv, "ndim", 0) != 4:
        return None
    blocks = {int(m.group(1)) for k in state for m in [re.search(r"visual\.transformer\.resblocks\.(\d+)\.", k)] if m}
    return f"width {conv.shape[0]}, {len(blocks)} blocks, patch {conv.shape[-1]}"


class NewModuleKeys(NamedTuple):
    """The keys of a model's new modules (``new_modules``) that a checkpoint does not provide as
    they are: ``kept``, the model's tensors that keep their initialisation (not in the
    checkpoint, or there in another shape); ``skipped``, the checkpoint's tensors not loaded
    (another shape, or of a module the model replaced or removed)."""

    kept: List[str]
    skipped: List[str]


def new_module_prefixes(model: torch.nn.Module) -> List[str]:
    """The state-dict prefixes of the new modules of ``model`` and of every submodule: each
    module's ``new_modules`` attribute, relative to it (``("adapter",)`` on the head is
    ``sem_seg_head.adapter``), so that a registered head or backbone declares its own."""
    prefixes = []
    for name, module in model.named_modules():
        for prefix in getattr(module, "new_modules", ()) or ():
            prefixes.append(f"{name}.{prefix}" if name else str(prefix))
    return prefixes


def check_state_dict_fits(
    model_state: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
    source: str = "checkpoint",
    report: Optional[ConversionReport] = None,
    new_modules: Sequence[str] = (),
) -> List[str]:
    """Raise :class:`CheckpointMismatchError` unless ``state`` provides exactly the tensors of
    ``model_state`` (same keys, same shapes), apart from the keys of ``new_modules``: modules
    (state-dict key prefixes such as ``"sem_seg_head.adapter"``) that a model built on cat-seg
    adds, replaces or removes, whose tensors checkpoints lack, hold in another shape, or hold
    though the model has none. Returns those keys: the model's that keep their initialisation
    (lacking or of another shape in ``state``) and ``state``'s that are not to be loaded
    (another shape, or not in the model), as :class:`NewModuleKeys`.

    ``report`` (from the official-layout conversion) adds its unknown keys and lets
    unexpected keys name the official key they came from.
    """
    names = {prefix.rstrip(".") for prefix in new_modules}  # a module, or a parameter itself
    prefixes = tuple(name + "." for name in names)

    def is_new(key: str) -> bool:
        return key in names or key.startswith(prefixes)

    missing = set(model_state) - set(state)
    reshaped = {key for key in set(state) & set(model_state)
                if tuple(state[key].shape) != tuple(model_state[key].shape)}
    extra = set(state) - set(model_state)
    new = NewModuleKeys(kept=sorted(key for key in missing | reshaped if is_new(key)),
                        skipped=sorted(key for key in reshaped | extra if is_new(key)))
    missing -= set(new.kept)
    unexpected = []
    for key in extra - set(new.skipped):
        origin = report.source_of(key) if report is not None else None
        unexpected.append(f"{key} (from {origin})" if origin else key)
    wrong_shape = [(key, tuple(state[key].shape), tuple(model_state[key].shape))
                   for key in reshaped - set(new.skipped)]
    unknown = report.unknown if report is not None else []
    if missing or unexpected or wrong_shape or unknown:
        theirs, ours = describe_image_tower(state), describe_image_tower(model_state)
        architecture = (f"its CLIP image tower has {theirs}, the config's {ours}"
                        if theirs and ours and theirs != ours else "")
        hint = ARCH_HINT
        if missing and not (unexpected or wrong_shape or unknown):
            hint += ("; a model extended with modules its checkpoints lack names them in its new_modules attribute "
                     "(docs/architecture.md, 'Building on cat-seg')")
        raise CheckpointMismatchError(source, missing, unexpected, wrong_shape, unknown, hint=hint,
                                      architecture=architecture)
    return new


def check_exact_keys(checkpoint: Mapping[str, Any], source: str) -> None:
    """A :class:`CheckpointFormatError` for a loaded ``.pkl`` that detectron2 marks as
    model-zoo weights to match by name heuristics (``matching_heuristics``); a CAT-Seg
    checkpoint's keys are matched exactly."""
    if not checkpoint.get("matching_heuristics", False):
        return
    fix = "save {'model': state_dict} with torch.save as a .pth"
    if checkpoint.get("__author__") == "Caffe2":  # what detectron2 makes of a .pkl without "__author__"
        raise CheckpointFormatError(
            f"{source}: a .pkl without an '__author__' entry, which detectron2 reads as model-zoo weights matched "
            f"by name heuristics; CAT-Seg checkpoints are matched exactly: {fix}, or add '__author__' to the "
            "pickled dict")
    raise CheckpointFormatError(
        f"{source}: a .pkl with 'matching_heuristics': True (detectron2 model-zoo weights matched by name "
        f"heuristics); CAT-Seg checkpoints are matched exactly: {fix}, or set 'matching_heuristics' to False in "
        "the pickled dict")


def model_state_of(checkpoint: Mapping[str, Any], source: str, to_tensors=None):
    """The model state dict of a loaded checkpoint, in our layout: ``(state, report, ignored)``.

    ``checkpoint["model"]`` is an official CAT-Seg state dict (converted; ``ignored`` lists the
    checkpoint's other entries, the official run's training state) or ours (a ``module.``
    prefix of a DDP save is dropped). ``to_tensors`` (detectron2's in-place numpy -> tensor
    conversion of a ``.pkl``) is applied first. Raises :class:`CheckpointFormatError` for
    anything else."""
    check_exact_keys(checkpoint, source)
    state = checkpoint.get("model")
    if not isinstance(state, Mapping) or not state:
        raise CheckpointFormatError(f"{source}: 'model' is not a non-empty state dict")
    state = dict(state)
    if to_tensors is not None:
        to_tensors(state)
    state = strip_prefix(state)
    layout = detect_layout(state)
    if layout == OFFICIAL:
        state, report = convert_official_state_dict(state)
        return state, report, [key for key in checkpoint if key != "model"]
    if layout != OURS:
        keys = list(state)[:3]
        raise CheckpointFormatError(
            f"{source}: neither the official CAT-Seg layout (sem_seg_head.predictor.*, upsample1/2.*) "
            f"nor ours (backbone.*, sem_seg_head.aggregator.*); first keys: {', '.join(keys)}"
        )
    return state, ConversionReport(layout=OURS), []


def check_checkpoint_fits(model: torch.nn.Module, path: str) -> None:
    """Raise the error :meth:`CATSegCheckpointer.load` would raise for a checkpoint file whose
    tensors do not fit ``model`` (:class:`CheckpointMismatchError`), or that is not a CAT-Seg
    checkpoint (:class:`CheckpointFormatError`), without reading its tensors: the file is
    loaded onto the meta device (shapes and dtypes only, instantly for any size), and ``model``
    may be a meta-device build. So that a run, or each benchmark of ``eval.sh``, does not fail
    at the load after its set-up. A detectron2 ``.pkl`` (numpy arrays, no meta loading) is read
    as the load reads it."""
    if path.endswith(".pkl"):
        checkpointer = CATSegCheckpointer(model)
        loaded = checkpointer._load_file(path)  # detectron2's reading of a .pkl
        state, report, _ = model_state_of(loaded, path, checkpointer._convert_ndarray_to_tensor)
        check_model_fits(model, state, path, report)
        return
    try:
        loaded = torch.load(path, map_location="meta", weights_only=True)
    except Exception:  # not readable: read_checkpoint's one-line message
        loaded = read_checkpoint(path)
    if not isinstance(loaded, dict):
        raise CheckpointFormatError(f"{path} holds a {type(loaded).__name__}, not a checkpoint dict")
    state, report, _ = model_state_of(loaded if "model" in loaded else {"model": loaded}, path)
    check_model_fits(model, state, path, report)


def check_model_fits(model: torch.nn.Module, state: Mapping[str, Any], source: str,
                     report: Optional[ConversionReport] = None) -> NewModuleKeys:
    """:func:`check_state_dict_fits` of ``state`` against ``model``'s tensors, apart from the
    modules the model and its submodules name in their ``new_modules`` attributes (a model
    built on cat-seg: :func:`new_module_prefixes`). ``report``: :func:`model_state_of`'s."""
    return check_state_dict_fits(model.state_dict(), state, source, report, tuple(new_module_prefixes(model)))


class CATSegCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that also loads official CAT-Seg checkpoints, strictly.

    Use as any detectron2 checkpointer::

        CATSegCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)

    After a load, :attr:`last_report` holds the :class:`~cat_seg.checkpoint.official.ConversionReport`.
    """

    def __init__(self, model, save_dir: str = "", *, save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.last_report: Optional[ConversionReport] = None
        self._loading: str = "checkpoint"

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        if path:
            from ..hub import resolve_weights  # released names (catseg-vitb, ...) -> file in the hub cache

            path = resolve_weights(path)
            if not os.path.isfile(path):  # detectron2 asserts; and fetches what its PathManager knows (URLs)
                try:
                    local = self.path_manager.get_local_path(path)
                except Exception as e:  # iopath's handlers raise many types for a URL they cannot fetch
                    raise CheckpointFormatError(f"cannot fetch checkpoint {path}: {error_line(e)}") from None
                if not os.path.isfile(local):
                    what = "is a directory, not a checkpoint file" if os.path.isdir(local) else "not found"
                    raise CheckpointFormatError(f"checkpoint {path} {what}")
        self._loading = path or "checkpoint"
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        """detectron2's reading, with a one-line :class:`CheckpointFormatError` for a ``.pkl``
        file it cannot unpickle (other files: :meth:`_torch_load`)."""
        if not filename.endswith(".pkl"):
            return super()._load_file(filename)
        try:
            return super()._load_file(filename)
        except Exception as e:  # unpickling garbage raises many types (UnpicklingError, EOFError, ValueError, ...)
            raise CheckpointFormatError(f"{filename} is not a readable detectron2 .pkl checkpoint "
                                        f"({error_line(e, limit=200)})") from None

    def load_state(self, checkpoint: Mapping[str, Any], source: str = "state dict") -> ConversionReport:
        """Load model weights from an in-memory checkpoint (``{"model": ...}`` or a bare state
        dict, official or our layout) with the same conversion and checks as :meth:`load`.
        Non-model entries are ignored. Returns the conversion report."""
        state = checkpoint["model"] if isinstance(checkpoint.get("model"), Mapping) else checkpoint
        self._loading = source
        self._load_model({"model": dict(state)})
        return self.last_report

    def _torch_load(self, f: str) -> Dict[str, Any]:
        """``torch.load`` with ``weights_only`` and one-line errors (non-``.pkl`` files)."""
        loaded = read_checkpoint(f)
        if not isinstance(loaded, dict):
            raise CheckpointFormatError(f"{f} holds a {type(loaded).__name__}, not a checkpoint dict")
        return loaded

    def _load_model(self, checkpoint: Dict[str, Any]):
        source = self._loading
        state, report, ignored = model_state_of(checkpoint, source, self._convert_ndarray_to_tensor)
        layout = report.layout
        if layout == OFFICIAL:
            for key in ignored:  # training state of the official run: not ours to resume
                checkpoint.pop(key)
            logger.info(f"{source}: official CAT-Seg checkpoint\n{report.summary()}"
                        + (f"\n  ignored non-model entries: {', '.join(ignored)}" if ignored else ""))
        self.last_report = report
        new = check_model_fits(self.model, state, source, report)
        if new.kept or new.skipped:
            modules = ", ".join(new_module_prefixes(self.model))
            message = f"{source}: new modules {modules}: " + "; ".join(part for part in (
                f"{len(new.kept)} tensor(s) keep their initialisation ({show_keys(new.kept)})" if new.kept else "",
                f"{len(new.skipped)} of the checkpoint's are not loaded ({show_keys(new.skipped)})" if new.skipped
                else "") if part)
            if new.skipped:  # the checkpoint holds tensors of these modules that do not fit: said louder
                logger.warning(message + " (expected for weights from before these modules; a checkpoint trained "
                               "with them was trained with other options than this config's: set them as in "
                               "training)")
            else:  # a checkpoint from before the modules: what new_modules is for
                logger.info(message)
        skipped = set(new.skipped)
        checkpoint["model"] = {key: value for key, value in state.items() if key not in skipped}
        incompatible = super()._load_model(checkpoint)
        left_new = set(new.kept)
        # check_state_dict_fits guarantees this; keep the invariant explicit.
        assert not (set(incompatible.missing_keys) - left_new or incompatible.unexpected_keys
                    or incompatible.incorrect_shapes)
        incompatible.missing_keys.clear()  # those of the new modules: said above, not warned about again
        return incompatible


    # ------------------------------------------------------------------ crash-safe saving
    def save(self, name: str, **kwargs: Any) -> None:
        """Like detectron2's ``save``, but written to a temporary name and renamed, so a
        process killed while saving leaves no half-written checkpoint (and ``last_checkpoint``
        keeps pointing at the previous complete one)."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f), mode="wb")
        self.tag_last_checkpoint(basename)

    def remove_interrupted_saves(self) -> List[str]:
        """Delete the temporary files of saves a killed process left in ``save_dir`` (a
        checkpoint's can be hundreds of MB); those of processes still running here are kept.
        Returns the paths deleted."""
        if not self.save_dir or not self.save_to_disk:
            return []
        removed = remove_temp_files(
            self.save_dir, names=lambda name: name.endswith(".pth") or name == "last_checkpoint", keep_running=True
        )
        for path in removed:
            self.logger.info(f"Removed {path}, left by a save that was interrupted")
        return removed

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"), lambda f: f.write(last_filename_basename), mode="w"
        )

