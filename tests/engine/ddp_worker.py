"""Run by test_ddp.py: 2-process CPU (gloo) training that records, after every step, whether
all ranks hold identical parameters."""
import json
import os

from detectron2.engine import HookBase, default_argument_parser, launch
from detectron2.utils import comm

from cat_seg.cli.train_net import end_worker_process, setup, share_cpu_threads
from cat_seg.engine import Trainer


class ParameterParityHook(HookBase):
    """After every step, all-gather a fingerprint of every parameter and compare across ranks."""

    def __init__(self, report):
        self.report = report
        self.steps = []

    def after_step(self):
        model = self.trainer.model
        model = model.module if hasattr(model, "module") else model
        fingerprint = [(name, p.detach().double().sum().item(), p.detach().double().abs().sum().item())
                       for name, p in model.named_parameters()]
        gathered = comm.all_gather(fingerprint)
        self.steps.append(all(g == gathered[0] for g in gathered))
        if comm.is_main_process():
            with open(self.report, "w") as f:
                json.dump({"world_size": comm.get_world_size(), "identical_after_step": self.steps}, f)


def main(args):
    share_cpu_threads()
    cfg = setup(args)
    trainer = Trainer(cfg)
    trainer.register_hooks([ParameterParityHook(os.path.join(cfg.OUTPUT_DIR, "parity.json"))])
    trainer.resume_or_load(resume=False)
    result = trainer.train()
    end_worker_process()  # as train_net's processes end (gloo's exit can abort a finished run)
    return result


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, dist_url="auto", args=(args,))
