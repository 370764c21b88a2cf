"""Element-wise penalties whose formulas live in an :class:`~regtorch.kernels.ElementwiseKernels` bundle."""

from __future__ import annotations

from typing import ClassVar

import torch

from regtorch._validation import hyperparameters
from regtorch.kernels import Impl
from regtorch.kernels._elementwise import ElementwiseKernels
from regtorch.penalties._base import Penalty

__all__ = ["ElementwisePenalty"]


class ElementwisePenalty(Penalty):
    """``R(w) = Σⱼ r(wⱼ)`` with ``r`` given by the class's ``kernels`` and :meth:`kernel_params`.

    Subclasses set ``kernels`` and declare their numbers as hyperparameters in the order the formulas
    take them (or override :meth:`kernel_params`); a prox defined only for small steps says so in
    :meth:`step_limit`.
    """

    elementwise = True
    kernels: ClassVar[ElementwiseKernels]

    def kernel_params(self) -> tuple[float, ...]:
        """The penalty's numbers, in the order its formulas take them: by default its
        hyperparameters in the order the class declares them."""
        return tuple(getattr(self, name) for name in hyperparameters(type(self)))

    def step_limit(self) -> tuple[float, str, str] | None:
        """For a non-convex penalty whose prox is unique only below a step: ``(limit, how the limit
        reads, the argument that raises it)``, e.g. ``(3.0, "gamma", "gamma")``; else ``None``."""
        return None

    def check_step(self, step: float) -> None:
        """Raise ``ValueError`` for a prox step at or above :meth:`step_limit`."""
        found = self.step_limit()
        if found is not None and step >= found[0]:
            _, text, argument = found
            raise ValueError(
                f"The prox of {self.name} with {argument}={getattr(self, argument):g} needs a step "
                f"t < {text} (else it is not unique); got t={step:g}. Lower the learning rate (or "
                f"step_factor) or raise {argument}."
            )

    def _value(self, tensors: list[torch.Tensor], impl: Impl) -> torch.Tensor:
        return self.kernels.run_value(tensors, self.kernel_params(), impl)

    def _grad(self, tensors, impl):
        return self.kernels.run_grad(tensors, self.kernel_params(), impl)

    def _prox(self, tensors, step, impl):
        self.check_step(step)
        self.kernels.run_prox_(tensors, step, self.kernel_params(), impl)
