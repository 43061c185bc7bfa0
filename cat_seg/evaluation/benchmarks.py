"""The open-vocabulary benchmarks of the evaluation protocol, as ``eval.sh`` runs them.

Which benchmarks exist (dataset, vocabulary, title) is read from
:mod:`cat_seg.data.catalog`; this module adds the command-line overrides of the protocol.
"""
from collections import OrderedDict
from typing import List, NamedTuple

from ..data.catalog import BENCHMARKS as _LAYOUTS
from ..data.catalog import PAPER_BENCHMARKS


class Benchmark(NamedTuple):
    key: str
    dataset: str  # registered detectron2 dataset name
    class_json: str  # TEST_CLASS_JSON
    title: str


BENCHMARKS = OrderedDict(
    (key, Benchmark(key, layout.name, layout.class_json, layout.title))
    for key, layout in _LAYOUTS.items()
)

# Overrides eval.sh applies to every benchmark: the official protocol evaluates with sliding
# windows and without pooling in the class aggregation. The official eval.sh sets
# POOLING_SIZES [1,1]; inference pools with TEST_POOLING_SIZES when that is set (a config's
# training-time evaluation), so the protocol sets both.
PROTOCOL_OPTS = ["TEST.SLIDING_WINDOW", "True", "MODEL.SEM_SEG_HEAD.POOLING_SIZES", "[1,1]",
                 "MODEL.SEM_SEG_HEAD.TEST_POOLING_SIZES", "[1,1]"]

__all__ = ["Benchmark", "BENCHMARKS", "PAPER_BENCHMARKS", "PROTOCOL_OPTS", "benchmark_opts"]


def benchmark_opts(benchmark: Benchmark) -> List[str]:
    """Command-line overrides selecting ``benchmark`` (before any user overrides)."""
    return [
        "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON", benchmark.class_json,
        "DATASETS.TEST", f"('{benchmark.dataset}',)",
    ] + PROTOCOL_OPTS
