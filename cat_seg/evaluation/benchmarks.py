"""The open-vocabulary benchmarks of the evaluation protocol (spec 5.4), in one table."""
from collections import OrderedDict
from typing import List, NamedTuple


class Benchmark(NamedTuple):
    key: str
    dataset: str  # registered detectron2 dataset name
    class_json: str  # TEST_CLASS_JSON
    title: str


BENCHMARKS = OrderedDict(
    (b.key, b)
    for b in [
        Benchmark("ade150", "ade20k_150_test_sem_seg", "datasets/ade150.json", "ADE20K-150"),
        Benchmark("ade847", "ade20k_full_sem_seg_freq_val_all", "datasets/ade847.json", "ADE20K-847"),
        Benchmark("voc20", "voc_2012_test_sem_seg", "datasets/voc20.json", "PASCAL VOC-20"),
        Benchmark("voc20b", "voc_2012_test_background_sem_seg", "datasets/voc20b.json", "PASCAL VOC-20b"),
        Benchmark("pc59", "context_59_test_sem_seg", "datasets/pc59.json", "PASCAL Context-59"),
        Benchmark("pc459", "context_459_test_sem_seg", "datasets/pc459.json", "PASCAL Context-459"),
        Benchmark("synthetic", "synthetic_val_sem_seg", "datasets/synthetic_val.json", "Synthetic toy (val)"),
    ]
)

# The six benchmarks of the paper's protocol (eval.sh default order).
PAPER_BENCHMARKS: List[str] = ["ade150", "ade847", "voc20", "voc20b", "pc59", "pc459"]

# Overrides eval.sh applies to every benchmark (official protocol).
PROTOCOL_OPTS = ["TEST.SLIDING_WINDOW", "True", "MODEL.SEM_SEG_HEAD.POOLING_SIZES", "[1,1]"]


def benchmark_opts(benchmark: Benchmark) -> List[str]:
    """Command-line overrides selecting ``benchmark`` (before any user overrides)."""
    return [
        "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON", benchmark.class_json,
        "DATASETS.TEST", f"('{benchmark.dataset}',)",
    ] + PROTOCOL_OPTS
