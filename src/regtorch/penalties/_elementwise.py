"""Element-wise penalties whose formulas live in an :class:`~regtorch.kernels.ElementwiseKernels` bundle."""

from __future__ import annotations

from typing import ClassVar

import torch

from regtorch.kernels import Impl
from regtorch.kernels._elementwise import ElementwiseKernels
from regtorch.penalties._base import Penalty

__all__ = ["ElementwisePenalty"]


class ElementwisePenalty(Penalty):
    """``R(w) = Σⱼ r(wⱼ)`` with ``r`` given by the class's ``kernels`` and :meth:`kernel_params`.

    Subclasses set ``kernels``, return their numbers from :meth:`kernel_params` in the order the
    formulas take them, and may refuse prox steps with :meth:`check_step`.
    """

    elementwise = True
    kernels: ClassVar[ElementwiseKernels]

    def kernel_params(self) -> tuple[float, ...]:
        """The penalty's numbers, in the order its formulas take them."""
        raise NotImplementedError

    def check_step(self, step: float) -> None:
        """Raise ``ValueError`` for a prox step the penalty's prox is not defined for."""

    def _value(self, tensors: list[torch.Tensor], impl: Impl) -> torch.Tensor:
        return self.kernels.run_value(tensors, self.kernel_params(), impl)

    def _grad(self, tensors, impl):
        return self.kernels.run_grad(tensors, self.kernel_params(), impl)

    def _prox(self, tensors, step, impl):
        self.check_step(step)
        self.kernels.run_prox_(tensors, step, self.kernel_params(), impl)
