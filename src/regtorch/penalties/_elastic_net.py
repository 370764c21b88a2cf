"""The elastic-net family: L1, L2 and ElasticNet (kernels in :mod:`regtorch.kernels.elastic_net`)."""

from __future__ import annotations

import torch

from regtorch._validation import Hyperparameter, Interval, check_real
from regtorch.kernels import Impl
from regtorch.kernels import elastic_net as en
from regtorch.penalties._base import Penalty
from regtorch.penalties._prox_plan import ProxPlan

__all__ = ["L1", "L2", "ElasticNet", "ElasticNetFamily"]

NON_NEGATIVE = Interval(low=0.0)


class ElasticNetFamily(Penalty):
    """A penalty ``R(w) = λ₁Σ|w| + λ₂Σw²``: subclasses say what ``(λ₁, λ₂)`` are."""

    elementwise = True
    linear_in_strength = True

    def coefficients(self) -> tuple[float, float]:
        """Return ``(λ₁, λ₂)``."""
        raise NotImplementedError

    def _value(self, tensors: list[torch.Tensor], impl: Impl) -> torch.Tensor:
        return en.value(tensors, *self.coefficients(), impl)

    def _value_and_grad(self, tensors, impl):
        return en.value_and_grad(tensors, *self.coefficients(), impl)

    def _grad(self, tensors, impl):
        l1, l2 = self.coefficients()
        return en.grad(tensors, l1, 2.0 * l2, impl)

    def _add_grad(self, tensors, grads, alpha, impl):
        l1, l2 = self.coefficients()
        en.add_grad_(tensors, grads, alpha * l1, 2.0 * alpha * l2, impl)

    def _prox(self, tensors, step, impl):
        l1, l2 = self.coefficients()
        en.prox_(tensors, step * l1, 1.0 + 2.0 * step * l2, impl)

    def prox_plan(self) -> ProxPlan:
        l1, l2 = self.coefficients()
        return ProxPlan(l1=l1, l2=l2)


class L1(ElasticNetFamily):
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
    strength = Hyperparameter(NON_NEGATIVE, scales=True, doc="λ of λΣ|w|")

    def __init__(self, strength: float) -> None:
        self.strength = strength

    def coefficients(self) -> tuple[float, float]:
        return self.strength, 0.0


class L2(ElasticNetFamily):
    """The ridge penalty ``R(w) = λ Σwᵢ²`` — no ½, as in Keras.

    * gradient: ``2λw``;
    * prox with step ``t``: ``w / (1 + 2tλ)`` (decoupled decay, as AdamW with ``weight_decay ≈ 2λ``).

    PyTorch's ``weight_decay=wd`` in SGD/Adam adds ``wd·w`` to the gradient, which is this penalty
    with ``λ = wd/2``: use :meth:`from_weight_decay`.

    Args:
        strength: λ >= 0 (Keras' ``l2``).
    """

    name = "L2"
    strength = Hyperparameter(NON_NEGATIVE, scales=True, doc="λ of λΣw²")

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

    def coefficients(self) -> tuple[float, float]:
        return 0.0, self.strength


class ElasticNet(ElasticNetFamily):
    """The elastic-net penalty ``R(w) = λ₁ Σ|wᵢ| + λ₂ Σwᵢ²`` (Keras' ``L1L2``; no ½).

    * (sub)gradient: ``λ₁·sign(w) + 2λ₂w``;
    * prox with step ``t``: ``soft(w, tλ₁) / (1 + 2tλ₂)``.

    scikit-learn writes the objective ``1/(2n)‖y − Xw‖² + αρ‖w‖₁ + ½α(1 − ρ)‖w‖²``; use
    :meth:`from_sklearn` to convert.

    Args:
        l1: λ₁ >= 0.
        l2: λ₂ >= 0.
    """

    name = "ElasticNet"
    l1 = Hyperparameter(NON_NEGATIVE, scales=True, doc="λ₁ of λ₁Σ|w|")
    l2 = Hyperparameter(NON_NEGATIVE, scales=True, doc="λ₂ of λ₂Σw²")

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

    def coefficients(self) -> tuple[float, float]:
        return self.l1, self.l2

    def parts(self) -> dict[str, Penalty]:
        """``{"L1": L1(λ₁), "L2": L2(λ₂)}``: logs report the two terms apart."""
        return {"L1": L1(self.l1), "L2": L2(self.l2)}
