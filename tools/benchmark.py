#!/usr/bin/env python
"""Speed, memory and counted work of CAT-Seg: ``cat-seg-benchmark`` (see :mod:`cat_seg.cli.benchmark`)."""
import sys

from cat_seg.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
