#!/usr/bin/env python
"""Speed, memory and counted work of CAT-Seg: ``cat-seg-benchmark`` (see :mod:`cat_seg.cli.benchmark`)."""
import os
import sys

# this checkout's cat_seg, installed or not (`python train_net.py` finds it from the root the same way)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cat_seg.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
