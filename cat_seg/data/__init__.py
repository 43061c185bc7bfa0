"""Data: class names, dataset registration and preparation, the synthetic toy benchmark."""
from . import datasets  # noqa: F401  (registers every dataset with detectron2)
