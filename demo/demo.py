#!/usr/bin/env python
"""CAT-Seg demo: a wrapper around :func:`cat_seg.cli.demo.main` (console command ``cat-seg-demo``).

Run ``python demo/demo.py --help`` for the options; the guide is ``docs/segment_your_images.md``.
"""
import sys

from cat_seg.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
