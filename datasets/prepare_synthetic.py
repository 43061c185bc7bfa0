#!/usr/bin/env python
"""Generate the synthetic open-vocabulary toy benchmark (coloured, patterned shapes) in seconds.

Files go to ``$DETECTRON2_DATASETS/synthetic`` (default ``datasets/synthetic``); see
``cat_seg/data/synthetic.py`` for the classes, the seen/unseen split and the format, and
``python datasets/prepare_synthetic.py --help`` for the options.
"""
import os
import sys

# this checkout's cat_seg, installed or not (`python train_net.py` finds it from the root the same way)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    from cat_seg.data.prepare.cli import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load (torch: seconds): nothing was started
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main(["synthetic", *sys.argv[1:]]))
