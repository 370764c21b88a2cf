"""Closed-form proxes of the elastic-net and group-lasso families, and of their sums, as data.

Every closed-form prox regtorch computes for these penalties is a composition of three maps, in
this order:

1. soft-thresholding by ``τ₁ = t·λ₁``: ``w ← sign(w)·max(|w| − τ₁, 0)`` (prox of ``λ₁‖w‖₁``);
2. block soft-thresholding by ``τ_g = t·λ_g·c_g``: ``w_g ← w_g·max(0, 1 − τ_g/‖w_g‖₂)``
   (prox of ``λ_g Σ_g c_g‖w_g‖₂``; a zero group stays zero);
3. shrinking: ``w ← w / (1 + 2tλ₂)`` (prox of ``λ₂‖w‖²``, no ½).

Steps 1 and 2 give the prox of the sparse group lasso (the group prox of the soft-thresholded
vector), and for any positively 1-homogeneous ``h``, ``prox_{t(h + λ₂‖·‖²)}(v) = prox_{th}(v) /
(1 + 2tλ₂)``, which adds step 3. A sum of penalties adds their plans (:meth:`ProxPlan.merge`),
which fails only when two group terms group differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from regtorch.kernels import Impl
from regtorch.kernels import elastic_net as en

if TYPE_CHECKING:
    from regtorch.penalties._group_lasso import GroupLasso

__all__ = ["ProxPlan"]


@dataclass(frozen=True)
class ProxPlan:
    """The closed-form prox of ``λ₁‖w‖₁ + λ_g Σ_g c_g‖w_g‖₂ + λ₂‖w‖²``.

    Attributes:
        l1: λ₁ of the L1 term.
        l2: λ₂ of the squared-L2 term (no ½).
        group: The group term (a :class:`~regtorch.GroupLasso`), or ``None``.
    """

    l1: float = 0.0
    l2: float = 0.0
    group: GroupLasso | None = None

    def merge(self, other: ProxPlan) -> ProxPlan | None:
        """Return the plan of the sum, or ``None`` if it has no closed form here."""
        group = self.group or other.group
        if self.group is not None and other.group is not None:
            group = self.group.plus(other.group)
            if group is None:
                return None
        return ProxPlan(l1=self.l1 + other.l1, l2=self.l2 + other.l2, group=group)

    def apply(
        self,
        tensors: Sequence[torch.Tensor],
        step: float,
        impl: Impl,
        group_norms: Sequence[torch.Tensor] | None = None,
        group_weights: Sequence[torch.Tensor | None] | None = None,
    ) -> None:
        """Apply ``prox_{step·R}`` in place.

        Args:
            tensors: Plain tensors (or local shards).
            step: ``t >= 0``.
            impl: The implementation kind.
            group_norms: The group term's norms when they reach beyond ``tensors`` (shards of one
                parameter on several ranks); computed from ``tensors`` otherwise.
            group_weights: The group term's weights ``c_g`` likewise.
        """
        divisor = 1.0 + 2.0 * step * self.l2
        if self.group is None or self.group.strength == 0:
            en.prox_(tensors, step * self.l1, divisor, impl)
            return
        en.prox_(tensors, step * self.l1, 1.0, impl)
        self.group.block_soft_threshold_(list(tensors), step, impl, norms=group_norms, weights=group_weights)
        en.prox_(tensors, 0.0, divisor, impl)
