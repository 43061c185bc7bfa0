#!/usr/bin/env python
"""Convert an official CAT-Seg checkpoint to the cat-seg layout.

    tools/convert_official_checkpoint.py IN.pth OUT.pth [--config-file CFG] [--verbose]

IN is an official checkpoint (``model_base.pth`` / ``model_large.pth``: a detectron2
``{"model": ...}`` file or a bare state dict); OUT gets ``{"model": converted,
"__author__": ..., "matching_heuristics": False}`` in our layout (written atomically).
Training extras of IN (optimizer, scheduler, iteration) are not copied. What was mapped,
dropped (and why) is printed. ``--config-file`` also checks that the result fits the model
of that config (e.g. ``configs/vitb_384.yaml`` for model_base.pth) before writing.

Converting is optional: ``MODEL.WEIGHTS model_base.pth`` loads official files directly.
Bad input gives one ``error: ...`` line and exit status 2.
"""
import argparse
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

from cat_seg.checkpoint.errors import CheckpointError, CheckpointFormatError, show_keys  # noqa: E402
from cat_seg.checkpoint.official import (  # noqa: E402
    OFFICIAL,
    OURS,
    convert_official_state_dict,
    read_checkpoint,
    unwrap_checkpoint,
)


def _model_state_of_config(config_file: str):
    """State dict (shapes) of the model built from ``config_file`` with random CLIP."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from cat_seg import add_cat_seg_config

    if not os.path.isfile(config_file):
        raise CheckpointFormatError(f"config file {config_file!r} not found")
    cfg = get_cfg()
    add_cat_seg_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS = "none"
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg).state_dict()


def convert_file(src: str, dst: str, config_file: str = "", verbose: bool = False) -> str:
    """Convert ``src`` to ``dst``; returns the report text. Raises :class:`CheckpointError`."""
    state, extras = unwrap_checkpoint(read_checkpoint(src), src)
    converted, report = convert_official_state_dict(state)
    if report.layout == OURS:
        raise CheckpointFormatError(f"{src} is already in the cat-seg layout: nothing to convert")
    if report.layout != OFFICIAL:
        raise CheckpointFormatError(
            f"{src} is not an official CAT-Seg checkpoint (no sem_seg_head.predictor.* / upsample1/2.* keys; "
            f"first keys: {', '.join(list(state)[:3])})"
        )
    if report.unknown:
        raise CheckpointFormatError(
            f"{src}: {len(report.unknown)} unknown official key(s): {show_keys(report.unknown)} (no conversion rule)"
        )
    if config_file:
        from cat_seg.checkpoint.catseg_checkpointer import check_state_dict_fits

        check_state_dict_fits(_model_state_of_config(config_file), converted, src, report)
    text = report.summary(verbose=verbose)
    ignored = [k for k in extras if k not in ("__author__", "matching_heuristics")]
    if ignored:
        text += f"\n  not copied (training state of the official run): {', '.join(ignored)}"
    out = {
        "model": converted,
        "__author__": f"cat-seg tools/convert_official_checkpoint.py from official CAT-Seg {os.path.basename(src)}",
        "matching_heuristics": False,
    }
    directory = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(directory):
        raise CheckpointFormatError(f"output directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(dst) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(out, f)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return text + f"\nwrote {dst}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", metavar="IN.pth", help="official CAT-Seg checkpoint")
    parser.add_argument("dst", metavar="OUT.pth", help="output checkpoint in the cat-seg layout")
    parser.add_argument("--config-file", default="", help="also check the result against this config's model")
    parser.add_argument("--verbose", action="store_true", help="list every mapped key")
    args = parser.parse_args(argv)
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        print("error: IN and OUT are the same file", file=sys.stderr)
        return 2
    try:
        print(convert_file(args.src, args.dst, args.config_file, args.verbose))
    except (CheckpointError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
