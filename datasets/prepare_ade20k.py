#!/usr/bin/env python
"""Prepare ADE20K-150 and ADE20K-847 validation labels for detectron2.

Run `python datasets/prepare_ade20k.py --help` for the options; docs/datasets.md describes the
downloads, the resulting layout and the expected file counts. The conversion itself lives in
`cat_seg/data/prepare/ade20k.py`.
"""
import os
import sys

# this checkout's cat_seg, installed or not (`python train_net.py` finds it from the root the same way)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    from cat_seg.data.prepare.cli import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load (torch: seconds): nothing was started
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main(["ade20k", *sys.argv[1:]]))
