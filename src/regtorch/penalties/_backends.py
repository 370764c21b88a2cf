"""Where a penalty's operations run: on plain tensors here, or through the FSDP2 adapter.

:func:`backend_for` is applied once per public operation: lists holding an FSDP2 ``DTensor`` go to
:mod:`regtorch.distributed` (local shards, batched all-reduces), everything else to
:data:`LOCAL`, which picks the implementation (:func:`regtorch.kernels.choose`) and calls the
penalty's own kernels. Penalties never see a ``DTensor``.

A backend's operations take *rules*, ``(penalty, tensors)`` pairs, so that a regularizer with
several rules can ask for its total value in one call (one all-reduce when sharded).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch.autograd.function import once_differentiable

from regtorch.distributed._detect import has_dtensor
from regtorch.kernels import Impl, choose, result_dtype

if TYPE_CHECKING:
    from regtorch.penalties._base import Penalty

__all__ = ["LOCAL", "Backend", "backend_for", "without_grad"]

Rule = tuple["Penalty", list[torch.Tensor]]
GradRule = tuple["Penalty", list[torch.Tensor], list[torch.Tensor]]


class Backend(Protocol):
    """The four operations every backend provides (see :class:`LocalBackend`)."""

    def value(self, rules: Sequence[Rule], foreach: bool | None, fused: bool | None) -> torch.Tensor: ...

    def grad(
        self,
        penalty: Penalty,
        tensors: list[torch.Tensor],
        scale: Any,
        foreach: bool | None,
        fused: bool | None,
    ) -> list[torch.Tensor]: ...

    def add_grad_(
        self, rules: Sequence[GradRule], alpha: float, foreach: bool | None, fused: bool | None
    ) -> None: ...

    def prox_(
        self,
        penalty: Penalty,
        tensors: list[torch.Tensor],
        step: float,
        foreach: bool | None,
        fused: bool | None,
    ) -> None: ...


def without_grad() -> contextlib.AbstractContextManager:
    """``torch.no_grad()``, or a no-op context when grad mode is already off (cheaper per call)."""
    return torch.no_grad() if torch.is_grad_enabled() else contextlib.nullcontext()


class _PenaltyValue(torch.autograd.Function):
    """``R(w₁, …, w_k)`` whose backward hands autograd ``∂R`` in one pass per tensor.

    Where the penalty computes the gradient in the forward's pass (the compiled elastic-net
    kernel), the backward returns it (scaled unless ``grad_output`` is 1); otherwise the backward
    computes it. A second backward (``retain_graph``) recomputes.
    """

    @staticmethod
    def forward(ctx: Any, penalty: Penalty, impl: Impl, *tensors: torch.Tensor) -> torch.Tensor:
        ctx.penalty, ctx.impl = penalty, impl
        ctx.save_for_backward(*tensors)
        plain = [t.detach() for t in tensors]
        if torch.compiler.is_compiling():  # traced: the reference kernels, nothing kept aside
            ctx.grads = None
            return penalty._value(plain, "reference").to(result_dtype(tensors))
        value, grads = penalty._value_and_grad(plain, impl)
        ctx.grads = grads if any(g is not None for g in grads) else None
        return value.to(result_dtype(tensors))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        tensors = [t.detach() for t in ctx.saved_tensors]  # raises if modified in place since
        ready, ctx.grads = ctx.grads, None
        penalty, impl = ctx.penalty, ctx.impl
        with torch.no_grad():
            if ready is None:
                ready = penalty._grad(tensors, impl)
            else:  # one-pass kernels gave some; the penalty is element-wise: the rest one by one
                todo = [i for i, g in enumerate(ready) if g is None]
                if todo:
                    for i, g in zip(todo, penalty._grad([tensors[i] for i in todo], impl), strict=True):
                        ready[i] = g
            if grad_output.device.type == "cpu":
                scale = float(grad_output)
                if scale != 1.0:
                    torch._foreach_mul_(ready, scale)
            else:  # on an accelerator: no host sync, scale on the device
                for g in ready:
                    g.mul_(grad_output.to(device=g.device, dtype=g.dtype))
        return (None, None, *ready)


class LocalBackend:
    """Operations on plain tensors: choose the implementation, call the penalty's kernels."""

    def value(self, rules: Sequence[Rule], foreach: bool | None, fused: bool | None) -> torch.Tensor:
        total: torch.Tensor | None = None
        for penalty, tensors in rules:
            if not tensors:
                continue
            impl = choose(tensors, foreach, fused)
            if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
                value = _PenaltyValue.apply(penalty, impl, *tensors)
            else:
                with without_grad():
                    value = penalty._value([t.detach() for t in tensors], impl).to(result_dtype(tensors))
            total = value if total is None else total + value.to(total.device)
        return torch.zeros(()) if total is None else total

    def grad(self, penalty, tensors, scale, foreach, fused):
        if not tensors:
            return []
        with without_grad():
            grads = penalty._grad(tensors, choose(tensors, foreach, fused))
            if scale != 1.0:
                torch._foreach_mul_(grads, scale)
        return grads

    def add_grad_(self, rules, alpha, foreach, fused):
        with without_grad():
            for penalty, tensors, grads in rules:
                if tensors:
                    penalty._add_grad(tensors, grads, alpha, choose(tensors, foreach, fused))

    def prox_(self, penalty, tensors, step, foreach, fused):
        if not tensors:
            return
        with without_grad():
            penalty._prox(tensors, step, choose(tensors, foreach, fused))


LOCAL = LocalBackend()


def backend_for(tensors: Sequence[torch.Tensor]) -> Backend:
    """The backend for ``tensors``: the FSDP2 adapter if any is a ``DTensor``, else :data:`LOCAL`."""
    if has_dtensor(tensors):
        from regtorch.distributed._sharded import SHARDED

        return SHARDED
    return LOCAL
