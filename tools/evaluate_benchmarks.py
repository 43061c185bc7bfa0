#!/usr/bin/env python
"""Evaluate a CAT-Seg model on the open-vocabulary benchmarks (used by ``eval.sh``).

    tools/evaluate_benchmarks.py CONFIG NUM_GPUS OUTPUT_DIR [KEY VALUE ...]

The code and the full description are in ``cat_seg/cli/evaluate_benchmarks.py``.
"""
import os
import sys
import warnings

# this checkout's cat_seg, installed or not (`python train_net.py` finds it from the root the same way)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# importing detectron2/open_clip imports torch, which warns about TorchScript
warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")

from cat_seg.cli.evaluate_benchmarks import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
