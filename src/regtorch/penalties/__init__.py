"""Penalties: small stateless objects with ``value``, ``grad`` and ``prox`` on lists of tensors.

The registry (:func:`list_penalties`, :func:`penalty_class`, :func:`penalty_from_config`) lists every
penalty defined here or by a user's subclass that sets ``name``; the command line, logs and configs
learn the penalties from it. A penalty declares its arguments as :class:`Hyperparameter` attributes
with constraints (:class:`Interval`, :class:`Choice`, :class:`Boolean`).
"""

from regtorch._validation import Boolean, Choice, Hyperparameter, Interval
from regtorch.penalties._algebra import Scaled, Sum
from regtorch.penalties._base import Penalty, list_penalties, penalty_class, penalty_from_config
from regtorch.penalties._elastic_net import L1, L2, ElasticNet
from regtorch.penalties._elementwise import ElementwisePenalty
from regtorch.penalties._group_lasso import GroupLasso
from regtorch.penalties._lp import Lp
from regtorch.penalties._mcp import MCP
from regtorch.penalties._prox_plan import ProxPlan
from regtorch.penalties._scad import SCAD

__all__ = [
    "L1",
    "L2",
    "MCP",
    "SCAD",
    "Boolean",
    "Choice",
    "ElasticNet",
    "ElementwisePenalty",
    "GroupLasso",
    "Hyperparameter",
    "Interval",
    "Lp",
    "Penalty",
    "ProxPlan",
    "Scaled",
    "Sum",
    "list_penalties",
    "penalty_class",
    "penalty_from_config",
]
