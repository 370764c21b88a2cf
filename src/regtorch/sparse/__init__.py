"""Sparse tools: statistics, freezing zeros, structured shrinking and sparse files."""

from regtorch.sparse._freeze import FrozenZeros, freeze_zeros
from regtorch.sparse._select_features import SelectFeatures
from regtorch.sparse._shrink import shrink, shrink_report
from regtorch.sparse._shrink_report import GroupShrink, LayerShrink, ShrinkReport
from regtorch.sparse._sparse_io import SparseSaveInfo, load_sparse, save_sparse
from regtorch.sparse._stats import ParameterStats, Stats, sparsity

__all__ = [
    "FrozenZeros",
    "GroupShrink",
    "LayerShrink",
    "ParameterStats",
    "SelectFeatures",
    "ShrinkReport",
    "SparseSaveInfo",
    "Stats",
    "freeze_zeros",
    "load_sparse",
    "save_sparse",
    "shrink",
    "shrink_report",
    "sparsity",
]
