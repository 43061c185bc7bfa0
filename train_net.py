#!/usr/bin/env python
"""Train and evaluate CAT-Seg (detectron2 conventions); same as the ``cat-seg-train`` command.

    python train_net.py --config-file configs/vitb_384.yaml --num-gpus 4
    python train_net.py --config-file configs/vitb_384.yaml --eval-only MODEL.WEIGHTS model_base.pth
    python train_net.py --config-file CFG --resume            # continue after a crash or kill

Multi-node: ``--num-machines M --machine-rank R --dist-url tcp://HOST:PORT``. On a machine
without GPUs ``--num-gpus N`` starts N CPU processes (gloo backend). The code is in
``cat_seg/cli/train_net.py``.
"""
import sys

from cat_seg.cli.train_net import main, setup  # noqa: F401  (setup: for scripts that import train_net)

if __name__ == "__main__":
    sys.exit(main())
