"""Data: the dataset catalog (:mod:`.catalog`), registration, preparation and the synthetic toy
benchmark."""
from . import datasets  # noqa: F401  (registers every dataset with detectron2)
