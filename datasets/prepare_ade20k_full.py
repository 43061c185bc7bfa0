#!/usr/bin/env python
"""ADE20K-847 under the official script's name: the same as
`python datasets/prepare_ade20k.py --benchmark 847`; its `--help` says so (it has no `--benchmark`).

Kept so that commands written for the official code work here; docs/datasets.md describes the
downloads, the resulting layout and the expected file counts.
"""
import os
import sys

# this checkout's cat_seg, installed or not (`python train_net.py` finds it from the root the same way)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    from cat_seg.data.prepare.cli import run_official_script
except KeyboardInterrupt:  # Ctrl-C while the libraries load (torch: seconds): nothing was started
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(run_official_script("prepare_ade20k_full.py"))
