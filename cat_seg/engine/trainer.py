"""The CAT-Seg trainer: detectron2's ``DefaultTrainer`` with CAT-Seg's data, solver and evaluation."""
import logging
import os
import weakref
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import CATSegCheckpointer
from ..data.dataset_mappers import MaskFormerSemanticDatasetMapper
from ..evaluation import build_evaluator
from ..solver import build_lr_scheduler, build_optimizer
from .data import build_deterministic_train_loader
from .train_loop import MixedPrecisionTrainer

_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
TRAIN_MAPPERS = {"mask_former_semantic": MaskFormerSemanticDatasetMapper}


class DataSeed:
    """The seed of the training data stream, saved in checkpoints so ``--resume`` reuses it."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def state_dict(self):
        return {"seed": self.seed}

    def load_state_dict(self, state):
        self.seed = int(state["seed"])


def resolve_seed(cfg) -> int:
    """``cfg.SEED`` if set, else a random seed shared by all ranks."""
    if cfg.SEED >= 0:
        return int(cfg.SEED)
    seed = int(np.random.randint(0, 2**31 - 1)) if comm.is_main_process() else 0
    return int(comm.all_gather(seed)[0]) if comm.get_world_size() > 1 else seed


class Trainer(DefaultTrainer):
    """Training and evaluation of CAT-Seg.

    Differences from ``DefaultTrainer``: CAT-Seg's train mapper, optimizer (per-parameter
    groups, CLIP LR multiplier, full-model gradient clipping) and evaluators; a
    deterministic data stream that ``--resume`` continues exactly; mixed precision
    (``SOLVER.AMP.ENABLED`` with ``SOLVER.AMP.PRECISION`` bf16/fp16) on CPU or GPU;
    evaluation with ``TEST.IMS_PER_BATCH`` images per forward.
    """

    def __init__(self, cfg):
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.data_seed = DataSeed(resolve_seed(cfg))
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        self.cfg = cfg
        data_loader = self._build_train_loader(cfg, start_iter=0)
        # static_graph: the last visual block's q/k weights are trainable in some fine-tuning
        # modes but unused by the dense forward; DDP must tolerate that without the cost of
        # find_unused_parameters. CPU processes (gloo) take no device_ids.
        on_gpu = torch.device(cfg.MODEL.DEVICE).type == "cuda"
        model = create_ddp_model(
            model, broadcast_buffers=False, static_graph=True,
            device_ids=[comm.get_local_rank()] if on_gpu else None,
        )
        if cfg.SOLVER.AMP.ENABLED:
            precision = cfg.SOLVER.AMP.PRECISION
            if precision not in _PRECISIONS:
                raise ValueError(f"SOLVER.AMP.PRECISION={precision!r}: expected one of {sorted(_PRECISIONS)}")
            device_type = torch.device(cfg.MODEL.DEVICE).type
            self._trainer = MixedPrecisionTrainer(model, data_loader, optimizer, _PRECISIONS[precision], device_type)
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        # TrainerBase state
        self._hooks = []
        self.iter = 0
        self.storage = None
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = CATSegCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self), data_seed=self.data_seed
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------ resume
    def resume_or_load(self, resume=True):
        """Load ``MODEL.WEIGHTS`` or resume; then position the data stream at ``start_iter``."""
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:
            self._trainer.data_loader = self._build_train_loader(self.cfg, self.start_iter)
            self._trainer._data_loader_iter_obj = None

    def _build_train_loader(self, cfg, start_iter: int):
        name = cfg.INPUT.DATASET_MAPPER_NAME
        if name not in TRAIN_MAPPERS:
            raise ValueError(f"INPUT.DATASET_MAPPER_NAME={name!r}: expected one of {sorted(TRAIN_MAPPERS)}")
        dataset = []
        for dataset_name in cfg.DATASETS.TRAIN:
            dataset.extend(DatasetCatalog.get(dataset_name))
        return build_deterministic_train_loader(
            dataset,
            TRAIN_MAPPERS[name](cfg, True),
            seed=self.data_seed.seed,
            start_iter=start_iter,
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    # ------------------------------------------------------------------ builders
    @classmethod
    def build_train_loader(cls, cfg):
        raise NotImplementedError("Trainer builds its own resumable loader (see _build_train_loader)")

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=DatasetMapper(cfg, False), batch_size=cfg.TEST.IMS_PER_BATCH
        )

    @classmethod
    def check_vocabulary(cls, cfg, model, dataset_name):
        """The test class json must list the evaluator's classes in order (spec Q24)."""
        meta = MetadataCatalog.get(dataset_name)
        classes = getattr(meta, "stuff_classes", None)
        if classes is None or getattr(meta, "evaluator_type", "sem_seg") != "sem_seg":
            return
        names = model.class_names("test")
        if len(names) != len(classes):
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON={cfg.MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON} has {len(names)} "
                f"classes but dataset {dataset_name} has {len(classes)}: use the dataset's class json"
            )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate on every ``DATASETS.TEST`` (vocabulary: ``TEST_CLASS_JSON``)."""
        logger = logging.getLogger(__name__)
        core = model.module if hasattr(model, "module") else model
        results = OrderedDict()
        for index, dataset_name in enumerate(cfg.DATASETS.TEST):
            cls.check_vocabulary(cfg, core, dataset_name)
            data_loader = cls.build_test_loader(cfg, dataset_name)
            evaluator = evaluators[index] if evaluators is not None else cls.build_evaluator(cfg, dataset_name)
            result = inference_on_dataset(model, data_loader, evaluator)
            results[dataset_name] = result
            if comm.is_main_process():
                logger.info(f"Evaluation results for {dataset_name} in csv format:")
                print_csv_format(result)
        if len(results) == 1:
            results = list(results.values())[0]
        return results
