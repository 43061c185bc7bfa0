#!/usr/bin/env python
"""CAT-Seg demo: a wrapper around :func:`cat_seg.cli.demo.main` (console command ``cat-seg-demo``).

Run ``python demo/demo.py --help`` for the options; the guide is ``docs/segment_your_images.md``.
"""
import sys
import warnings

# fvcore (imported with detectron2) calls the deprecated torch.jit.script at import: noise
# that would clutter the demo's one-line errors
warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

from cat_seg.cli.demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
