"""Group lasso: ``R(w) = λ Σ_g ‖w_g‖₂`` over the groups of each tensor."""

from __future__ import annotations

from typing import Any

import torch

from regtorch._distributed import full_group_norms, is_dtensor
from regtorch._elementwise import _Strength
from regtorch._penalty import Penalty
from regtorch._proximal import GroupSpec, ProxPlan, group_norms, group_reduce_dims
from regtorch._validation import check_choice

__all__ = ["GroupLasso"]

GROUP_NAMES = ("rows", "columns", "filters", "channels", "tensor")


class GroupLasso(Penalty):
    """The group lasso ``R(w) = λ Σ_g ‖w_g‖₂`` (no weighting by group size).

    A group is one index along a dimension of a tensor, with the norm taken over all other
    dimensions:

    ======================  =======  ================================================================
    ``groups``              dim      meaning
    ======================  =======  ================================================================
    ``"rows"`` (default)    0        Linear output neurons ``W[i, :]``; Embedding rows
    ``"columns"``           1        Linear input features ``W[:, j]``
    ``"filters"``           0        Conv output filters ``W[o, :, :, :]``
    ``"channels"``          1        Conv input channels ``W[:, c, :, :]``
    ``int d``               d        slices along ``d``
    ``"tensor"``            —        the whole tensor is one group
    ======================  =======  ================================================================

    A 1-dimensional tensor (a bias) grouped by rows has one group per element.

    * (sub)gradient: ``λ·w_g/‖w_g‖₂``, 0 for a zero group;
    * prox with step ``t``: block soft-thresholding ``w_g·max(0, 1 − tλ/‖w_g‖₂)`` — whole groups
      become exactly zero (dead neurons, removable filters).

    Args:
        strength: λ >= 0.
        groups: How each tensor is split into groups (see the table).
    """

    name = "GroupLasso"
    homogeneous = True
    strength = _Strength()

    def __init__(self, strength: float, groups: GroupSpec = "rows") -> None:
        self.strength = strength
        if isinstance(groups, bool) or not isinstance(groups, (str, int)):
            raise TypeError(
                "The 'groups' argument of GroupLasso must be one of 'rows', 'columns', "
                f"'filters', 'channels', 'tensor' or an int dimension; got {groups!r}."
            )
        if isinstance(groups, str):
            check_choice("GroupLasso", "groups", groups, GROUP_NAMES)
        self.groups: GroupSpec = groups

    def _group_dim(self) -> int | None:
        if self.groups == "tensor":
            return None
        if isinstance(self.groups, int):
            return self.groups
        return 0 if self.groups in ("rows", "filters") else 1

    def check_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Raise ``ValueError`` if ``tensor`` has no dimension to group along."""
        dim = self._group_dim()
        if dim is None:
            return
        if not -tensor.ndim <= dim < max(tensor.ndim, 1):
            raise ValueError(
                f"GroupLasso(groups={self.groups!r}) groups along dimension {dim}, so it needs "
                f"tensors with at least {abs(dim) + (dim >= 0)} dimensions; parameter {name!r} has "
                f"shape {tuple(tensor.shape)}. Select fewer parameters (e.g. params='weights')."
            )

    def norms(self, tensor: torch.Tensor) -> torch.Tensor:
        """Return ``‖w_g‖₂`` for each group of ``tensor`` as a 1-D tensor.

        For a sharded parameter (FSDP2 ``DTensor``) every group's norm over all ranks, the same on
        every rank (a collective: call it on every rank).
        """
        if is_dtensor(tensor):
            dims = group_reduce_dims(self.groups, tensor.ndim)
            return full_group_norms(tensor, dims).to(tensor.dtype).reshape(-1)
        return group_norms(tensor.detach(), self.groups).reshape(-1)

    def group_dims(self, ndim: int) -> tuple[int, ...]:
        """Return the dims each group norm of an ``ndim``-dim tensor reduces over."""
        return group_reduce_dims(self.groups, ndim)

    def _value_from_norms(self, norms: torch.Tensor) -> torch.Tensor:
        return self.strength * norms.to(torch.float64).sum()

    def _grad_from_norms(self, tensor: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        scale = torch.where(norms > 0, self.strength / norms.clamp_min(1e-38), 0.0)
        return tensor * scale.to(tensor.dtype)

    def _value_one(self, tensor: torch.Tensor) -> torch.Tensor:
        wide = tensor.detach().to(torch.float64) if tensor.dtype != torch.float64 else tensor
        return self._value_from_norms(group_norms(wide, self.groups))

    def _grad_one(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._grad_from_norms(tensor, group_norms(tensor, self.groups))

    def prox_plan(self) -> ProxPlan:
        return ProxPlan(group=self.strength, group_spec=self.groups)

    def scaled(self, factor: float) -> GroupLasso:
        return GroupLasso(self.strength * factor, groups=self.groups)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "strength": self.strength, "groups": self.groups}

    def group_count(self, tensor: torch.Tensor) -> int:
        """Return how many groups ``tensor`` has."""
        dims = group_reduce_dims(self.groups, tensor.ndim)
        count = 1
        for d in range(tensor.ndim):
            if d not in dims:
                count *= tensor.shape[d]
        return count
