"""Deterministic training data (``cat_seg.engine.data``): a sample is a function of
``(seed, n)``, and mapping it leaves the caller's random state alone."""
import random

import numpy as np
import torch

from cat_seg.engine.data import DeterministicMapDataset, SampleStreamSampler


def draw_everywhere(record):
    """A mapper drawing from each global generator, as detectron2's transforms do."""
    return {**record, "draws": (random.random(), float(np.random.uniform()), float(torch.rand(())))}


def test_samples_are_functions_of_the_seed_and_index():
    records = [{"id": i} for i in range(5)]
    dataset = DeterministicMapDataset(records, draw_everywhere, seed=7)
    first = [dataset[n] for n in range(12)]
    again = DeterministicMapDataset(records, draw_everywhere, seed=7)
    assert [again[n] for n in reversed(range(12))] == first[::-1]  # any order, any process
    assert sorted(sample["id"] for sample in first[:5]) == list(range(5))  # an epoch is a permutation
    assert len({sample["draws"] for sample in first}) == 12
    other_seed = DeterministicMapDataset(records, draw_everywhere, seed=8)
    assert [other_seed[n]["draws"] for n in range(12)] != [sample["draws"] for sample in first]


def test_mapping_leaves_the_global_random_state_as_it_was():
    dataset = DeterministicMapDataset([{"id": 0}], draw_everywhere, seed=0)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (random.random(), np.random.uniform(), torch.rand(()))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    dataset[3]
    assert (random.random(), np.random.uniform(), torch.rand(())) == expected


def test_sample_stream_is_shared_by_ranks():
    streams = [iter(SampleStreamSampler(start=8, rank=rank, world_size=2)) for rank in range(2)]
    assert [next(streams[0]) for _ in range(3)] == [8, 10, 12]
    assert [next(streams[1]) for _ in range(3)] == [9, 11, 13]
