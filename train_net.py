#!/usr/bin/env python
"""Train and evaluate CAT-Seg (detectron2 conventions).

    python train_net.py --config-file configs/vitb_384.yaml --num-gpus 4
    python train_net.py --config-file configs/vitb_384.yaml --eval-only MODEL.WEIGHTS model_base.pth
    python train_net.py --config-file CFG --resume            # continue after a crash or kill

Multi-node: ``--num-machines M --machine-rank R --dist-url tcp://HOST:PORT``. On a machine
without GPUs ``--num-gpus N`` starts N CPU processes (gloo backend).
"""
import logging
import os
import sys

import torch
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm

import cat_seg.data  # noqa: F401  (registers the datasets)
from cat_seg import add_cat_seg_config
from cat_seg.checkpoint import CATSegCheckpointer
from cat_seg.data.datasets import DatasetError
from cat_seg.engine import Trainer

logger = logging.getLogger("cat_seg")


def setup(args):
    """Config from defaults + ``--config-file`` + command-line ``KEY VALUE`` pairs."""
    cfg = get_cfg()
    add_cat_seg_config(cfg)
    if not os.path.isfile(args.config_file):
        raise SystemExit(f"error: config file {args.config_file!r} not found")
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
        cfg.MODEL.DEVICE = "cpu"  # laptop use: same code, only slower
    cfg.freeze()
    default_setup(cfg, args)  # logging, output/config.yaml dump, seeds, cudnn benchmark
    # matmul precision: "high" lets fp32 matmuls use TF32 on Ampere+ GPUs, as the official code.
    torch.set_float32_matmul_precision("high")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        CATSegCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(argv=None):
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    if args.num_gpus > 1 and not torch.cuda.is_available():
        logger.info(f"no GPU: running {args.num_gpus} CPU processes (gloo)")
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    try:
        run()
    except (FileNotFoundError, ValueError, DatasetError) as e:
        # Config/data mistakes get one line; CATSEG_DEBUG=1 shows the traceback.
        if os.environ.get("CATSEG_DEBUG") or comm.get_world_size() > 1:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
