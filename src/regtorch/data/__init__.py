"""Data loading for regtorch: standard data sets as in-memory tensors, IDX files, batching.

Examples:
    >>> from regtorch.data import load_dataset, iterate_batches
    >>> ds = load_dataset("digits", val_fraction=0.1, seed=0)
    >>> ds.x_train.shape, ds.num_classes
    (torch.Size([1212, 1, 8, 8]), 10)

Every user-facing data problem raises :class:`DataError` (a :class:`ValueError`).
"""

from __future__ import annotations

from ._batches import iterate_batches
from ._dataset import Dataset
from ._download import default_data_dir, download
from ._errors import DataError
from ._idx import read_idx, write_idx
from ._load import DATASET_NAMES, load_dataset

__all__ = [
    "DATASET_NAMES",
    "DataError",
    "Dataset",
    "default_data_dir",
    "download",
    "iterate_batches",
    "load_dataset",
    "read_idx",
    "write_idx",
]
