#!/usr/bin/env python
"""CAT-Seg web app (same as the ``cat-seg-app`` command): ``python demo/app.py --help``.

The program lives in :mod:`cat_seg.cli.app`; this file only calls its ``main``.
"""
import sys

from cat_seg.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
