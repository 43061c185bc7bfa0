#!/usr/bin/env python
"""CAT-Seg demo: a wrapper around :func:`cat_seg.cli.demo.main` (console command ``cat-seg-demo``).

Run ``python demo/demo.py --help`` for the options; the guide is ``docs/segment_your_images.md``.
"""
import os
import sys

# this checkout's cat_seg, installed or not (`python train_net.py` finds it from the root the same way)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cat_seg.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
