"""Convert an official CAT-Seg checkpoint to the cat-seg layout; the ``cat-seg-convert`` command.

    cat-seg-convert IN.pth OUT.pth [--config-file CFG] [--verbose] [--force]
    python tools/convert_official_checkpoint.py IN.pth OUT.pth ...   # the same

IN is an official checkpoint (``model_base.pth`` / ``model_large.pth``: a detectron2
``{"model": ...}`` file or a bare state dict, or a detectron2 ``.pkl`` of it); OUT gets ``{"model": converted,
"__author__": ..., "matching_heuristics": False}`` in our layout (written atomically). An
existing OUT is an error unless ``--force`` is given: swapped arguments (``model.pth
configs/vitb_384.yaml``) or a mistyped name must not destroy a config or another checkpoint.
Training extras of IN (optimizer, scheduler, iteration) are not copied. What was mapped,
dropped (and why) is printed. ``--config-file`` also checks that the result fits the model
of that config (e.g. ``configs/vitb_384.yaml`` for model_base.pth) before writing.

Converting is optional: ``MODEL.WEIGHTS model_base.pth`` loads official files directly.
Bad input gives one ``error: ...`` line and exit status 2.
"""
import argparse
import os
import sys

import torch

from cat_seg.checkpoint.errors import CheckpointError, CheckpointFormatError, show_keys
from cat_seg.checkpoint.official import (
    OFFICIAL,
    OURS,
    convert_official_state_dict,
    read_checkpoint,
    unwrap_checkpoint,
)
from cat_seg.utils import atomic_write

from .errors import ArgumentParser, UserError, run_main


def _model_of_config(config_file: str):
    """The model of ``config_file`` built on the meta device (shapes only, no memory), as the
    pre-launch checks build it (:func:`cat_seg.config.check_model_builds`); on the CPU where
    the meta build is not possible."""
    from detectron2.config import get_cfg

    from cat_seg import add_cat_seg_config
    from cat_seg.config import check_model_builds

    from .errors import merge_config

    try:
        cfg = merge_config(add_cat_seg_config(get_cfg()), config_file)
        model = check_model_builds(cfg)
    except (UserError, ValueError) as exc:
        raise CheckpointFormatError(str(exc)) from None
    if model is None:  # an operation a meta tensor cannot do: built for real (CPU, random CLIP)
        from detectron2.modeling import build_model

        cfg.MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS = "none"
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg)
    return model


def _read_source(src: str):
    """The checkpoint ``src`` as ``MODEL.WEIGHTS`` reads it: a torch file, or a detectron2
    ``.pkl`` (numpy arrays, made tensors); a released name or a URL is refused with what to do
    (the converter reads local official files)."""
    if not os.path.exists(src):
        from cat_seg.hub import get_released

        if get_released(src) is not None:
            raise CheckpointFormatError(f"{src} names a released official checkpoint, which MODEL.WEIGHTS {src} "
                                        "downloads and loads as it is (converted on loading): nothing to convert")
        if "://" in src:
            raise CheckpointFormatError(f"the converter reads local files: download {src} first")
    if not src.endswith(".pkl"):
        return read_checkpoint(src)
    from cat_seg.checkpoint.catseg_checkpointer import CATSegCheckpointer, check_exact_keys

    checkpointer = CATSegCheckpointer(torch.nn.Module())
    loaded = checkpointer._load_file(src)  # detectron2's reading of a .pkl, one-line errors
    check_exact_keys(loaded, src)
    if isinstance(loaded.get("model"), dict):
        loaded = {**loaded, "model": dict(loaded["model"])}
        checkpointer._convert_ndarray_to_tensor(loaded["model"])
    return loaded


def convert_file(src: str, dst: str, config_file: str = "", verbose: bool = False, force: bool = False) -> str:
    """Convert ``src`` to ``dst``; returns the report text. Raises :class:`CheckpointError`,
    also for an existing ``dst`` unless ``force`` (checked before ``src`` is read)."""
    if os.path.isdir(dst):
        raise CheckpointFormatError(f"OUT.pth {dst!r} is a directory; expected a file path "
                                    f"(e.g. {os.path.join(dst, 'model_converted.pth')})")
    # any existing file, a checkpoint too: `convert model_base.pth model_large.pth` would
    # otherwise replace the other official checkpoint (lexists: a dangling link is refused too)
    if os.path.lexists(dst) and not force:
        raise CheckpointFormatError(f"OUT.pth {dst!r} already exists; expected a new file path "
                                    f"(--force replaces it)")
    state, extras = unwrap_checkpoint(_read_source(src), src)
    converted, report = convert_official_state_dict(state)
    if report.layout == OURS:
        raise CheckpointFormatError(f"{src} is already in the cat-seg layout: nothing to convert")
    if report.layout != OFFICIAL:
        raise CheckpointFormatError(
            f"{src} is not an official CAT-Seg checkpoint (no sem_seg_head.predictor.clip_model.* / "
            f"sem_seg_head.predictor.transformer.* keys; "
            f"first keys: {', '.join(list(state)[:3])})"
        )
    if report.unknown:
        raise CheckpointFormatError(
            f"{src}: {len(report.unknown)} unknown official key(s): {show_keys(report.unknown)} (no conversion rule)"
        )
    if config_file:  # the check the checkpointer makes when it loads the file (new_modules included)
        from cat_seg.checkpoint.catseg_checkpointer import check_model_fits

        check_model_fits(_model_of_config(config_file), converted, src, report)
    text = report.summary(verbose=verbose)
    if not config_file:
        text += "\n  not checked against a model: --config-file CFG checks that every key the model needs is there"
    ignored = [k for k in extras if k not in ("__author__", "matching_heuristics")]
    if ignored:
        text += f"\n  not copied (training state of the official run): {', '.join(ignored)}"
    out = {
        "model": converted,
        "__author__": f"cat-seg convert_official_checkpoint from official CAT-Seg {os.path.basename(src)}",
        "matching_heuristics": False,
    }
    directory = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(directory):
        raise CheckpointFormatError(f"output directory {directory} does not exist")
    atomic_write(dst, lambda f: torch.save(out, f))  # the usual permissions; no partial OUT.pth
    return text + f"\nwrote {dst}"


def _main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", metavar="IN.pth", help="official CAT-Seg checkpoint")
    parser.add_argument("dst", metavar="OUT.pth", help="output checkpoint in the cat-seg layout")
    parser.add_argument("--config-file", default="", help="also check the result against this config's model")
    parser.add_argument("--verbose", action="store_true", help="list every mapped key")
    parser.add_argument("--force", action="store_true",
                        help="replace OUT.pth if it exists (without it an existing OUT.pth is an error, so that "
                             "swapped or mistyped arguments destroy no file)")
    args = parser.parse_args(argv)
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        raise UserError(f"IN and OUT are the same file ({args.src}); expected a different OUT.pth")
    try:
        print(convert_file(args.src, args.dst, args.config_file, args.verbose, args.force))
    except (CheckpointError, OSError, ValueError) as e:  # unreadable or unwritable files, bad contents
        raise UserError(str(e)) from None
    return 0


def main(argv=None) -> int:
    """``cat-seg-convert``: exit status 0, or 2 with one ``error: ...`` line for bad input."""
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
