"""Dataset registration: importing this package registers every dataset of
:mod:`cat_seg.data.catalog` (the paper's benchmarks and the synthetic toy benchmark) under
``$DETECTRON2_DATASETS`` (default ``datasets``)."""
from ..catalog import LAYOUTS, LAYOUTS_BY_NAME, SemSegLayout, dataset_root, get_layout
from .builtin import register_all, register_dataset, register_sem_seg_folder
from .errors import DatasetError, DatasetFileError, DatasetNotFoundError, DownloadError, PrepareError
from .loader import load_sem_seg_files

__all__ = [
    "register_all",
    "register_dataset",
    "register_sem_seg_folder",
    "DatasetError",
    "DatasetFileError",
    "DatasetNotFoundError",
    "DownloadError",
    "PrepareError",
    "LAYOUTS",
    "LAYOUTS_BY_NAME",
    "SemSegLayout",
    "dataset_root",
    "get_layout",
    "load_sem_seg_files",
]

register_all()
