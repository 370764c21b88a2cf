"""The group-norm family ``R(w) = λ Σ_g c_g‖w_g‖₂``: groupings, group norms and their three maps.

A *grouping* says which entries of a list of tensors form each group ``g`` (:class:`DimGroups`: one
index along a dimension, the norm over all others; :class:`WholeTensor`; :class:`IndexGroups`:
explicit groups of indices along a dimension; :class:`CoupledGroups`: groups spanning several
tensors, possibly overlapping). Everything else is written once, on the small tensors of group
norms ``n_g = ‖w_g‖₂``:

* value:     ``λ Σ_g c_g n_g`` (float64);
* gradient:  entries of group ``g`` times ``λ c_g / n_g`` (0 for a zero group);
* prox:      entries of group ``g`` times ``max(0, 1 − τ c_g / n_g)``, ``τ = tλ`` (block
  soft-thresholding: a group with ``n_g <= τ c_g`` becomes exactly zero, a zero group stays zero).

An entry in several groups (:class:`CoupledGroups`: a weight's output and input slices) is
multiplied by the factors of all of them. For the gradient that is ``Σ_g``-correct to first order
and exact for the prox only when groups do not overlap; whole groups still become exactly zero.

The tensor-sized work (sums of squares, scaling) has a reference (``_single_tensor_*``) and a
multi-tensor (``_multi_tensor_*``) implementation; the compiled kind runs the block
soft-threshold of a tensor that holds its own groups as one ``torch.compile``-d kernel.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from regtorch.kernels._choose import FAILED, Impl, compiled, compiled_eligible, group_by_device_and_dtype

__all__ = [
    "CoupledGroups",
    "CoupledMember",
    "DimGroups",
    "Grouping",
    "IndexGroups",
    "WholeTensor",
    "grad_factors",
    "prox_factors",
    "weighted_norm_sum",
]


# ----------------------------------------------------------------------------- the formulas
def weighted_norm_sum(norms: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``Σ_g c_g n_g`` in float64 (``c_g = 1`` without weights)."""
    norms = norms.to(torch.float64)
    return (norms if weights is None else norms * weights.to(norms.device, torch.float64)).sum()


def grad_factors(norms: torch.Tensor, strength: float, weights: torch.Tensor | None) -> torch.Tensor:
    """``λ c_g / n_g`` per group, 0 where ``n_g = 0``."""
    scale = strength if weights is None else strength * weights.to(norms.device, norms.dtype)
    return torch.where(norms > 0, scale / norms.clamp_min(1e-300), 0.0)


def prox_factors(norms: torch.Tensor, tau: float, weights: torch.Tensor | None) -> torch.Tensor:
    """``max(0, 1 − τ c_g / n_g)`` per group (0 for a zero group)."""
    threshold = tau if weights is None else tau * weights.to(norms.device, norms.dtype)
    return torch.where(norms > threshold, 1 - threshold / norms.clamp_min(1e-300), 0.0)


# ----------------------------------------------------------------------------- groupings
class Grouping(ABC):
    """How the entries of a list of tensors fall into groups (subclasses below).

    ``sumsq`` returns one float64 tensor of squared group norms per *holder* (a tensor for
    per-tensor groupings, the whole list for :class:`CoupledGroups`), ``scale_`` multiplies each
    entry by the factors of its groups, and ``sizes`` counts the entries of each group.
    """

    per_tensor = True
    """Whether each tensor holds its own groups (so a list's groups are the tensors' groups)."""

    def check(self, name: str, tensor: torch.Tensor) -> None:
        """Raise ``ValueError`` if ``tensor`` (parameter ``name``) cannot be grouped this way
        (every tensor fits unless a subclass says otherwise)."""
        return None

    @abstractmethod
    def sumsq(self, tensors: Sequence[torch.Tensor], impl: Impl) -> list[torch.Tensor]:
        """See the class docstring."""

    @abstractmethod
    def scale_(self, tensors: Sequence[torch.Tensor], factors: Sequence[torch.Tensor], impl: Impl) -> None:
        """See the class docstring."""

    def scaled(self, tensors: Sequence[torch.Tensor], factors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = [w.clone() for w in tensors]
        self.scale_(out, factors, "reference")
        return out

    @abstractmethod
    def sizes(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """See the class docstring."""

    @abstractmethod
    def describe(self) -> object:
        """See the class docstring."""


def _sumsq_along(w: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Squared norms over ``dims`` (kept, size 1), accumulated in float64."""
    if not dims:
        return w.to(torch.float64).square()
    return torch.linalg.vector_norm(w, 2, dim=dims, keepdim=True, dtype=torch.float64).square()


@dataclass(frozen=True)
class DimGroups(Grouping):
    """One group per index along ``dim`` of each tensor, its norm over all other dimensions.

    A 1-dimensional tensor grouped along dim 0 has one group per entry.
    """

    dim: int

    def reduce_dims(self, ndim: int) -> tuple[int, ...]:
        """The dimensions a group norm of an ``ndim``-dimensional tensor runs over."""
        dim = self.dim + ndim if self.dim < 0 else self.dim
        return tuple(d for d in range(ndim) if d != dim)

    def check(self, name: str, tensor: torch.Tensor) -> None:
        if not -tensor.ndim <= self.dim < max(tensor.ndim, 1):
            raise ValueError(
                f"groups along dimension {self.dim} need tensors with at least "
                f"{abs(self.dim) + (self.dim >= 0)} dimensions; parameter {name!r} has shape "
                f"{tuple(tensor.shape)}"
            )

    def sumsq(self, tensors, impl):
        return [_sumsq_along(w, self.reduce_dims(w.ndim)) for w in tensors]

    def scale_(self, tensors, factors, impl):
        _scale_(tensors, factors, impl)

    def sizes(self, tensors):
        """Every group of a tensor has the same size: one 0-dim tensor per tensor."""
        out = []
        for w in tensors:
            size = math.prod(w.shape[d] for d in self.reduce_dims(w.ndim))
            out.append(torch.tensor(float(size), dtype=torch.float64))
        return out

    def describe(self) -> object:
        return self.dim


@dataclass(frozen=True)
class WholeTensor(Grouping):
    """Each tensor is one group."""

    def reduce_dims(self, ndim: int) -> tuple[int, ...]:
        return tuple(range(ndim))

    def sumsq(self, tensors, impl):
        if impl == "foreach":
            out: list[torch.Tensor] = list(tensors)
            for indices in group_by_device_and_dtype(tensors):
                norms = torch._foreach_norm([tensors[i] for i in indices], 2, dtype=torch.float64)
                for i, n in zip(indices, norms, strict=True):
                    out[i] = n.square().reshape((1,) * tensors[i].ndim)
            return out
        return [_sumsq_along(w, tuple(range(w.ndim))).reshape((1,) * w.ndim) for w in tensors]

    def scale_(self, tensors, factors, impl):
        _scale_(tensors, factors, impl)

    def sizes(self, tensors):
        return [torch.tensor(float(w.numel()), dtype=torch.float64) for w in tensors]

    def describe(self) -> object:
        return "tensor"


def _ids_tensor(ids: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.int64)


def _spread(ids: torch.Tensor, factors: torch.Tensor, ndim: int, dim: int, missing: float) -> torch.Tensor:
    """Per-index factors ``factors[ids]`` (``missing`` where ``ids`` is -1), broadcasting along ``dim``."""
    ids = ids.to(factors.device)
    fill = torch.full((), missing, dtype=factors.dtype, device=factors.device)
    per_index = torch.where(ids >= 0, factors[ids.clamp_min(0)], fill)
    shape = [1] * ndim
    shape[dim] = -1
    return per_index.reshape(shape)


def _index_sumsq(w: torch.Tensor, dim: int, ids: torch.Tensor, acc: torch.Tensor) -> None:
    """Add the squared norm of each slice of ``w`` along ``dim`` into ``acc[ids]`` (ids -1 skipped)."""
    per_index = _sumsq_along(w, tuple(d for d in range(w.ndim) if d != dim)).reshape(-1).to(acc.device)
    ids = ids.to(acc.device)
    kept = ids >= 0
    acc.index_add_(0, ids[kept], per_index[kept])


@dataclass(frozen=True)
class IndexGroups(Grouping):
    """Explicit groups of indices along ``dim`` of each tensor (the group lasso of grouped features).

    ``group_ids[i]`` is the group of index ``i`` along ``dim`` (``-1``: in no group, not
    penalised). Each tensor holds its own ``num_groups`` groups.
    """

    dim: int
    group_ids: tuple[int, ...]
    num_groups: int

    @functools.cached_property
    def ids(self) -> torch.Tensor:
        """``group_ids`` as an ``int64`` tensor."""
        return _ids_tensor(self.group_ids)

    def ids_for(self, size: int) -> torch.Tensor:
        """The ids of ``size`` indices: indices past ``group_ids`` are in no group."""
        if size == len(self.group_ids):
            return self.ids
        return torch.cat([self.ids, torch.full((size - len(self.group_ids),), -1, dtype=torch.int64)])

    def _dim(self, ndim: int) -> int:
        return self.dim + ndim if self.dim < 0 else self.dim

    def check(self, name: str, tensor: torch.Tensor) -> None:
        fits = -tensor.ndim <= self.dim < max(tensor.ndim, 1)
        if not fits or tensor.shape[self._dim(tensor.ndim)] < len(self.group_ids):
            raise ValueError(
                f"explicit groups over {len(self.group_ids)} indices of dimension {self.dim} do not "
                f"fit parameter {name!r} of shape {tuple(tensor.shape)}"
            )

    def sumsq(self, tensors, impl):
        out = []
        for w in tensors:
            dim = self._dim(w.ndim)
            acc = torch.zeros(self.num_groups, dtype=torch.float64, device=w.device)
            _index_sumsq(w, dim, self.ids_for(w.shape[dim]), acc)
            out.append(acc)
        return out

    def scale_(self, tensors, factors, impl):
        spread = []
        for w, f in zip(tensors, factors, strict=True):
            dim = self._dim(w.ndim)
            spread.append(_spread(self.ids_for(w.shape[dim]), f, w.ndim, dim, 1.0))
        _scale_(tensors, spread, impl)

    def scaled(self, tensors, factors):
        out = []
        for w, f in zip(tensors, factors, strict=True):
            dim = self._dim(w.ndim)
            out.append(w * _spread(self.ids_for(w.shape[dim]), f, w.ndim, dim, 0.0).to(w.dtype))
        return out

    def sizes(self, tensors):
        counts = torch.bincount(self.ids[self.ids >= 0], minlength=self.num_groups).to(torch.float64)
        return [counts * (w.numel() // max(w.shape[self._dim(w.ndim)], 1)) for w in tensors]

    def describe(self) -> object:
        return {"dim": self.dim, "group_ids": list(self.group_ids)}


@dataclass(frozen=True)
class CoupledMember:
    """One tensor dimension taking part in :class:`CoupledGroups`.

    Attributes:
        index: Position of the tensor in the list the grouping acts on.
        dim: The dimension that is sliced.
        group_ids: One entry per index along ``dim``: the group the slice belongs to, or ``-1``.
    """

    index: int
    dim: int
    group_ids: tuple[int, ...]

    @functools.cached_property
    def ids(self) -> torch.Tensor:
        """``group_ids`` as an ``int64`` tensor."""
        return _ids_tensor(self.group_ids)


@dataclass(frozen=True)
class CoupledGroups(Grouping):
    """Groups spanning several tensors: slices of different parameters that are removed together.

    Group ``g``'s norm runs over every slice whose ``group_ids`` entry is ``g``, in every member; a
    tensor may take part with several dimensions (its output and its input slices), so groups
    overlap. The list the grouping acts on must be the tensors it was built for, in order.
    """

    members: tuple[CoupledMember, ...]
    num_groups: int
    shapes: tuple[tuple[int, ...], ...]
    labels: tuple[str, ...] = ()
    per_tensor = False

    def check_list(self, tensors: Sequence[torch.Tensor]) -> None:
        """Raise ``ValueError`` unless ``tensors`` are shaped as the tensors the groups were built for."""
        shapes = tuple(tuple(t.shape) for t in tensors)
        if shapes != self.shapes:
            raise ValueError(
                f"coupled groups were built for {len(self.shapes)} tensors of shapes {list(self.shapes)}; "
                f"got {len(shapes)} of shapes {list(shapes)}"
            )

    def sumsq(self, tensors, impl):
        self.check_list(tensors)
        acc = torch.zeros(self.num_groups, dtype=torch.float64, device=tensors[0].device)
        for m in self.members:
            _index_sumsq(tensors[m.index], m.dim, m.ids, acc)
        return [acc]

    def scale_(self, tensors, factors, impl):
        (f,) = factors
        for m in self.members:
            w = tensors[m.index]
            w.mul_(_spread(m.ids, f, w.ndim, m.dim, 1.0).to(w.device, w.dtype))

    def scaled(self, tensors, factors):
        self.check_list(tensors)
        (f,) = factors
        out = [torch.zeros_like(w) for w in tensors]
        for m in self.members:  # the gradient adds one term per group an entry belongs to
            w = tensors[m.index]
            out[m.index].add_(w * _spread(m.ids, f, w.ndim, m.dim, 0.0).to(w.device, w.dtype))
        return out

    def sizes(self, tensors):
        counts = torch.zeros(self.num_groups, dtype=torch.float64)
        for m in self.members:
            ids = m.ids[m.ids >= 0]
            shape = self.shapes[m.index]
            slice_numel = math.prod(shape) // max(shape[m.dim], 1)
            counts.index_add_(0, ids, torch.full((len(ids),), float(slice_numel), dtype=torch.float64))
        return [counts]

    def describe(self) -> object:
        return "coupled"


# ----------------------------------------------------------------------------- scaling kinds
def _single_tensor_scale_(tensors: Sequence[torch.Tensor], factors: Sequence[torch.Tensor]) -> None:
    for w, f in zip(tensors, factors, strict=True):
        w.mul_(f.to(w.dtype))


def _multi_tensor_scale_(tensors: Sequence[torch.Tensor], factors: Sequence[torch.Tensor]) -> None:
    for indices in group_by_device_and_dtype(tensors):
        ws = [tensors[i] for i in indices]
        torch._foreach_mul_(ws, [factors[i].to(ws[0].dtype) for i in indices])


def _scale_(tensors: Sequence[torch.Tensor], factors: Sequence[torch.Tensor], impl: Impl) -> None:
    if impl == "foreach":
        _multi_tensor_scale_(tensors, factors)
    else:
        _single_tensor_scale_(tensors, factors)


def _block_soft_threshold_kernel(w: torch.Tensor, threshold: torch.Tensor, dims: list[int]) -> None:
    norms = torch.linalg.vector_norm(w, 2, dim=dims, keepdim=True, dtype=torch.float64)
    factor = torch.where(norms > threshold, 1 - threshold / norms.clamp_min(1e-300), 0.0)
    w.mul_(factor.to(w.dtype))


_run_block_soft_threshold = compiled(_block_soft_threshold_kernel)


def compiled_block_soft_threshold_(w: torch.Tensor, tau: float, dims: tuple[int, ...]) -> bool:
    """Block soft-threshold ``w``'s own groups (norms over ``dims``) in one compiled kernel.

    Returns ``False`` (``w`` untouched) when ``w`` is not eligible or compilation failed.
    """
    if not compiled_eligible(w):
        return False
    threshold = torch.tensor(tau, dtype=torch.float64, device=w.device)
    return _run_block_soft_threshold(w, threshold, list(dims)) is not FAILED
