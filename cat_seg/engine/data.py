"""Deterministic, resumable training data.

detectron2's ``TrainingSampler`` restarts its stream after ``--resume`` and the mapper's
augmentations draw from the global RNG, so a resumed run sees different data than an
uninterrupted one. Here the ``n``-th training sample of the whole run (over all ranks and
workers) is a pure function of ``(seed, n)``: which image (a per-epoch permutation) and the
random state of its augmentations. Iteration ``k`` consumes samples
``[k * batch, (k + 1) * batch)``, so resuming at iteration ``k`` reproduces exactly what the
uninterrupted run would have seen.
"""
import contextlib
import random
from typing import Callable, Dict, List

import numpy as np
import torch
from detectron2.data import build_batch_data_loader
from detectron2.utils import comm
from torch.utils.data import Dataset, Sampler


def _sample_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2**31 - 1)


class SampleStreamSampler(Sampler):
    """Infinite stream of global sample indices ``start + rank, start + rank + world, ...``.

    Args:
        start: index of the first sample of this run (``start_iter * total_batch_size``).
        rank, world_size: this process's share of the stream (default: from ``comm``).
    """

    def __init__(self, start: int = 0, rank: int = None, world_size: int = None):
        self.start = start
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size

    def __iter__(self):
        index = self.start + self.rank
        while True:
            yield index
            index += self.world_size


@contextlib.contextmanager
def seeded_global_rngs(seed: int):
    """Run the body with Python's ``random``, NumPy's global RNG and torch's CPU RNG seeded
    from ``seed``, and give all three their previous state back afterwards.

    detectron2's transforms (and ours) draw from these global generators, so a sample's
    augmentations are seeded through them; restoring them keeps the seeding local to the
    sample, so with ``DATALOADER.NUM_WORKERS 0`` (the mapping runs in the training process)
    the model's own random draws are not reseeded by the data. CUDA generators are not
    touched.
    """
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)


class DeterministicMapDataset(Dataset):
    """Maps global sample index ``n`` to ``mapper(dataset[perm_epoch(n)])`` with a seeded RNG.

    The mapping runs inside :func:`seeded_global_rngs` with a seed from ``(seed, n)``, so
    augmentations are reproducible whatever worker runs them, and the caller's random state
    is left as it was.
    """

    def __init__(self, dataset: List[Dict], mapper: Callable, seed: int):
        if not dataset:
            raise ValueError("the training dataset is empty")
        self.dataset = dataset
        self.mapper = mapper
        self.seed = seed
        self._perms: Dict[int, np.ndarray] = {}

    def __len__(self):
        return len(self.dataset)

    def dataset_index(self, n: int) -> int:
        epoch, position = divmod(n, len(self.dataset))
        if epoch not in self._perms:
            self._perms = {epoch: np.random.RandomState(_sample_seed(self.seed, epoch)).permutation(len(self.dataset))}
        return int(self._perms[epoch][position])

    def __getitem__(self, n: int):
        with seeded_global_rngs(_sample_seed(self.seed, n)):
            return self.mapper(dict(self.dataset[self.dataset_index(n)]))


def build_deterministic_train_loader(
    dataset: List[Dict], mapper: Callable, *, seed: int, start_iter: int, total_batch_size: int, num_workers: int
):
    """Batched loader whose iteration ``k`` is identical in fresh and resumed runs."""
    world = comm.get_world_size()
    if total_batch_size % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={total_batch_size} is not divisible by the {world} processes")
    sampler = SampleStreamSampler(start=start_iter * total_batch_size)
    return build_batch_data_loader(
        DeterministicMapDataset(dataset, mapper, seed),
        sampler,
        total_batch_size,
        aspect_ratio_grouping=False,
        num_workers=num_workers,
    )
