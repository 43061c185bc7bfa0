#!/usr/bin/env python
"""Convert an official CAT-Seg checkpoint to the cat-seg layout (same as ``cat-seg-convert``).

    tools/convert_official_checkpoint.py IN.pth OUT.pth [--config-file CFG] [--verbose] [--force]

The code and the full description are in ``cat_seg/cli/convert_official_checkpoint.py``.
"""
import os
import sys
import warnings

# this checkout's cat_seg, installed or not (`python train_net.py` finds it from the root the same way)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# importing torch/detectron2 warns about TorchScript
warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")

from cat_seg.cli.convert_official_checkpoint import convert_file, main  # noqa: E402, F401

if __name__ == "__main__":
    sys.exit(main())
