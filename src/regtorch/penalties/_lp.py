"""The p-norm penalty Lp (kernels in :mod:`regtorch.kernels.power`; p = 1, 2 in closed form)."""

from __future__ import annotations

import torch

from regtorch._validation import Boolean, Hyperparameter, Interval
from regtorch.kernels import Impl, power
from regtorch.kernels import elastic_net as en
from regtorch.penalties._base import Penalty
from regtorch.penalties._prox_plan import ProxPlan

__all__ = ["Lp"]


class Lp(Penalty):
    """The p-norm penalty ``R(w) = λ Σ|wᵢ|^p`` (p >= 1), or with ``root=True`` ``λ‖w‖_p``.

    With ``root=True`` the norm is taken per tensor: ``R(w₁, …, w_k) = λ Σᵢ ‖wᵢ‖_p``.

    * gradient: ``λp·|w|^(p−1)·sign(w)``; with ``root=True`` ``λ·sign(w)|w|^(p−1) / ‖w‖_p^(p−1)``
      (0 for a zero tensor);
    * prox: closed forms for p = 1 (soft-threshold) and p = 2 (``w/(1 + 2tλ)``; with ``root=True``
      block soft-threshold of the whole tensor). For other p without root, each element solves
      ``x + tλp·x^(p−1) = |w|`` (x in [0, |w|]) by vectorised bisection to float64 precision;
      ``root=True`` with other p has no closed form and prox mode refuses it.

    Args:
        p: The exponent, p >= 1.
        strength: λ >= 0.
        root: Penalise the norm itself instead of its p-th power.
    """

    name = "Lp"
    linear_in_strength = True
    p = Hyperparameter(Interval(low=1.0), doc="the exponent p >= 1")
    strength = Hyperparameter(Interval(low=0.0), scales=True, doc="λ")
    root = Hyperparameter(Boolean(), doc="penalise ‖w‖_p instead of Σ|w|^p")

    def __init__(self, p: float, strength: float, *, root: bool = False) -> None:
        self.p = p
        self.strength = strength
        self.root = root

    @property
    def elementwise(self) -> bool:  # type: ignore[override]
        """Without ``root`` the penalty is a sum over entries."""
        return not self.root

    def _closed_form(self) -> ProxPlan | None:
        if self.p == 1.0:
            return ProxPlan(l1=self.strength)
        if self.p == 2.0 and not self.root:
            return ProxPlan(l2=self.strength)
        if self.p == 2.0:
            from regtorch.penalties._group_lasso import GroupLasso

            return ProxPlan(group=GroupLasso(self.strength, groups="tensor"))
        return None

    def prox_plan(self) -> ProxPlan | None:
        return self._closed_form()

    @property
    def supports_prox(self) -> bool:
        return not self.root or self._closed_form() is not None

    def _value(self, tensors: list[torch.Tensor], impl: Impl) -> torch.Tensor:
        if self.p == 1.0 or (self.p == 2.0 and not self.root):
            plan = self._closed_form()
            assert plan is not None
            return en.value(tensors, plan.l1, plan.l2, impl)
        return power.value(tensors, self.p, self.strength, self.root, impl)

    def _grad(self, tensors, impl):
        return power.grad(tensors, self.p, self.strength, self.root, impl)

    def _prox(self, tensors, step, impl):
        plan = self._closed_form()
        if plan is not None:
            plan.apply(tensors, step, impl)
        elif self.root:
            raise ValueError(
                f"Lp(p={self.p:g}, root=True) has a closed-form proximal operator only for p = 1 "
                "and p = 2, so mode='prox' cannot apply it; use mode='loss' or mode='grad'."
            )
        else:
            power.prox_(tensors, self.p, step * self.strength * self.p, impl)
