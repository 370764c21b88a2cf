"""Running an element-wise formula family ``R(w) = Σⱼ r(wⱼ)`` in the implementation :func:`choose` picked.

A family module writes each formula once per implementation kind and bundles them in an
:class:`ElementwiseKernels`:

* reference, one tensor at a time: ``value(w, *params)`` (a float64 sum), ``grad(w, *params)``
  (a new tensor) and ``prox(w, step, *params)`` (the new values);
* multi-tensor, on a list of one device and dtype: ``foreach_value``, ``foreach_grad`` and
  ``foreach_prox_`` (in place);
* compiled: the reference ``grad`` and ``prox`` run through ``torch.compile`` (parameters passed as
  0-dim tensors, so new strengths never recompile) for large tensors; the rest, and everything
  where compilation failed, runs the reference.

``params`` are the penalty's numbers (strength and shape parameters), in the order the formulas
take them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from regtorch.kernels._choose import (
    FAILED,
    Impl,
    compiled,
    compiled_eligible,
    group_by_device_and_dtype,
    scalar_like,
)

__all__ = ["ElementwiseKernels"]


@dataclass(frozen=True)
class ElementwiseKernels:
    """The formulas of one element-wise family, in three implementations (see the module docstring)."""

    value: Callable[..., torch.Tensor]
    grad: Callable[..., torch.Tensor]
    prox: Callable[..., torch.Tensor]
    foreach_value: Callable[..., torch.Tensor]
    foreach_grad: Callable[..., list[torch.Tensor]]
    foreach_prox_: Callable[..., None]
    _compiled_grad: Callable[..., object] = field(init=False, repr=False)
    _compiled_prox: Callable[..., object] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled_grad", compiled(self.grad))
        object.__setattr__(self, "_compiled_prox", compiled(self.prox))

    def run_value(
        self, tensors: Sequence[torch.Tensor], params: tuple[float, ...], impl: Impl
    ) -> torch.Tensor:
        """``Σ r(w)`` over ``tensors`` as a float64 0-dim tensor on the first tensor's device."""
        device = tensors[0].device
        total = torch.zeros((), dtype=torch.float64, device=device)
        if impl == "foreach":
            for indices in group_by_device_and_dtype(tensors):
                total = total + self.foreach_value([tensors[i] for i in indices], *params).to(device)
            return total
        for w in tensors:
            total = total + self.value(w, *params).to(device)
        return total

    def run_grad(
        self, tensors: Sequence[torch.Tensor], params: tuple[float, ...], impl: Impl
    ) -> list[torch.Tensor]:
        """``r'(w)`` for each tensor, as new tensors."""
        if impl == "foreach":
            out: list[torch.Tensor] = list(tensors)
            for indices in group_by_device_and_dtype(tensors):
                group = self.foreach_grad([tensors[i] for i in indices], *params)
                for i, grad in zip(indices, group, strict=True):
                    out[i] = grad
            return out
        grads = []
        for w in tensors:
            found: object = FAILED
            if impl == "compiled" and compiled_eligible(w):
                found = self._compiled_grad(w, *(scalar_like(p, w) for p in params))
            grads.append(found if isinstance(found, torch.Tensor) else self.grad(w, *params))
        return grads

    def run_prox_(
        self, tensors: Sequence[torch.Tensor], step: float, params: tuple[float, ...], impl: Impl
    ) -> None:
        """``w ← prox_{step·r}(w)`` in place, element by element."""
        if impl == "foreach":
            for indices in group_by_device_and_dtype(tensors):
                self.foreach_prox_([tensors[i] for i in indices], step, *params)
            return
        for w in tensors:
            new: object = FAILED
            if impl == "compiled" and compiled_eligible(w):
                new = self._compiled_prox(w, scalar_like(step, w), *(scalar_like(p, w) for p in params))
            w.copy_(new if isinstance(new, torch.Tensor) else self.prox(w, step, *params))
