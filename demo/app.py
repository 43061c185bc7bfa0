#!/usr/bin/env python
"""CAT-Seg web app (same as the ``cat-seg-app`` command): ``python demo/app.py --help``.

The program lives in :mod:`cat_seg.cli.app`; this file only calls its ``main``.
"""
import os
import sys

# this checkout's cat_seg, installed or not (`python train_net.py` finds it from the root the same way)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cat_seg.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
