"""The elastic-net family ``r(w) = λ₁|w| + λ₂w²``: its value, gradient and prox in three implementations.

L1, L2, ElasticNet, ``Lp`` with p = 1 or 2 and the element-wise part of every closed-form sum are
this family. With ``a₁ = αλ₁`` and ``a₂ = 2αλ₂`` (α the caller's scale):

* value:     ``λ₁·Σ|w| + λ₂·Σw²``, accumulated in float64;
* gradient:  ``a₁·sign(w) + a₂·w`` (``sign(0) = 0``: the subgradient taken at the kink);
* prox:      ``w ← soft(w, τ)/c = sign(w)·max(|w| − τ, 0)/c`` with ``τ = tλ₁``, ``c = 1 + 2tλ₂``,
  the minimiser of ``½(x − w)² + t·r(x)``;
* prox in a diagonal metric (Adam's, see :mod:`regtorch.regularizer._metric_prox`): the same map
  with per-element ``τᵢ = tλ₁·ρᵢ`` and ``cᵢ = 1 + 2tλ₂·ρᵢ``, ``ρ = 1/d``.

Each operation has a reference (``_single_tensor_*``), a multi-tensor (``_multi_tensor_*``) and,
where it pays, a compiled (``_compiled_*``) implementation; the functions without a prefix run the
one :func:`regtorch.kernels.choose` picked. Soft-thresholding is written ``w − clamp(w, −τ, τ)`` in
the multi-tensor and compiled kernels: the same numbers as ``softshrink`` (exact in floating point,
NaN-propagating), in fewer passes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from regtorch.kernels._choose import (
    EAGER_CHUNK,
    FAILED,
    Impl,
    chunks,
    compiled,
    compiled_eligible,
    group_by_device_and_dtype,
    scalar_like,
)
from regtorch.kernels._sums import CHUNK, accumulation_dtype, sum_abs, sum_square

__all__ = ["add_grad_", "grad", "prox_", "scaled_prox_", "value", "value_and_grad"]


# ----------------------------------------------------------------------------- reference
def _single_tensor_value(tensors: Sequence[torch.Tensor], l1: float, l2: float) -> torch.Tensor:
    if all(w.device.type == "cpu" for w in tensors):  # Python floats: fewer tensor operations
        abs_sum = sum(float(sum_abs(w)) for w in tensors) if l1 else 0.0
        square_sum = sum(float(sum_square(w)) for w in tensors) if l2 else 0.0
        return torch.tensor(l1 * abs_sum + l2 * square_sum, dtype=torch.float64)
    total = torch.zeros((), dtype=torch.float64, device=tensors[0].device)
    for w in tensors:
        if l1:
            total = total + l1 * sum_abs(w).to(total.device)
        if l2:
            total = total + l2 * sum_square(w).to(total.device)
    return total


def _single_tensor_grad(w: torch.Tensor, a1: float, a2: float) -> torch.Tensor:
    if not a1:
        return w.mul(a2)
    return torch.sign(w).mul_(a1).add_(w, alpha=a2)


def _single_tensor_add_grad_(
    tensors: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], a1: float, a2: float
) -> None:
    for w, g in zip(tensors, grads, strict=True):
        if not a1:
            g.add_(w, alpha=a2)  # one kernel, no temporary
            continue
        pieces = (
            chunks(w, g) if w.is_contiguous() and g.is_contiguous() and w.numel() > EAGER_CHUNK else [(w, g)]
        )
        for w_piece, g_piece in pieces:  # sign's temporary stays in cache, g is read back from it
            g_piece.add_(torch.sign(w_piece), alpha=a1)
            if a2:
                g_piece.add_(w_piece, alpha=a2)


def _single_tensor_prox_(tensors: Sequence[torch.Tensor], tau: float, divisor: float) -> None:
    for w in tensors:
        both = tau > 0 and divisor != 1.0
        for (piece,) in chunks(w) if both and w.is_contiguous() and w.numel() > EAGER_CHUNK else [(w,)]:
            if tau > 0:
                torch.ops.aten.softshrink.out(piece, tau, out=piece)  # in place: one read, one write
            if divisor != 1.0:
                piece.div_(divisor)  # the piece is still in cache


def _single_tensor_scaled_prox_(
    tensors: Sequence[torch.Tensor], rho: Sequence[torch.Tensor], tau: float, two_l2: float
) -> None:
    for w, r in zip(tensors, rho, strict=True):
        if tau:
            w.copy_(torch.sign(w) * torch.clamp(w.abs() - r * tau, min=0))
        if two_l2:
            w.div_(1.0 + r * two_l2)


# ----------------------------------------------------------------------------- multi-tensor
def _multi_tensor_value(tensors: Sequence[torch.Tensor], l1: float, l2: float) -> torch.Tensor:
    device = tensors[0].device
    total = torch.zeros((), dtype=torch.float64, device=device)
    for indices in group_by_device_and_dtype(tensors):
        group = [tensors[i] for i in indices]
        if group[0].device.type == "cpu":  # no multi-tensor norm kernel on CPU: one cheap reduction each
            total = total + _cpu_small_value(group, l1, l2)
            continue
        if l1:
            total = total + l1 * torch.stack(torch._foreach_norm(group, 1, dtype=torch.float64)).sum().to(
                device
            )
        if l2:
            norms = torch.stack(torch._foreach_norm(group, 2, dtype=torch.float64))
            total = total + l2 * norms.square().sum().to(device)
    return total


def _cpu_small_value(group: Sequence[torch.Tensor], l1: float, l2: float) -> float:
    """``λ₁Σ|w| + λ₂Σw²`` over CPU tensors: cascade sums in float32 (float64 for float64) for tensors
    up to :data:`~regtorch.kernels._sums.CHUNK` elements (relative error ~1e-7), chunked float64
    sums beyond."""
    abs_sum = square_sum = 0.0
    for w in group:
        if w.numel() > CHUNK:
            abs_sum += float(sum_abs(w)) if l1 else 0.0
            square_sum += float(sum_square(w)) if l2 else 0.0
            continue
        acc = accumulation_dtype(w.dtype)
        if l1:
            abs_sum += float(w.abs().sum(dtype=acc))
        if l2:
            square_sum += float(w.square().sum(dtype=acc))
    return l1 * abs_sum + l2 * square_sum


def _multi_tensor_grad(tensors: Sequence[torch.Tensor], a1: float, a2: float) -> list[torch.Tensor]:
    grads: list[torch.Tensor] = list(tensors)
    for indices in group_by_device_and_dtype(tensors):
        group = [tensors[i] for i in indices]
        if a1:
            out = torch._foreach_sign(group)
            torch._foreach_mul_(out, a1)
            if a2:
                torch._foreach_add_(out, group, alpha=a2)
        else:
            out = torch._foreach_mul(group, a2)
        for i, g in zip(indices, out, strict=True):
            grads[i] = g
    return grads


def _multi_tensor_add_grad_(
    tensors: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], a1: float, a2: float
) -> None:
    for indices in group_by_device_and_dtype(tensors):
        ws, gs = [tensors[i] for i in indices], [grads[i] for i in indices]
        if a1:
            torch._foreach_add_(gs, torch._foreach_sign(ws), alpha=a1)
        if a2:
            torch._foreach_add_(gs, ws, alpha=a2)


def _multi_tensor_prox_(tensors: Sequence[torch.Tensor], tau: float, divisor: float) -> None:
    for indices in group_by_device_and_dtype(tensors):
        ws = [tensors[i] for i in indices]
        if tau > 0:
            clipped = torch._foreach_clamp_min(ws, -tau)
            torch._foreach_clamp_max_(clipped, tau)
            torch._foreach_sub_(ws, clipped)
        if divisor != 1.0:
            torch._foreach_div_(ws, divisor)


def _multi_tensor_scaled_prox_(
    tensors: Sequence[torch.Tensor], rho: Sequence[torch.Tensor], tau: float, two_l2: float
) -> None:
    for indices in group_by_device_and_dtype(tensors):
        ws, rs = [tensors[i] for i in indices], [rho[i] for i in indices]
        if tau:
            taus = torch._foreach_mul(rs, tau)
            clipped = torch._foreach_minimum(torch._foreach_maximum(ws, torch._foreach_neg(taus)), taus)
            torch._foreach_sub_(ws, clipped)
        if two_l2:
            divisors = torch._foreach_mul(rs, two_l2)
            torch._foreach_add_(divisors, 1.0)
            torch._foreach_div_(ws, divisors)


# ----------------------------------------------------------------------------- compiled
def _sign_times(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``a·sign(w)`` (0 at 0) as two selects, which Inductor's CPU code runs faster than ``sign(w)·a``."""
    return torch.where(w > 0, a, 0.0) - torch.where(w < 0, a, 0.0)


def _grad_kernel(w: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    return (_sign_times(w, a1) + w * a2).to(w.dtype)


def _add_grad_kernel(w: torch.Tensor, g: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor) -> None:
    g.add_(_sign_times(w, a1) + w * a2)


def _prox_kernel(w: torch.Tensor, tau: torch.Tensor, c: torch.Tensor) -> None:
    w.copy_((w - torch.clamp(w, -tau, tau)) / c)


ROW = 256
"""The value-and-gradient kernel works on rows of this many elements: a row is summed, then its
gradient written, while it sits in the L1 cache. Rows sum in float32 (error ~1e-10 relative per
row), the row sums in float64."""


def _value_grad_kernel(
    w: torch.Tensor, out: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    acc = torch.float64 if w.dtype == torch.float64 else torch.float32
    abs_rows = w.abs().sum(1, keepdim=True, dtype=acc)
    square_rows = (w * w).sum(1, keepdim=True, dtype=acc)
    g = _sign_times(w, a1) + w * a2
    # Both branches are equal, so this stores g; the (always true) dependency on the row sums makes
    # Inductor emit one loop over rows for the sums and the store: each row is read once.
    out.copy_(torch.where(abs_rows >= 0, g, g))
    return abs_rows.sum(dtype=torch.float64), square_rows.sum(dtype=torch.float64)


def _value_kernel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    acc = torch.float64 if w.dtype == torch.float64 else torch.float32
    abs_rows = w.abs().sum(1, dtype=acc)
    square_rows = (w * w).sum(1, dtype=acc)
    return abs_rows.sum(dtype=torch.float64), square_rows.sum(dtype=torch.float64)


_run_value = compiled(_value_kernel)
_run_grad = compiled(_grad_kernel)
_run_add_grad = compiled(_add_grad_kernel)
_run_prox = compiled(_prox_kernel)
_run_value_grad = compiled(_value_grad_kernel)


@functools.lru_cache(maxsize=256)
def _row_length(numel: int) -> int:
    """``ROW`` if it divides ``numel``, else the divisor in ``[ROW/2, 2·ROW]`` closest to ``ROW``
    (multiples of 16 first), so no partial last row is left to eager code; ``ROW`` if none."""
    candidates = sorted(range(ROW // 2, 2 * ROW + 1), key=lambda r: (r % 16 != 0, abs(r - ROW)))
    return next((r for r in candidates if numel % r == 0), ROW)


def _compiled_value_grad(
    w: torch.Tensor, a1: float, a2: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(Σ|w|, Σw², a₁·sign(w) + a₂·w)`` in one pass over an eligible ``w``; ``None`` if not compiled."""
    out = torch.empty_like(w, memory_format=torch.contiguous_format)
    flat, flat_out = w.view(-1), out.view(-1)
    row = _row_length(flat.numel())
    bulk = flat.numel() // row * row
    sums = _run_value_grad(
        flat[:bulk].view(-1, row), flat_out[:bulk].view(-1, row), scalar_like(a1, w), scalar_like(a2, w)
    )
    if sums is FAILED:
        return None
    abs_sum, square_sum = sums
    if bulk < flat.numel():  # a partial last row (no divisor near ROW): the reference kernels
        tail = flat[bulk:]
        flat_out[bulk:] = _single_tensor_grad(tail, a1, a2)
        abs_sum = abs_sum + sum_abs(tail)
        square_sum = square_sum + sum_square(tail)
    return abs_sum, square_sum, out


def _compiled_sums(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(Σ|w|, Σw²)`` in one pass over an eligible ``w``; ``None`` if not compiled."""
    flat = w.view(-1)
    row = _row_length(flat.numel())
    bulk = flat.numel() // row * row
    sums = _run_value(flat[:bulk].view(-1, row))
    if sums is FAILED:
        return None
    abs_sum, square_sum = sums
    if bulk < flat.numel():
        abs_sum = abs_sum + sum_abs(flat[bulk:])
        square_sum = square_sum + sum_square(flat[bulk:])
    return abs_sum, square_sum


def _compiled_value(tensors: Sequence[torch.Tensor], l1: float, l2: float) -> torch.Tensor:
    device = tensors[0].device
    total = torch.zeros((), dtype=torch.float64, device=device)
    rest = []
    for w in tensors:
        sums = _compiled_sums(w) if compiled_eligible(w) else None
        if sums is None:
            rest.append(w)
        else:
            total = total + (l1 * sums[0] + l2 * sums[1]).to(device)
    if rest:
        total = total + _single_tensor_value(rest, l1, l2)
    return total


def _compiled_value_and_grad(
    tensors: Sequence[torch.Tensor], l1: float, l2: float
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    device = tensors[0].device
    total = torch.zeros((), dtype=torch.float64, device=device)
    grads: list[torch.Tensor | None] = [None] * len(tensors)
    rest = []
    for i, w in enumerate(tensors):
        found = _compiled_value_grad(w, l1, 2.0 * l2) if compiled_eligible(w) else None
        if found is None:
            rest.append(w)
            continue
        abs_sum, square_sum, grads[i] = found
        total = total + (l1 * abs_sum + l2 * square_sum).to(device)
    if rest:
        total = total + _single_tensor_value(rest, l1, l2)
    return total, grads


def _compiled_grad(tensors: Sequence[torch.Tensor], a1: float, a2: float) -> list[torch.Tensor]:
    grads = []
    for w in tensors:
        g = _run_grad(w.view(-1), scalar_like(a1, w), scalar_like(a2, w)) if compiled_eligible(w) else FAILED
        grads.append(_single_tensor_grad(w, a1, a2) if g is FAILED else g.view_as(w))  # type: ignore[union-attr]
    return grads


def _compiled_add_grad_(
    tensors: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], a1: float, a2: float
) -> None:
    rest = []
    for w, g in zip(tensors, grads, strict=True):
        takes = compiled_eligible(w) and g.is_contiguous() and g.dtype == w.dtype
        if (
            not takes
            or _run_add_grad(w.view(-1), g.view(-1), scalar_like(a1, w), scalar_like(a2, w)) is FAILED
        ):
            rest.append((w, g))
    if rest:
        _single_tensor_add_grad_([w for w, _ in rest], [g for _, g in rest], a1, a2)


def _compiled_prox_(tensors: Sequence[torch.Tensor], tau: float, divisor: float) -> None:
    rest = []
    for w in tensors:
        if (
            not compiled_eligible(w)
            or _run_prox(w.view(-1), scalar_like(tau, w), scalar_like(divisor, w)) is FAILED
        ):
            rest.append(w)
    if rest:
        _single_tensor_prox_(rest, tau, divisor)


# ----------------------------------------------------------------------------- entry points
def value(tensors: Sequence[torch.Tensor], l1: float, l2: float, impl: Impl) -> torch.Tensor:
    """Return ``λ₁·Σ|w| + λ₂·Σw²`` over ``tensors`` as a float64 0-dim tensor (first tensor's device)."""
    if impl == "foreach":
        return _multi_tensor_value(tensors, l1, l2)
    if impl == "compiled":
        return _compiled_value(tensors, l1, l2)
    return _single_tensor_value(tensors, l1, l2)


def value_and_grad(
    tensors: Sequence[torch.Tensor], l1: float, l2: float, impl: Impl
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Return the value and, where the compiled kernel wrote it in the same pass, the gradient.

    Entries of the list are ``None`` for tensors whose gradient the caller computes later.
    """
    if impl == "compiled":
        return _compiled_value_and_grad(tensors, l1, l2)
    return value(tensors, l1, l2, impl), [None] * len(tensors)


def grad(tensors: Sequence[torch.Tensor], a1: float, a2: float, impl: Impl) -> list[torch.Tensor]:
    """Return ``a₁·sign(w) + a₂·w`` for each tensor, as new tensors."""
    if impl == "foreach":
        return _multi_tensor_grad(tensors, a1, a2)
    if impl == "compiled":
        return _compiled_grad(tensors, a1, a2)
    return [_single_tensor_grad(w, a1, a2) for w in tensors]


def add_grad_(
    tensors: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], a1: float, a2: float, impl: Impl
) -> None:
    """``gᵢ += a₁·sign(wᵢ) + a₂·wᵢ`` in place."""
    if not (a1 or a2):
        return
    if impl == "foreach":
        _multi_tensor_add_grad_(tensors, grads, a1, a2)
    elif impl == "compiled":
        _compiled_add_grad_(tensors, grads, a1, a2)
    else:
        _single_tensor_add_grad_(tensors, grads, a1, a2)


def prox_(tensors: Sequence[torch.Tensor], tau: float, divisor: float, impl: Impl) -> None:
    """``wᵢ ← sign(wᵢ)·max(|wᵢ| − τ, 0) / c`` in place (``τ = tλ₁``, ``c = 1 + 2tλ₂``)."""
    if tau <= 0 and divisor == 1.0:
        return
    if impl == "foreach":
        _multi_tensor_prox_(tensors, tau, divisor)
    elif impl == "compiled":
        _compiled_prox_(tensors, tau, divisor)
    else:
        _single_tensor_prox_(tensors, tau, divisor)


def scaled_prox_(
    tensors: Sequence[torch.Tensor], rho: Sequence[torch.Tensor], tau: float, two_l2: float, impl: Impl
) -> None:
    """``wᵢ ← sign(wᵢ)·max(|wᵢ| − τρᵢ, 0) / (1 + 2tλ₂·ρᵢ)`` in place, ``ρ`` per element.

    The prox of ``t·r`` in the metric ``diag(1/ρ)`` (``two_l2 = 2tλ₂``); with ``ρ = 1`` it is
    :func:`prox_`. There is no compiled kernel: it runs the multi-tensor one instead.
    """
    if not (tau or two_l2):
        return
    if impl == "reference":
        _single_tensor_scaled_prox_(tensors, rho, tau, two_l2)
    else:
        _multi_tensor_scaled_prox_(tensors, rho, tau, two_l2)
