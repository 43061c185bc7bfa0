"""The CAT-Seg trainer: detectron2's ``DefaultTrainer`` with CAT-Seg's data, solver and evaluation."""
import inspect
import logging
import weakref
from collections import Counter
from typing import Optional, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import CATSegCheckpointer, CheckpointError
from ..checkpoint.official import OFFICIAL, cannot_resume
from ..data.dataset_mappers import TRAIN_MAPPERS, InferenceDatasetMapper
from ..evaluation import SemSegEvaluator, build_evaluator, evaluator_type_of
from ..modeling.postprocess import OutputRequest
from ..modeling.precision import resolve_precision
from ..solver import build_lr_scheduler, build_optimizer
from .data import build_deterministic_train_loader
from .train_loop import MixedPrecisionTrainer
from .writers import StrictJSONWriter, default_writers

logger = logging.getLogger(__name__)

# TEST.IMS_PER_BATCH = 0 ("auto"): images per evaluation forward on each device type.
AUTO_TEST_BATCH = {"cuda": 8}
# What the model returns per image during evaluation by SemSegEvaluator: the predicted
# classes [H, W] only, never the [T, H, W] probability maps (1.2 GB per ADE-847 image).
EVAL_OUTPUT_REQUEST = OutputRequest(probabilities=False, labels=True)


def _no_buffer_sync() -> dict:
    """The ``DistributedDataParallel`` argument that skips syncing buffers before each forward
    (the model's buffers are constants: pixel statistics, the decoder's taps, the text
    tower's mask). ``forward_sync_buffers=False`` where torch has it (it deprecates
    ``broadcast_buffers`` with a FutureWarning in every process; it still syncs once at
    init, harmless for constants), ``broadcast_buffers=False`` on older torch."""
    if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


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


def resolve_test_batch_size(cfg) -> int:
    """Images per evaluation forward: ``TEST.IMS_PER_BATCH``, or for 0 ("auto") 8 on CUDA and
    1 elsewhere (on CPU a batch is no faster per image and needs more memory)."""
    size = int(cfg.TEST.IMS_PER_BATCH)
    if size < 0:
        raise ValueError(f"TEST.IMS_PER_BATCH={size}: expected 0 (auto) or a positive number")
    if size == 0:
        size = AUTO_TEST_BATCH.get(torch.device(cfg.MODEL.DEVICE).type, 1)
    return size


def scale_to_processes(cfg, processes: int):
    """``cfg`` scaled by detectron2's ``DefaultTrainer.auto_scale_workers`` for ``processes``
    training processes: with ``SOLVER.REFERENCE_WORLD_SIZE`` N > 0 (the process count the
    config was written for), the batch and the learning rate are scaled by ``processes / N``
    and the iteration counts (``MAX_ITER``, ``WARMUP_ITERS``, ``STEPS``, ``CHECKPOINT_PERIOD``,
    ``TEST.EVAL_PERIOD``) by ``N / processes``; 0 (the default) leaves ``cfg`` as it is.
    Raises a one-line ``ValueError`` for what detectron2 asserts on without a message."""
    reference = cfg.SOLVER.REFERENCE_WORLD_SIZE
    if not isinstance(reference, int) or reference < 0:
        raise ValueError(f"SOLVER.REFERENCE_WORLD_SIZE={reference!r}: expected 0 (no scaling) or the number of "
                         "training processes the config's batch and schedule were written for")
    if reference and cfg.SOLVER.IMS_PER_BATCH % reference:
        raise ValueError(f"SOLVER.REFERENCE_WORLD_SIZE={reference}: SOLVER.IMS_PER_BATCH="
                         f"{cfg.SOLVER.IMS_PER_BATCH} must be a multiple of it (the batch of one process)")
    return DefaultTrainer.auto_scale_workers(cfg, processes)


def optimizer_state_problem(optimizer: torch.optim.Optimizer, saved: Optional[dict]) -> Optional[str]:
    """Why the optimizer state ``saved`` in a checkpoint cannot be loaded into ``optimizer``, or
    None. torch checks only the number of parameter groups and of parameters per group; a
    state of another optimizer type (``SOLVER.OPTIMIZER`` changed) loads, then fails at the
    first step for a hyper-parameter the groups lack, and moments of other parameters
    (``CLIP_FINETUNE`` changed, same count) fail there on their shape."""
    if not saved:
        return None
    groups, saved_groups = optimizer.param_groups, saved.get("param_groups", [])
    if len(groups) != len(saved_groups) or any(len(g["params"]) != len(s["params"])
                                               for g, s in zip(groups, saved_groups)):
        count = sum(len(g["params"]) for g in saved_groups)
        return (f"it trained {count} parameter tensors in {len(saved_groups)} groups, this config trains "
                f"{sum(len(g['params']) for g in groups)} in {len(groups)}")
    # numeric hyper-parameters the optimizer's step reads (the boolean options torch fills in)
    needed = [k for k, v in optimizer.defaults.items() if not isinstance(v, (bool, type(None)))]
    missing = sorted({k for s in saved_groups for k in needed if k not in s})
    if missing:
        return (f"its optimizer state lacks {', '.join(missing)} of {type(optimizer).__name__} "
                "(another SOLVER.OPTIMIZER)")
    state = saved.get("state", {})
    for group, saved_group in zip(groups, saved_groups):
        for param, index in zip(group["params"], saved_group["params"]):
            moments = [v for v in state.get(index, {}).values() if torch.is_tensor(v) and v.dim() > 0]
            if moments and moments[0].shape != param.shape:
                return (f"its optimizer state holds a {tuple(moments[0].shape)} moment for a parameter of shape "
                        f"{tuple(param.shape)}")
    return None


def vocabulary_mismatch(test_class_json: str, names: Sequence[str], dataset_name: str) -> Optional[str]:
    """Why the test vocabulary ``names`` (read from ``test_class_json``) cannot score
    ``dataset_name``, or None.

    Scores are read by channel index, so the json must list the dataset's classes in its
    order; only the count can be checked, because a vocabulary may name the same classes
    differently (synonyms, reworded prompts: what open-vocabulary research varies). A json of
    another dataset almost always has another count. A dataset scored with background
    (``sem_seg_background``, VOC-20b: its classes, then ``background``) needs its classes
    followed by at least one background prompt. Datasets without ``stuff_classes`` or with
    another evaluator type are not checked."""
    classes = getattr(MetadataCatalog.get(dataset_name), "stuff_classes", None)
    kind = evaluator_type_of(dataset_name)
    if classes is None:
        return None
    if kind == "sem_seg_background":
        scored = len(classes) - 1  # the classes before "background"
        if len(names) > scored:
            return None
        return (f"MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON={test_class_json} has {len(names)} classes but dataset "
                f"{dataset_name} needs its {scored} classes followed by background prompts: use the dataset's "
                f"class json")
    if kind != "sem_seg" or len(names) == len(classes):
        return None
    return (f"MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON={test_class_json} has {len(names)} classes but dataset "
            f"{dataset_name} has {len(classes)}: use the dataset's class json")


class _Requesting(torch.nn.Module):
    """``model`` (a CATSeg, or one wrapped by DDP) asked for ``request`` with every input: the
    inputs it is given get the ``"output_request"`` key (copies; the evaluator reads the
    originals). ``train()`` / ``eval()`` reach the model, as detectron2's inference expects."""

    def __init__(self, model: torch.nn.Module, request: OutputRequest):
        super().__init__()
        self.model = model
        self.request = request

    def forward(self, batched_inputs):
        return self.model([{**inputs, "output_request": self.request} for inputs in batched_inputs])


class Trainer(DefaultTrainer):
    """Training and evaluation of CAT-Seg.

    Differences from ``DefaultTrainer``: CAT-Seg's train mapper, optimizer (per-parameter
    groups, CLIP LR multiplier, full-model gradient clipping) and evaluators; a
    deterministic data stream that ``--resume`` continues exactly (its seed is saved in the
    checkpoints); mixed precision from ``MODEL.PRECISION`` on CPU or GPU; evaluation with
    ``TEST.IMS_PER_BATCH`` images per forward (0 = auto), the model returning the predicted
    classes without the ``[T, H, W]`` probability maps; ``metrics.json`` kept valid JSON (NaN
    written as ``null``). The hooks and the training loop are ``DefaultTrainer``'s; resuming,
    ``test``, the loaders, evaluators and writers extend its own.
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__ in the same order, except for three things it hard-codes:
        # DDP options (static_graph; no device_ids for CPU processes), the step
        # (AMPTrainer is CUDA-only and fp16-only) and the checkpointer (crash-safe writes that
        # also save the data seed).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = scale_to_processes(cfg, comm.get_world_size())
        self.cfg = cfg
        self.data_seed = DataSeed(resolve_seed(cfg))
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        # static_graph: the last visual block's q/k weights are trainable in some fine-tuning
        # modes but unused by the dense forward; DDP must tolerate that without the cost of
        # find_unused_parameters.
        on_gpu = torch.device(cfg.MODEL.DEVICE).type == "cuda"
        model = create_ddp_model(
            model, static_graph=True, device_ids=[comm.get_local_rank()] if on_gpu else None, **_no_buffer_sync()
        )
        self._trainer = self.build_train_step(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = CATSegCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self), data_seed=self.data_seed
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_step(cls, cfg, model, data_loader, optimizer) -> SimpleTrainer:
        """``SimpleTrainer``, or :class:`MixedPrecisionTrainer` when ``MODEL.PRECISION``
        resolves to bf16 / fp16 on ``MODEL.DEVICE``."""
        dtype = resolve_precision(cfg.MODEL.PRECISION, cfg.MODEL.DEVICE)
        if dtype is None:
            return SimpleTrainer(model, data_loader, optimizer)
        device_type = torch.device(cfg.MODEL.DEVICE).type
        return MixedPrecisionTrainer(model, data_loader, optimizer, dtype, device_type)

    def build_writers(self):
        """detectron2's writers, ``metrics.json`` with NaN written as ``null``
        (:class:`~cat_seg.engine.writers.StrictJSONWriter`)."""
        self._writers = default_writers(self.cfg.OUTPUT_DIR, self.max_iter)
        return self._writers

    # ------------------------------------------------------------------ resume
    def resume_or_load(self, resume=True):
        """Load ``MODEL.WEIGHTS`` or resume; then position the data stream at ``start_iter``.
        Temporary files of checkpoint saves a killed run left in ``OUTPUT_DIR`` are removed."""
        self.checkpointer.remove_interrupted_saves()
        # detectron2's DefaultTrainer.resume_or_load, with the state of a training run required
        # to resume (a file without it, e.g. an official release, started "at iteration 1")
        loaded = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            report = self.checkpointer.last_report
            official = report is not None and report.layout == OFFICIAL  # its training state was set aside
            if official or "iteration" not in loaded:
                where = f"the checkpoint in {self.cfg.OUTPUT_DIR} ({self.checkpointer.get_checkpoint_file()})"
                raise CheckpointError(cannot_resume(where, official))
            self.start_iter = self.iter + 1
        # the seed that decides the data stream (SEED, or drawn when SEED < 0; restored on --resume)
        logger.info(f"Training data seed {self.data_seed.seed} (SEED {self.cfg.SEED}), from iteration {self.start_iter}")
        if self.start_iter >= self.max_iter:
            logger.warning(f"the checkpoint resumed from is at iteration {self.start_iter} and SOLVER.MAX_ITER is "
                           f"{self.max_iter}: nothing is left to train (raise SOLVER.MAX_ITER to train longer; "
                           "--eval-only evaluates the checkpoint)")
        if 0 < self.start_iter < self.max_iter:
            self._trainer.data_loader = self.build_train_loader(self.cfg)
            self._trainer._data_loader_iter_obj = None
            for writer in getattr(self, "_writers", ()):  # the main process's (build_writers)
                if isinstance(writer, StrictJSONWriter):
                    dropped = writer.discard_from(self.start_iter)
                    if dropped:
                        logger.info(f"{writer.json_file}: removed {dropped} line(s) logged after the checkpoint "
                                    f"resumed from (training steps from iteration {self.start_iter} on, logged again "
                                    "by this run)")

    def train(self):
        """detectron2's ``train``; nothing at all when the checkpoint resumed from is at or past
        ``SOLVER.MAX_ITER`` (:meth:`resume_or_load` says so). detectron2 then trained nothing
        but ran the final evaluation again (the whole test set of a finished run, e.g. when
        ``run.sh`` is rerun) and logged it as one more ``metrics.json`` row at ``MAX_ITER + 1``."""
        if self.start_iter >= self.max_iter:
            return None
        return super().train()

    def load_state_dict(self, state_dict):
        """``DefaultTrainer.load_state_dict`` (iteration, hooks, optimizer) after checking that the
        optimizer state fits: a checkpoint of a run with another optimizer or other trainable
        parameters is a one-line :class:`CheckpointError` before anything is loaded."""
        problem = optimizer_state_problem(self.optimizer, state_dict.get("_trainer", {}).get("optimizer"))
        if problem:
            raise CheckpointError(
                f"--resume: the checkpoint in {self.cfg.OUTPUT_DIR} cannot continue with this config: {problem}; "
                "resume with the run's settings (its config.yaml), or start a new run from its weights "
                "(MODEL.WEIGHTS <checkpoint> without --resume, another OUTPUT_DIR)")
        saved_lrs = state_dict.get("hooks", {}).get("LRScheduler", {}).get("base_lrs")
        current_lrs = getattr(self.scheduler, "base_lrs", None)
        if saved_lrs and current_lrs and len(saved_lrs) == len(current_lrs) and not all(
                abs(a - b) <= 1e-12 + 1e-6 * abs(b) for a, b in zip(saved_lrs, current_lrs)):
            # detectron2 restores the schedule of the run: the learning rates of this config are not used
            logger.warning(f"--resume continues the learning-rate schedule of the checkpoint (base LR "
                           f"{max(saved_lrs):g}); this config's learning rates (SOLVER.BASE_LR {self.cfg.SOLVER.BASE_LR:g}, "
                           "CLIP_MULTIPLIER, BACKBONE_MULTIPLIER) differ and are not used; to train with them, "
                           "start a new run from the checkpoint (MODEL.WEIGHTS <checkpoint> without --resume)")
        super().load_state_dict(state_dict)

    def before_train(self):
        super().before_train()
        # detectron2's LRScheduler hook logs ("lr") the group of the most common *current* LR; on
        # resuming at the end of a schedule all are 0 and it picked a CLIP group (LR x 0.01).
        # The most common initial LR is the head's, as in a fresh run.
        initial = Counter(g.get("initial_lr", g["lr"]) for g in self.optimizer.param_groups).most_common(1)[0][0]
        for hook in self._hooks:
            if isinstance(hook, hooks.LRScheduler):
                hook._best_param_group_id = next(i for i, g in enumerate(self.optimizer.param_groups)
                                                 if g.get("initial_lr", g["lr"]) == initial)

    # ------------------------------------------------------------------ builders
    def build_train_loader(self, cfg):
        """The deterministic training stream from sample ``start_iter * SOLVER.IMS_PER_BATCH``
        on (an instance method, unlike ``DefaultTrainer``'s: it needs the data seed and
        the iteration to resume at)."""
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
            start_iter=self.start_iter,
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """:func:`cat_seg.evaluation.build_evaluator` (results in ``OUTPUT_DIR/inference/<dataset>``)."""
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader with :func:`resolve_test_batch_size` images per batch and
        :class:`~cat_seg.data.dataset_mappers.InferenceDatasetMapper`."""
        return build_detection_test_loader(
            cfg, dataset_name, mapper=InferenceDatasetMapper(cfg, False), batch_size=resolve_test_batch_size(cfg)
        )

    @classmethod
    def check_vocabulary(cls, cfg, model, dataset_name):
        """:func:`vocabulary_mismatch` of the model's test vocabulary, as a ``ValueError``."""
        problem = vocabulary_mismatch(cfg.MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON, model.class_names("test"), dataset_name)
        if problem:
            raise ValueError(problem)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """``DefaultTrainer.test`` on every ``DATASETS.TEST`` (vocabulary: ``TEST_CLASS_JSON``),
        after checking that the vocabulary matches each dataset.

        When every evaluator is a :class:`~cat_seg.evaluation.SemSegEvaluator` (those of
        :meth:`build_evaluator` when ``evaluators`` is None), the model is asked for the
        predicted classes only (:data:`EVAL_OUTPUT_REQUEST`, the ``"output_request"`` key of
        each input it is given: the model itself is not changed); other evaluators get
        detectron2's ``sem_seg`` probabilities. Afterwards the model's CUDA graphs and cached
        text embeddings are released (``CATSeg.release_inference_caches``)."""
        core = model.module if hasattr(model, "module") else model
        for dataset_name in cfg.DATASETS.TEST:
            cls.check_vocabulary(cfg, core, dataset_name)
        evaluated = _Requesting(model, EVAL_OUTPUT_REQUEST) if cls.evaluators_read_labels(evaluators) else model
        try:
            return super().test(cfg, evaluated, evaluators)
        finally:
            # a periodic evaluation during training: the CUDA graphs it captured (and their
            # memory) and its text embeddings (stale after the next step) are not kept
            release = getattr(core, "release_inference_caches", None)
            if release is not None:
                release()

    @classmethod
    def evaluators_read_labels(cls, evaluators) -> bool:
        """Whether ``evaluators`` (one evaluator, a list, detectron2's ``DatasetEvaluators``,
        or None: those of :meth:`build_evaluator`) are all :class:`SemSegEvaluator`, which
        score ``sem_seg_labels``."""
        if evaluators is None:  # a subclass's build_evaluator may need the probabilities
            return cls.build_evaluator.__func__ is Trainer.build_evaluator.__func__
        if isinstance(evaluators, DatasetEvaluators):
            evaluators = evaluators._evaluators
        elif isinstance(evaluators, DatasetEvaluator):
            return isinstance(evaluators, SemSegEvaluator)
        return all(cls.evaluators_read_labels(e) for e in evaluators)
