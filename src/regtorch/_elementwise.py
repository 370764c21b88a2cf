"""Element-wise penalties: L1, L2, ElasticNet and Lp."""

from __future__ import annotations

from typing import Any

import torch

from regtorch._penalty import NON_NEGATIVE, Penalty
from regtorch._proximal import ProxPlan
from regtorch._reductions import sum_abs, sum_abs_pow, sum_square
from regtorch._validation import Interval, check_real

__all__ = ["L1", "L2", "ElasticNet", "Lp"]


class _Strength:
    """A validated non-negative float attribute (strengths may change during training)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.slot = "_" + name

    def __get__(self, obj: Any, objtype: type | None = None) -> float:
        if obj is None:
            return self  # type: ignore[return-value]
        return getattr(obj, self.slot)

    def __set__(self, obj: Any, value: float) -> None:
        setattr(obj, self.slot, check_real(type(obj).__name__, self.name, value, NON_NEGATIVE))


class L1(Penalty):
    """The lasso penalty ``R(w) = λ Σ|wᵢ|``.

    * (sub)gradient: ``λ·sign(w)``, taken as 0 at ``w = 0``;
    * prox with step ``t``: soft-thresholding ``sign(w)·max(|w| − tλ, 0)`` — exact zeros.

    Args:
        strength: λ >= 0 (Keras' ``l1``; scikit-learn's ``alpha`` for a data term ½·MSE).

    Examples:
        >>> L1(0.1).value(torch.tensor([1.0, -2.0]))
        tensor(0.3000)
    """

    name = "L1"
    homogeneous = True
    strength = _Strength()

    def __init__(self, strength: float) -> None:
        self.strength = strength

    def _value_one(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.strength * sum_abs(tensor)

    def _grad_one(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.sign(tensor).mul_(self.strength)

    def _add_grad_one_(self, tensor, grad, alpha):
        grad.add_(torch.sign(tensor), alpha=alpha * self.strength)

    def _add_grad_many_(self, tensors, grads, alpha):
        torch._foreach_add_(grads, torch._foreach_sign(tensors), alpha=alpha * self.strength)

    def prox_plan(self) -> ProxPlan:
        return ProxPlan(l1=self.strength)

    def scaled(self, factor: float) -> L1:
        return L1(self.strength * factor)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "strength": self.strength}


class L2(Penalty):
    """The ridge penalty ``R(w) = λ Σwᵢ²`` — no ½, as in Keras.

    * gradient: ``2λw``;
    * prox with step ``t``: ``w / (1 + 2tλ)`` (decoupled decay, as AdamW with ``weight_decay ≈ 2λ``).

    PyTorch's ``weight_decay=wd`` in SGD/Adam adds ``wd·w`` to the gradient, which is this penalty
    with ``λ = wd/2``: use :meth:`from_weight_decay`.

    Args:
        strength: λ >= 0 (Keras' ``l2``).
    """

    name = "L2"
    homogeneous = False
    strength = _Strength()

    def __init__(self, strength: float) -> None:
        self.strength = strength

    @classmethod
    def from_weight_decay(cls, weight_decay: float) -> L2:
        """Return the L2 penalty whose gradient ``2λw`` equals PyTorch's coupled ``weight_decay·w``.

        That is ``λ = weight_decay / 2``. In prox mode with step ``t = lr`` the same penalty
        multiplies weights by ``1/(1 + lr·weight_decay)``, AdamW's ``1 − lr·weight_decay`` to first
        order.
        """
        wd = check_real("L2.from_weight_decay", "weight_decay", weight_decay, NON_NEGATIVE)
        return cls(wd / 2.0)

    def _value_one(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.strength * sum_square(tensor)

    def _grad_one(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.mul(2.0 * self.strength)

    def _add_grad_one_(self, tensor, grad, alpha):
        grad.add_(tensor, alpha=alpha * 2.0 * self.strength)  # one kernel, no temporary

    def _add_grad_many_(self, tensors, grads, alpha):
        torch._foreach_add_(grads, tensors, alpha=alpha * 2.0 * self.strength)

    def prox_plan(self) -> ProxPlan:
        return ProxPlan(l2=self.strength)

    def scaled(self, factor: float) -> L2:
        return L2(self.strength * factor)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "strength": self.strength}


class ElasticNet(Penalty):
    """The elastic-net penalty ``R(w) = λ₁ Σ|wᵢ| + λ₂ Σwᵢ²`` (Keras' ``L1L2``; no ½).

    * (sub)gradient: ``λ₁·sign(w) + 2λ₂w``;
    * prox with step ``t``: ``soft(w, tλ₁) / (1 + 2tλ₂)``.

    Args:
        l1: λ₁ >= 0.
        l2: λ₂ >= 0.

    scikit-learn writes the objective ``1/(2n)‖y − Xw‖² + αρ‖w‖₁ + ½α(1 − ρ)‖w‖²``; use
    :meth:`from_sklearn` to convert.
    """

    name = "ElasticNet"
    homogeneous = False
    l1 = _Strength()
    l2 = _Strength()

    def __init__(self, l1: float = 0.0, l2: float = 0.0) -> None:
        self.l1 = l1
        self.l2 = l2

    @classmethod
    def from_sklearn(cls, alpha: float, l1_ratio: float = 0.5) -> ElasticNet:
        """Convert scikit-learn's ``ElasticNet(alpha, l1_ratio)``: ``λ₁ = αρ``, ``λ₂ = α(1 − ρ)/2``.

        The data term must then be written as scikit-learn's: ``1/(2n)‖y − Xw‖²``, i.e. half the
        mean squared error.
        """
        alpha = check_real("ElasticNet.from_sklearn", "alpha", alpha, NON_NEGATIVE)
        ratio = check_real("ElasticNet.from_sklearn", "l1_ratio", l1_ratio, Interval(low=0.0, high=1.0))
        return cls(l1=alpha * ratio, l2=alpha * (1.0 - ratio) / 2.0)

    def _value_one(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.l2:
            return self.l1 * sum_abs(tensor)
        if not self.l1:
            return self.l2 * sum_square(tensor)
        return self.l1 * sum_abs(tensor) + self.l2 * sum_square(tensor)

    def _grad_one(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.sign(tensor).mul_(self.l1).add_(tensor, alpha=2.0 * self.l2)

    def _add_grad_one_(self, tensor, grad, alpha):
        if self.l1:
            grad.add_(torch.sign(tensor), alpha=alpha * self.l1)
        if self.l2:
            grad.add_(tensor, alpha=alpha * 2.0 * self.l2)

    def _add_grad_many_(self, tensors, grads, alpha):
        if self.l1:
            torch._foreach_add_(grads, torch._foreach_sign(tensors), alpha=alpha * self.l1)
        if self.l2:
            torch._foreach_add_(grads, tensors, alpha=alpha * 2.0 * self.l2)

    def prox_plan(self) -> ProxPlan:
        return ProxPlan(l1=self.l1, l2=self.l2)

    def scaled(self, factor: float) -> ElasticNet:
        return ElasticNet(l1=self.l1 * factor, l2=self.l2 * factor)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "l1": self.l1, "l2": self.l2}


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
    strength = _Strength()

    def __init__(self, p: float, strength: float, *, root: bool = False) -> None:
        self.p = check_real("Lp", "p", p, Interval(low=1.0))
        self.strength = strength
        if not isinstance(root, bool):
            raise TypeError(f"The 'root' argument of Lp must be a bool; got {root!r}.")
        self.root = root

    @property
    def homogeneous(self) -> bool:  # type: ignore[override]
        return self.root or self.p == 1.0

    def _value_one(self, tensor: torch.Tensor) -> torch.Tensor:
        powered = sum_abs_pow(tensor, self.p)
        if self.root:
            return self.strength * powered.pow(1.0 / self.p)
        return self.strength * powered

    def _grad_one(self, tensor: torch.Tensor) -> torch.Tensor:
        p = self.p
        direction = torch.sign(tensor) if p == 1.0 else torch.sign(tensor) * tensor.abs().pow(p - 1)
        if not self.root:
            return direction.mul_(self.strength * p)
        norm = sum_abs_pow(tensor, p).pow(1.0 / p)
        if norm == 0:
            return torch.zeros_like(tensor)
        return direction.mul_(self.strength / float(norm) ** (p - 1))

    def prox_plan(self) -> ProxPlan | None:
        if self.p == 1.0:
            return ProxPlan(l1=self.strength)
        if self.p == 2.0:
            if self.root:
                return ProxPlan(group=self.strength, group_spec="tensor")
            return ProxPlan(l2=self.strength)
        return None

    @property
    def supports_prox(self) -> bool:
        return not self.root or self.prox_plan() is not None

    @property
    def separable(self) -> bool:
        """Without ``root`` the penalty is a sum over entries: shards are handled locally."""
        return not self.root

    def _prox_one_(self, tensor: torch.Tensor, step: float) -> None:
        if self.root:
            raise ValueError(
                f"Lp(p={self.p:g}, root=True) has a closed-form proximal operator only for p = 1 "
                "and p = 2, so mode='prox' cannot apply it; use mode='loss' or mode='grad'."
            )
        coef = step * self.strength * self.p
        if coef == 0:
            return
        target = tensor.abs().to(torch.float64)
        low = torch.zeros_like(target)
        high = target.clone()
        for _ in range(64):
            mid = (low + high) / 2
            below = mid + coef * mid.pow(self.p - 1) < target
            low = torch.where(below, mid, low)
            high = torch.where(below, high, mid)
        tensor.copy_(torch.sign(tensor) * ((low + high) / 2).to(tensor.dtype))

    def scaled(self, factor: float) -> Lp:
        return Lp(self.p, self.strength * factor, root=self.root)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "p": self.p, "strength": self.strength, "root": self.root}
