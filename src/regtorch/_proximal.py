"""Closed-form proximal operators, applied in place, each as a reference and a multi-tensor path.

Every prox regtorch computes in closed form is a composition of three maps, in this order
(the composition is exact for these penalties; see :class:`ProxPlan`):

1. soft-thresholding by ``τ₁ = t·λ₁``:   ``w ← sign(w)·max(|w| − τ₁, 0)``  (prox of ``λ₁‖w‖₁``);
2. block soft-thresholding by ``τ_g = t·λ_g``:  ``w_g ← w_g·max(0, 1 − τ_g/‖w_g‖₂)``
   (prox of ``λ_g Σ_g ‖w_g‖₂``; a zero group stays zero);
3. shrinking by ``1 + 2·t·λ₂``:  ``w ← w / (1 + 2tλ₂)``  (prox of ``λ₂‖w‖²``, no ½).

Steps 1 and 2 give the prox of the sparse group lasso (the group prox of the soft-thresholded
vector), and for any positively 1-homogeneous ``h``, ``prox_{t(h + λ₂‖·‖²)}(v) = prox_{th}(v) /
(1 + 2tλ₂)``, which adds step 3.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from regtorch._fused import fused_prox_
from regtorch._reductions import group_by_device_and_dtype

__all__ = [
    "GroupSpec",
    "ProxPlan",
    "apply_prox_plan",
    "block_soft_threshold_",
    "group_reduce_dims",
    "shrink_",
    "soft_threshold_",
    "without_grad",
]

GroupSpec = str | int
"""``"rows"``, ``"columns"``, ``"filters"``, ``"channels"``, ``"tensor"`` or a dimension index."""

_NAMED_DIMS = {"rows": 0, "filters": 0, "columns": 1, "channels": 1}


def without_grad() -> contextlib.AbstractContextManager:
    """``torch.no_grad()``, or a no-op context when grad mode is already off (cheaper per call)."""
    return torch.no_grad() if torch.is_grad_enabled() else contextlib.nullcontext()


def group_reduce_dims(spec: GroupSpec, ndim: int) -> tuple[int, ...]:
    """Return the dimensions a group norm reduces over for a tensor of ``ndim`` dimensions.

    A group is one index along the group dimension (``rows``/``filters`` = 0, ``columns``/
    ``channels`` = 1, or an int), so its norm runs over every other dimension; ``"tensor"`` makes
    the whole tensor one group. A 1-dimensional tensor grouped by rows has one group per element.
    """
    if spec == "tensor":
        return tuple(range(ndim))
    dim = _NAMED_DIMS[spec] if isinstance(spec, str) else spec
    if dim < 0:
        dim += ndim
    return tuple(d for d in range(ndim) if d != dim)


def group_norms(tensor: torch.Tensor, spec: GroupSpec) -> torch.Tensor:
    """Return the Euclidean norm of each group of ``tensor``, with the reduced dims kept (size 1)."""
    dims = group_reduce_dims(spec, tensor.ndim)
    if not dims:
        return tensor.abs()
    return torch.linalg.vector_norm(tensor, 2, dim=dims, keepdim=True)


def soft_threshold_(tensors: Sequence[torch.Tensor], threshold: float, *, foreach: bool = False) -> None:
    """Soft-threshold in place: ``w ← sign(w)·max(|w| − threshold, 0)``.

    The multi-tensor path computes the same numbers as ``w − clamp(w, −τ, τ)``, which is exact in
    floating point (the Torch7 recipe, without its in-place bug).
    """
    if threshold <= 0 or not tensors:
        return
    if not foreach:
        for w in tensors:  # softshrink written in place: one read and one write
            torch.ops.aten.softshrink.out(w, threshold, out=w)
        return
    for indices in group_by_device_and_dtype(tensors).values():
        group = [tensors[i] for i in indices]
        clipped = torch._foreach_clamp_min(group, -threshold)
        torch._foreach_clamp_max_(clipped, threshold)
        torch._foreach_sub_(group, clipped)


def shrink_(tensors: Sequence[torch.Tensor], divisor: float, *, foreach: bool = False) -> None:
    """Divide in place: ``w ← w / divisor`` (the prox of ``λ‖w‖²`` with ``divisor = 1 + 2tλ``)."""
    if divisor == 1.0 or not tensors:
        return
    if not foreach:
        for w in tensors:
            w.div_(divisor)
        return
    for indices in group_by_device_and_dtype(tensors).values():
        torch._foreach_div_([tensors[i] for i in indices], divisor)


GroupNormsFn = Callable[[Sequence[torch.Tensor], GroupSpec], Sequence[torch.Tensor]]
"""``f(tensors, spec) -> norms``: what :func:`group_norms` computes, for groups reaching beyond the
tensors (sharded tensors: a group's squares summed over the ranks it spans)."""


def block_soft_threshold_(
    tensors: Sequence[torch.Tensor],
    threshold: float,
    spec: GroupSpec,
    *,
    norms: Sequence[torch.Tensor] | None = None,
) -> None:
    """Block soft-threshold each group in place: ``w_g ← w_g·max(0, 1 − threshold/‖w_g‖₂)``.

    A group whose norm is at most ``threshold`` becomes exactly zero; a zero group stays zero.
    ``norms`` gives each tensor's group norms (dims kept, as :func:`group_norms` returns them)
    instead of computing them from the tensor.
    """
    if threshold <= 0:
        return
    for index, w in enumerate(tensors):
        norms_w = group_norms(w, spec) if norms is None else norms[index]
        factor = torch.where(
            norms_w > threshold, 1 - threshold / norms_w.clamp_min(threshold), torch.zeros_like(norms_w)
        )
        w.mul_(factor)


def _norms_for(
    tensors: Sequence[torch.Tensor], threshold: float, spec: GroupSpec, group_norms_fn: GroupNormsFn | None
) -> Sequence[torch.Tensor] | None:
    if group_norms_fn is None or threshold <= 0:
        return None
    return group_norms_fn(tensors, spec)


@dataclass(frozen=True)
class ProxPlan:
    """The closed-form prox of ``λ₁‖w‖₁ + λ_g Σ_g‖w_g‖₂ + λ₂‖w‖²`` as data.

    Penalties that have such a prox describe it with a plan; a sum of penalties adds their plans
    (:meth:`merge`), which fails only when two group terms group differently.

    Attributes:
        l1: λ₁ of the L1 term.
        l2: λ₂ of the squared-L2 term (no ½).
        group: λ_g of the group term.
        group_spec: How the group term groups (``None`` when ``group == 0``).
    """

    l1: float = 0.0
    l2: float = 0.0
    group: float = 0.0
    group_spec: GroupSpec | None = None

    def merge(self, other: ProxPlan) -> ProxPlan | None:
        """Return the plan of the sum, or ``None`` if it has no closed form here."""
        if self.group and other.group and self.group_spec != other.group_spec:
            return None
        return ProxPlan(
            l1=self.l1 + other.l1,
            l2=self.l2 + other.l2,
            group=self.group + other.group,
            group_spec=self.group_spec if self.group else other.group_spec,
        )


def apply_prox_plan(
    tensors: Sequence[torch.Tensor],
    step: float,
    plan: ProxPlan,
    *,
    foreach: bool = False,
    fused: bool = False,
    group_norms_fn: GroupNormsFn | None = None,
) -> None:
    """Apply ``prox_{step·R}`` in place for the penalty ``R`` described by ``plan``.

    With ``fused=True`` the element-wise part runs as one compiled kernel per tensor
    (:mod:`regtorch._fused`); tensors it cannot take fall back to the eager kernels.
    ``group_norms_fn`` replaces :func:`group_norms` in the group step (sharded tensors).
    """
    divisor = 1.0 + 2.0 * step * plan.l2
    has_group = bool(plan.group) and plan.group_spec is not None
    with without_grad():
        rest = list(tensors)
        if fused and (plan.l1 or plan.l2):
            # soft-threshold (and divide, when no group step sits in between) in one kernel
            left = fused_prox_(tensors, step * plan.l1, 1.0 if has_group else divisor)
            rest = [tensors[i] for i in left]
        soft_threshold_(rest, step * plan.l1, foreach=foreach)
        if has_group:
            threshold = step * plan.group
            norms = _norms_for(tensors, threshold, plan.group_spec, group_norms_fn)
            block_soft_threshold_(tensors, threshold, plan.group_spec, norms=norms)
            shrink_(tensors, divisor, foreach=foreach)
        else:
            shrink_(rest, divisor, foreach=foreach)
