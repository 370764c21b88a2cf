"""regtorch: L1, L2, elastic-net, p-norm and group-lasso regularization for any PyTorch optimizer.

Penalties (:class:`L1`, :class:`L2`, :class:`ElasticNet`, :class:`Lp`, :class:`GroupLasso`,
:class:`MCP`, :class:`SCAD`) act on lists of tensors; a :class:`Regularizer` binds them to a
model's parameters and applies them in ``loss``, ``grad`` or ``prox`` mode.
"""

from regtorch.penalties import (
    L1,
    L2,
    MCP,
    SCAD,
    ElasticNet,
    GroupLasso,
    Lp,
    Penalty,
    Scaled,
    Sum,
    list_penalties,
    penalty_class,
    penalty_from_config,
)
from regtorch.regularizer._activity import ActivityRegularizer, ActivityStats, ModuleActivity
from regtorch.regularizer._explain import ParameterChoice, SelectionExplanation, explain_selection
from regtorch.regularizer._regularizer import AttachHandle, Regularizer, regularize
from regtorch.regularizer._rules import Rule
from regtorch.regularizer._selection import select_parameters
from regtorch.sparse._freeze import FrozenZeros, freeze_zeros
from regtorch.sparse._select_features import SelectFeatures
from regtorch.sparse._shrink import shrink, shrink_report
from regtorch.sparse._shrink_report import GroupShrink, LayerShrink, ShrinkReport
from regtorch.sparse._sparse_io import SparseSaveInfo, load_sparse, save_sparse
from regtorch.sparse._stats import ParameterStats, Stats, sparsity

__version__ = "0.1.0"

__all__ = [
    "L1",
    "L2",
    "MCP",
    "SCAD",
    "ActivityRegularizer",
    "ActivityStats",
    "AttachHandle",
    "ElasticNet",
    "FrozenZeros",
    "GroupLasso",
    "GroupShrink",
    "LayerShrink",
    "Lp",
    "ModuleActivity",
    "ParameterChoice",
    "ParameterStats",
    "Penalty",
    "Regularizer",
    "Rule",
    "Scaled",
    "SelectFeatures",
    "SelectionExplanation",
    "ShrinkReport",
    "SparseSaveInfo",
    "Stats",
    "Sum",
    "__version__",
    "explain_selection",
    "freeze_zeros",
    "list_penalties",
    "load_sparse",
    "penalty_class",
    "penalty_from_config",
    "regularize",
    "save_sparse",
    "select_parameters",
    "shrink",
    "shrink_report",
    "sparsity",
]
