#!/usr/bin/env python
"""Generate the synthetic open-vocabulary toy benchmark (coloured, patterned shapes) in seconds.

Files go to ``$DETECTRON2_DATASETS/synthetic`` (default ``datasets/synthetic``); see
``cat_seg/data/synthetic.py`` for the classes, the seen/unseen split and the format, and
``python datasets/prepare_synthetic.py --help`` for the options.
"""
import sys
import warnings

# importing detectron2 (dataset registration) imports torch, which warns about TorchScript
warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")

from cat_seg.data import synthetic  # noqa: E402
from cat_seg.data.prepare import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli.run(synthetic.main))
