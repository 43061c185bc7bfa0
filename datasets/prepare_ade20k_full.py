#!/usr/bin/env python
"""ADE20K-847 under the official script's name: the same as
`python datasets/prepare_ade20k.py --benchmark 847` (other options as that script's; `--help`).

Kept so that commands written for the official code work here; docs/datasets.md describes the
downloads, the resulting layout and the expected file counts.
"""
import sys

from cat_seg.data.prepare.cli import main

if __name__ == "__main__":
    sys.exit(main(["ade20k", "--benchmark", "847", *sys.argv[1:]]))
