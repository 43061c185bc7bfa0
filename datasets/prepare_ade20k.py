#!/usr/bin/env python
"""Prepare ADE20K-150 and ADE20K-847 validation labels for detectron2.

Run `python datasets/prepare_ade20k.py --help` for the options; docs/datasets.md describes the
downloads, the resulting layout and the expected file counts. The conversion itself lives in
`cat_seg/data/prepare/ade20k.py`.
"""
import sys

try:
    from cat_seg.data.prepare.cli import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load (torch: seconds): nothing was started
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main(["ade20k", *sys.argv[1:]]))
