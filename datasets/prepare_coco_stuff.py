#!/usr/bin/env python
"""Prepare COCO-Stuff 171 (train2017 + val2017) labels for detectron2.

Run `python datasets/prepare_coco_stuff.py --help` for the options; docs/datasets.md describes the
downloads, the resulting layout and the expected file counts. The conversion itself lives in
`cat_seg/data/prepare/coco_stuff.py`.
"""
import sys
import warnings

# importing detectron2 (dataset registration) imports torch, which warns about TorchScript
warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")

from cat_seg.data.prepare import coco_stuff, cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli.run(coco_stuff.main))
