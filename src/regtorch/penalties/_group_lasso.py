"""Group lasso: ``R(w) = λ Σ_g c_g‖w_g‖₂`` over groups of entries (kernels: :mod:`regtorch.kernels.group`)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch

from regtorch._validation import Hyperparameter, Interval
from regtorch.kernels import Impl
from regtorch.kernels import group as kg
from regtorch.penalties._base import Penalty
from regtorch.penalties._prox_plan import ProxPlan

__all__ = ["GROUP_NAMES", "GroupLasso"]

GROUP_NAMES = ("rows", "columns", "filters", "channels", "tensor", "coupled")
_NAMES = ", ".join(map(repr, GROUP_NAMES))
_NAMED_DIMS = {"rows": 0, "filters": 0, "columns": 1, "channels": 1}
_MIN_NDIM = {"rows": 2, "columns": 2, "filters": 3, "channels": 3}
_KIND = {"rows": "a matrix (Linear, Embedding)", "columns": "a matrix (Linear, Embedding)",
         "filters": "a convolution weight", "channels": "a convolution weight"}  # fmt: skip

GroupSpec = str | int | Sequence[Sequence[int]] | torch.Tensor


def _explicit_ids(groups: Any) -> tuple[int, ...] | None:
    """Group ids per index from a tensor of ids or a list of index lists; ``None`` for other specs."""
    if isinstance(groups, torch.Tensor):
        if groups.ndim != 1 or groups.dtype.is_floating_point or groups.dtype == torch.bool:
            raise TypeError(
                "The 'groups' argument of GroupLasso takes a 1-D integer tensor of group ids; got a "
                f"{groups.dtype} tensor of shape {tuple(groups.shape)}."
            )
        ids = tuple(int(i) for i in groups.tolist())
    elif isinstance(groups, (list, tuple)) and all(isinstance(g, (list, tuple)) for g in groups):
        size = 1 + max((int(i) for g in groups for i in g), default=-1)
        found = [-1] * size
        for gid, members in enumerate(groups):
            for i in members:
                if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                    raise ValueError(
                        f"The 'groups' argument of GroupLasso must hold lists of indices >= 0; got {i!r}."
                    )
                if found[i] != -1:
                    raise ValueError(
                        f"The 'groups' argument of GroupLasso puts index {i} in groups {found[i]} and {gid}; "
                        "each index may belong to one group."
                    )
                found[i] = gid
        ids = tuple(found)
    else:
        return None
    if any(i < -1 for i in ids) or not ids:
        raise ValueError(f"The 'groups' argument of GroupLasso must give group ids >= -1; got {list(ids)}.")
    return ids


class GroupLasso(Penalty):
    """The group lasso ``R(w) = λ Σ_g c_g‖w_g‖₂`` (``c_g = 1`` unless ``weights`` says otherwise).

    ``groups`` says which entries form a group:

    ==========================  =========================================================================
    ``groups``                  a group is
    ==========================  =========================================================================
    ``"rows"`` (default)        a row ``W[i, :]`` of a matrix: a Linear output neuron, an Embedding row
    ``"columns"``               a column ``W[:, j]``: a Linear input feature
    ``"filters"``               a convolution's output filter ``W[o, :, :, :]``
    ``"channels"``              a convolution's input channel ``W[:, c, :, :]``
    ``int d``                   one index along dimension ``d``, the norm over all others
    ``"tensor"``                the whole tensor
    index lists or a tensor     explicit groups of indices along ``dim`` (default the last: a Linear's
                                inputs, a coefficient vector's entries): ``[[0, 1, 2], [3, 4]]``, or
                                one group id per index (``-1``: not penalised). Each tensor gets these
                                groups.
    ``"coupled"``               the coupled channels of a model: every parameter slice removed with a
                                channel (see :class:`~regtorch.Regularizer`'s ``example_input``)
    ==========================  =========================================================================

    ``"rows"``/``"columns"`` need tensors with 2+ dimensions and ``"filters"``/``"channels"``
    convolution weights (3+): a parameter that does not fit is refused by name.

    * (sub)gradient: ``λc_g·w_g/‖w_g‖₂``, 0 for a zero group;
    * prox with step ``t``: block soft-thresholding ``w_g·max(0, 1 − tλc_g/‖w_g‖₂)`` — whole groups
      become exactly zero (dead neurons, removable filters).

    Args:
        strength: λ >= 0.
        groups: How entries are grouped (see the table).
        dim: The dimension explicit groups index (default ``-1``).
        weights: ``None`` (``c_g = 1``), ``"sqrt"`` (``c_g = √|g|``, the number of entries of the
            group: the weighting of Yuan & Lin's group lasso, of skglm's examples and the default of
            the ``group-lasso`` package), or one non-negative weight per group (explicit and coupled
            groups).
    """

    name = "GroupLasso"
    linear_in_strength = True
    strength = Hyperparameter(Interval(low=0.0), scales=True, doc="λ")

    def __init__(
        self,
        strength: float,
        groups: GroupSpec = "rows",
        *,
        dim: int | None = None,
        weights: str | Sequence[float] | None = None,
    ) -> None:
        self.strength = strength
        ids = _explicit_ids(groups)
        if ids is None:
            if isinstance(groups, bool) or not isinstance(groups, (str, int)):
                raise TypeError(
                    f"The 'groups' argument of GroupLasso must be one of {_NAMES}, an int dimension, index "
                    f"lists or a tensor of group ids; got {groups!r}."
                )
            if isinstance(groups, str) and groups not in GROUP_NAMES:
                raise ValueError(
                    f"The 'groups' argument of GroupLasso must be one of {_NAMES}, an int dimension, index "
                    f"lists or a tensor of group ids; got {groups!r}."
                )
            if dim is not None:
                raise ValueError(
                    f"The 'dim' argument of GroupLasso goes with explicit groups; got dim={dim!r} with "
                    f"groups={groups!r}."
                )
        elif dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
            raise TypeError(f"The 'dim' argument of GroupLasso must be an int; got {dim!r}.")
        self.groups: Any = groups if ids is None else [list(g) for g in _lists(ids)]
        self.dim = dim if ids is not None and dim is not None else (-1 if ids is not None else None)
        self.weights = _check_weights(weights)
        self._grouping: kg.Grouping | None = None
        if ids is not None:
            self._grouping = kg.IndexGroups(-1 if self.dim is None else self.dim, ids, 1 + max(ids))
        elif groups == "tensor":
            self._grouping = kg.WholeTensor()
        elif groups != "coupled":
            self._grouping = kg.DimGroups(_NAMED_DIMS.get(groups, groups))  # type: ignore[arg-type]
        if (
            isinstance(self.weights, list)
            and not isinstance(self._grouping, kg.IndexGroups)
            and groups != "coupled"
        ):
            raise ValueError(
                "The 'weights' argument of GroupLasso takes one weight per group only with explicit or "
                f"coupled groups (a fixed number of groups); got {len(self.weights)} weights with "
                f"groups={groups!r}."
            )
        if isinstance(self._grouping, kg.IndexGroups) and isinstance(self.weights, list):
            _check_count(len(self.weights), self._grouping.num_groups)

    # ----------------------------------------------------------------- grouping
    @property
    def grouping(self) -> kg.Grouping:
        """The resolved grouping (coupled groups once bound to a model)."""
        if self._grouping is None:
            raise ValueError(
                "GroupLasso(groups='coupled') finds its groups by tracing a model: build "
                "Regularizer(model, penalty, example_input=x), which binds them."
            )
        return self._grouping

    def bind(self, grouping: kg.CoupledGroups) -> GroupLasso:
        """Return this coupled penalty with the groups a model's dependency graph gave."""
        if self.groups != "coupled":
            raise ValueError(
                f"bind() is for GroupLasso(groups='coupled'); this one has groups={self.groups!r}."
            )
        if isinstance(self.weights, list):
            _check_count(len(self.weights), grouping.num_groups)
        bound = GroupLasso(self.strength, "coupled", weights=self.weights)
        bound._grouping = grouping
        return bound

    def check_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Raise ``ValueError`` naming parameter ``name`` if its shape does not fit the grouping."""
        if isinstance(self.groups, str) and self.groups in _MIN_NDIM and tensor.ndim < _MIN_NDIM[self.groups]:
            raise ValueError(
                f"GroupLasso(groups={self.groups!r}) groups {_KIND[self.groups]}; parameter {name!r} has "
                f"shape {tuple(tensor.shape)}. Leave it out (exclude=) or give it its own rule."
            )
        if self._grouping is not None:
            try:
                self._grouping.check(name, tensor)
            except ValueError as error:
                raise ValueError(f"GroupLasso(groups={self.groups!r}): {error}.") from None

    def plus(self, other: GroupLasso) -> GroupLasso | None:
        """The sum with another group lasso of the same groups and weights, else ``None``."""
        if self.grouping != other.grouping or self.weights != other.weights:
            return None
        merged = copy.copy(self)
        merged.strength = self.strength + other.strength
        return merged

    def group_weights(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        """``c_g`` for each holder of groups (each tensor, or the list for coupled groups).

        Only the tensors' shapes are read (``meta`` tensors of a sharded parameter's global shape
        will do).
        """
        if self.weights is None:
            return [None] * (len(tensors) if self.grouping.per_tensor else 1)
        if self.weights == "sqrt":
            return [s.sqrt() for s in self.grouping.sizes(tensors)]
        return [torch.tensor(self.weights, dtype=torch.float64)] * (
            len(tensors) if self.grouping.per_tensor else 1
        )

    def sumsq(self, tensors: Sequence[torch.Tensor], impl: Impl = "reference") -> list[torch.Tensor]:
        """Squared group norms (float64) per holder of groups."""
        return self.grouping.sumsq(tensors, impl)

    # ----------------------------------------------------------------- kernels
    def value_from_norms(
        self, norms: Sequence[torch.Tensor], weights: Sequence[torch.Tensor | None]
    ) -> torch.Tensor:
        """``λ Σ_g c_g n_g`` from group norms (one tensor per holder of groups), in float64."""
        device = norms[0].device if norms else torch.device("cpu")
        total = torch.zeros((), dtype=torch.float64, device=device)
        for n, c in zip(norms, weights, strict=True):
            total = total + kg.weighted_norm_sum(n, c).to(device)
        return self.strength * total

    def grad_from_norms(
        self,
        tensors: Sequence[torch.Tensor],
        norms: Sequence[torch.Tensor],
        weights: Sequence[torch.Tensor | None],
    ) -> list[torch.Tensor]:
        """``λc_g·w_g/‖w_g‖`` (0 for a zero group) from the group norms."""
        factors = [kg.grad_factors(n, self.strength, c) for n, c in zip(norms, weights, strict=True)]
        return self.grouping.scaled(tensors, factors)

    def block_soft_threshold_(
        self,
        tensors: list[torch.Tensor],
        step: float,
        impl: Impl,
        norms: Sequence[torch.Tensor] | None = None,
        weights: Sequence[torch.Tensor | None] | None = None,
    ) -> None:
        """``w_g ← w_g·max(0, 1 − tλc_g/‖w_g‖)`` in place.

        ``norms`` and ``weights`` are computed from ``tensors`` unless given (shards of a parameter
        pass the global ones).
        """
        tau = step * self.strength
        if tau <= 0 or not tensors:
            return
        grouping = self.grouping
        if (
            impl == "compiled"
            and norms is None
            and self.weights is None
            and isinstance(grouping, kg.DimGroups)
        ):
            rest = [
                w
                for w in tensors
                if not kg.compiled_block_soft_threshold_(w, tau, grouping.reduce_dims(w.ndim))
            ]
            if not rest:
                return
            tensors, impl = rest, "reference"
        if norms is None:
            norms = [s.sqrt() for s in grouping.sumsq(tensors, impl)]
        if weights is None:
            weights = self.group_weights(tensors)
        factors = [kg.prox_factors(n, tau, c) for n, c in zip(norms, weights, strict=True)]
        grouping.scale_(tensors, factors, impl)

    def _value(self, tensors, impl):
        norms = [s.sqrt() for s in self.grouping.sumsq(tensors, impl)]
        return self.value_from_norms(norms, self.group_weights(tensors))

    def _grad(self, tensors, impl):
        norms = [s.sqrt() for s in self.grouping.sumsq(tensors, impl)]
        return self.grad_from_norms(tensors, norms, self.group_weights(tensors))

    def _prox(self, tensors, step, impl):
        self.block_soft_threshold_(tensors, step, impl)

    def prox_plan(self) -> ProxPlan:
        return ProxPlan(group=self)

    # ----------------------------------------------------------------- inspection and config
    def norms(self, tensor: torch.Tensor) -> torch.Tensor:
        """Return ``‖w_g‖₂`` for each group of ``tensor`` as a 1-D tensor.

        For a sharded parameter (FSDP2 ``DTensor``) every group's norm over all ranks, the same on
        every rank (a collective: call it on every rank).
        """
        from regtorch.distributed._detect import is_dtensor

        if is_dtensor(tensor):
            from regtorch.distributed._sharded import full_group_norms

            return full_group_norms(self, tensor).reshape(-1)
        (sumsq,) = self.grouping.sumsq([tensor.detach()], "reference")
        return sumsq.sqrt().to(tensor.dtype).reshape(-1)

    def group_count(self, tensor: torch.Tensor) -> int:
        """Return how many groups ``tensor`` has."""
        (sumsq,) = self.grouping.sumsq([tensor.detach()], "reference")
        return sumsq.numel()

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"name": self.name, "strength": self.strength, "groups": self.groups}
        if self.dim is not None:
            config["dim"] = self.dim
        if self.weights is not None:
            config["weights"] = self.weights
        return config

    def __repr__(self) -> str:
        shown = {k: repr(v) for k, v in self.get_config().items() if k != "name"}
        if isinstance(self.groups, list) and len(self.groups) > 4:
            shown["groups"] = f"<{len(self.groups)} index groups>"
        return "GroupLasso(" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")"


def _lists(ids: tuple[int, ...]) -> list[list[int]]:
    groups: list[list[int]] = [[] for _ in range(1 + max(ids))]
    for index, gid in enumerate(ids):
        if gid >= 0:
            groups[gid].append(index)
    return groups


def _check_weights(weights: Any) -> str | list[float] | None:
    if weights is None or weights == "sqrt":
        return weights
    if isinstance(weights, torch.Tensor):
        weights = weights.tolist()
    if isinstance(weights, (list, tuple)) and all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
        for w in weights
    ):
        return [float(w) for w in weights]
    raise ValueError(
        "The 'weights' argument of GroupLasso must be None, 'sqrt' or a sequence of finite floats >= 0 "
        f"(one per group); got {weights!r}."
    )


def _check_count(got: int, groups: int) -> None:
    if got != groups:
        raise ValueError(
            f"The 'weights' argument of GroupLasso must give one weight per group: {groups} groups; "
            f"got {got}."
        )
