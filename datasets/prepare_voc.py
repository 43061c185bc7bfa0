#!/usr/bin/env python
"""Prepare Pascal VOC 2012 (VOC-20, VOC-20b) and Pascal Context (59, 459) validation labels for detectron2.

Run `python datasets/prepare_voc.py --help` for the options; docs/datasets.md describes the
downloads, the resulting layout and the expected file counts. The conversion itself lives in
`cat_seg/data/prepare/voc.py`.
"""
import sys
import warnings

# importing detectron2 (dataset registration) imports torch, which warns about TorchScript
warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")

from cat_seg.data.prepare import voc, cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli.run(voc.main))
