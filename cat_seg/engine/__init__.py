"""Training engine: trainer, deterministic resumable data, mixed-precision train loop."""
from .data import DeterministicMapDataset, SampleStreamSampler, build_deterministic_train_loader
from .train_loop import MixedPrecisionTrainer
from .trainer import Trainer

__all__ = [
    "DeterministicMapDataset", "SampleStreamSampler", "build_deterministic_train_loader",
    "MixedPrecisionTrainer", "Trainer",
]
