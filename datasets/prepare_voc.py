#!/usr/bin/env python
"""Prepare Pascal VOC 2012 (VOC-20, VOC-20b) and Pascal Context (59, 459) validation labels for detectron2.

Run `python datasets/prepare_voc.py --help` for the options; docs/datasets.md describes the
downloads, the resulting layout and the expected file counts. The conversion itself lives in
`cat_seg/data/prepare/voc.py`.
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
    sys.exit(main(["voc", *sys.argv[1:]]))
