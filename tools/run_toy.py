#!/usr/bin/env python
"""The main job on the embedded default: the synthetic toy benchmark, end to end on CPU.

    python tools/run_toy.py [--output output/toy] [--max-iter N] [--clip-steps N] [--num-train N]

1. generate the synthetic benchmark of coloured, patterned shapes (``datasets/synthetic``, seconds);
2. pre-train the tiny CLIP on the *training* split (seen classes only; CAT-Seg needs a
   pre-trained CLIP and no weights can be downloaded here): dense contrastive alignment of
   its per-pixel embeddings with the class captions;
3. train CAT-Seg (``configs/quick_schedules/toy_synthetic.yaml``) with ``train_net.py``;
4. evaluate with ``eval.sh`` on the val split (seen + unseen classes);
5. write overlays of a few val images with ``demo/demo.py``;
6. print the metrics table (also in ``OUTPUT/summary.md``).

Each step reuses what a previous run finished (rerun = resume), and says so: the options of a
finished step (``--clip-steps``, ``--max-iter``) are not applied again, so another schedule
needs another ``--output``. The test suite runs a short version (fewer images and steps).
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's cat_seg, installed or not
CONFIG = os.path.join(REPO, "configs", "quick_schedules", "toy_synthetic.yaml")
# Overlays leave pixels unlabeled where no class reaches this probability (the toy's
# background is not a class, so without it every background pixel gets some class).
OVERLAY_MIN_PROBABILITY = 0.1


def log(message):
    print(f"[toy] {message}", flush=True)


def run(cmd, env=None):
    log(" ".join(cmd))
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"error: step failed with exit code {proc.returncode}: {' '.join(cmd)}")


def load_cfg(opts=()):
    """The toy config with ``opts`` (``KEY VALUE`` pairs), merged as ``train_net.py`` merges it."""
    from detectron2.config import get_cfg

    from cat_seg import add_cat_seg_config
    from cat_seg.cli.errors import merge_config

    cfg = get_cfg()
    add_cat_seg_config(cfg)
    return merge_config(cfg, CONFIG, opts)


def training_images(size, mean, std):
    """The training split resized to the CLIP input: ``([N,3,H,W]`` normalised, ``[N,H,W]`` labels)."""
    import cv2
    import numpy as np
    import torch
    from detectron2.data import DatasetCatalog

    from cat_seg.data.synthetic import TRAIN

    images, labels = [], []
    for record in DatasetCatalog.get(TRAIN.name):
        image = cv2.cvtColor(cv2.imread(record["file_name"]), cv2.COLOR_BGR2RGB)
        label = cv2.imread(record["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
        images.append(cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA))
        labels.append(cv2.resize(label, (size[1], size[0]), interpolation=cv2.INTER_NEAREST))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x, torch.from_numpy(np.stack(labels))


def pretrain_tiny_clip(path, steps):
    """Dense pre-training of the toy's tiny CLIP on the seen classes; saved to ``path``."""
    import torch
    from detectron2.modeling import build_backbone

    from cat_seg.data.synthetic import train_class_names
    from cat_seg.modeling.clip.pretrain import pretrain_clip_dense
    from cat_seg.utils import atomic_torch_save

    cfg = load_cfg(["MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", "none"])
    torch.manual_seed(cfg.SEED)
    backbone = build_backbone(cfg)
    images, labels = training_images(backbone.resolution, cfg.MODEL.CLIP_PIXEL_MEAN, cfg.MODEL.CLIP_PIXEL_STD)
    log(f"pre-training the tiny CLIP on {len(images)} training images ({len(train_class_names())} seen classes), "
        f"{steps} steps")
    start = time.time()
    losses = pretrain_clip_dense(backbone, images, labels, train_class_names(), steps=steps, lr=3e-3,
                                 warmup_steps=min(100, steps // 10), seed=cfg.SEED)
    log(f"CLIP pre-training loss {losses[0]:.3f} -> {losses[-1]:.3f} in {time.time() - start:.0f} s")
    atomic_torch_save(backbone.clip.state_dict(), path)


def summary(output, eval_table):
    from cat_seg.data.synthetic import VAL, seen_class_indices, unseen_class_indices
    from cat_seg.evaluation.sem_seg_evaluation import RESULTS_JSON

    # where eval.sh leaves the benchmark's results: OUTPUT/eval/<benchmark>/inference/<dataset>/
    result_file = os.path.join(output, "eval", VAL.benchmark, "inference", VAL.name, RESULTS_JSON)
    with open(result_file) as f:
        metrics = json.load(f)["metrics"]
    seen, unseen = len(seen_class_indices()), len(unseen_class_indices())
    lines = [
        "## Toy run: CAT-Seg on the synthetic benchmark (CPU)",
        "",
        eval_table.strip(),
        "",
        "| classes | mIoU |",
        "|---|---|",
        f"| seen ({seen}, in training) | {metrics['mIoU-seen']:.1f} |",
        f"| unseen ({unseen}, never in training) | {metrics['mIoU-unseen']:.1f} |",
        f"| all {seen + unseen} (harmonic mean seen/unseen: {metrics['hIoU']:.1f}) | {metrics['mIoU']:.1f} |",
    ]
    return "\n".join(lines) + "\n"


def count(minimum):
    """argparse type: an integer >= ``minimum`` (:func:`cat_seg.utils.int_at_least`)."""
    from cat_seg.utils import int_at_least

    def parse(text):
        value = int_at_least(text, minimum)
        if value is None:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= {minimum}")
        return value
    return parse


def main(argv=None):
    from cat_seg.cli.errors import ArgumentParser

    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/toy")
    parser.add_argument("--max-iter", type=count(1), default=None, help="CAT-Seg training iterations (config default)")
    parser.add_argument("--clip-steps", type=count(1), default=1500, help="tiny-CLIP pre-training steps")
    parser.add_argument("--num-train", type=count(1), default=3000, help="synthetic training images")
    parser.add_argument("--num-val", type=count(1), default=100, help="synthetic val images")
    parser.add_argument("--overlays", type=count(0), default=6, help="val images to draw")
    args = parser.parse_args(argv)
    output = os.path.abspath(args.output)
    os.makedirs(output, exist_ok=True)
    start = time.time()

    import cat_seg.data  # noqa: F401  (registers the synthetic benchmark)
    from cat_seg.data.catalog import vocabulary_path
    from cat_seg.data.synthetic import VAL, generate_synthetic

    generate_synthetic(num_train=args.num_train, num_val=args.num_val)
    clip_path = os.path.join(output, "tiny_clip_pretrained.pth")
    if not os.path.isfile(clip_path):
        pretrain_tiny_clip(clip_path, args.clip_steps)
    else:
        log(f"reusing the pre-trained tiny CLIP of an earlier run, {clip_path} (another --output runs this step "
            "again" + (", with --clip-steps" if args.clip_steps != parser.get_default("clip_steps") else "") + ")")
    opts = ["OUTPUT_DIR", output, "MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", clip_path]
    if args.max_iter is not None:
        opts += ["SOLVER.MAX_ITER", str(args.max_iter)]
    final = os.path.join(output, "model_final.pth")
    if not os.path.isfile(final):
        run([sys.executable, "train_net.py", "--config-file", CONFIG, "--resume", *opts, "DATASETS.TEST", "()"])
    else:
        log(f"reusing the trained model of an earlier run, {final} (another --output trains again"
            + (", with --max-iter" if args.max_iter is not None else "") + ")")
    env = dict(os.environ, BENCHMARKS=VAL.benchmark)
    eval_cmd = [sys.executable, "tools/evaluate_benchmarks.py", CONFIG, "1", output,
                "MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", clip_path]
    log(" ".join(eval_cmd))
    proc = subprocess.run(eval_cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: evaluation failed: {proc.stderr.strip().splitlines()[-1:]}")
    text = summary(output, proc.stdout)

    from detectron2.data import DatasetCatalog

    val = sorted(r["file_name"] for r in DatasetCatalog.get(VAL.name))[: args.overlays]
    if val:
        run([sys.executable, "demo/demo.py", "--config-file", CONFIG, "--weights",
             os.path.join(output, "model_final.pth"), "--input", *val, "--output", os.path.join(output, "overlays"),
             "--vocab-file", str(vocabulary_path(VAL.class_key)), "--device", "cpu",
             "--background", str(OVERLAY_MIN_PROBABILITY),
             "--opts", "MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS", "none"])
    from cat_seg.utils import atomic_write

    atomic_write(os.path.join(output, "summary.md"), lambda f: f.write(text), mode="w", durable=False)
    print(text)
    log(f"done in {time.time() - start:.0f} s; overlays in {os.path.join(output, 'overlays')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
