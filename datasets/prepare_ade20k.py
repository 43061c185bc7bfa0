#!/usr/bin/env python
"""Prepare ADE20K-150 and ADE20K-847 validation labels for detectron2.

Run `python datasets/prepare_ade20k.py --help` for the options; docs/datasets.md describes the
downloads, the resulting layout and the expected file counts. The conversion itself lives in
`cat_seg/data/prepare/ade20k.py`.
"""
import sys
import warnings

# importing detectron2 (dataset registration) imports torch, which warns about TorchScript
warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")

from cat_seg.data.prepare import ade20k, cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli.run(ade20k.main))
