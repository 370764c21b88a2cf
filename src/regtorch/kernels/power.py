"""The power family ``r(w) = λ|w|^p`` (p >= 1) and the per-tensor norm ``λ‖w‖_p``: value, gradient, prox.

* value:     ``λ·Σ|w|^p``; with the root, ``λ·Σ_tensors (Σ|w|^p)^(1/p)`` (float64);
* gradient:  ``λp·|w|^(p−1)·sign(w)``; with the root ``λ·sign(w)|w|^(p−1) / ‖w‖_p^(p−1)`` (0 for a
  zero tensor);
* prox (no root): each element solves ``x + tλp·x^(p−1) = |w|`` for ``x`` in ``[0, |w|]`` (the
  left side increases in ``x``), by bisection to float64 precision; ``w ← sign(w)·x``.

p = 1 and p = 2 have closed forms in :mod:`regtorch.kernels.elastic_net` and
:mod:`regtorch.kernels.group`; callers route them there. Reference (``_single_tensor_*``) and
multi-tensor (``_multi_tensor_*``) implementations; the compiled kind runs the multi-tensor one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from regtorch.kernels._choose import Impl, group_by_device_and_dtype
from regtorch.kernels._sums import sum_abs_pow

__all__ = ["grad", "prox_", "value"]

_BISECTION_STEPS = 64


# ----------------------------------------------------------------------------- reference
def _single_tensor_powers(tensors: Sequence[torch.Tensor], p: float) -> list[torch.Tensor]:
    return [sum_abs_pow(w, p) for w in tensors]


def _single_tensor_grad(w: torch.Tensor, p: float, coef: float) -> torch.Tensor:
    direction = torch.sign(w) if p == 1.0 else torch.sign(w) * w.abs().pow(p - 1)
    return direction.mul_(coef)


def _single_tensor_prox_(tensors: Sequence[torch.Tensor], p: float, coef: float) -> None:
    for w in tensors:
        target = w.abs().to(torch.float64)
        low, high = torch.zeros_like(target), target.clone()
        for _ in range(_BISECTION_STEPS):
            mid = (low + high) / 2
            below = mid + coef * mid.pow(p - 1) < target
            low = torch.where(below, mid, low)
            high = torch.where(below, high, mid)
        w.copy_(torch.sign(w) * ((low + high) / 2).to(w.dtype))


# ----------------------------------------------------------------------------- multi-tensor
def _multi_tensor_powers(tensors: Sequence[torch.Tensor], p: float) -> list[torch.Tensor]:
    out: list[torch.Tensor] = list(tensors)
    for indices in group_by_device_and_dtype(tensors):
        norms = torch._foreach_norm([tensors[i] for i in indices], p, dtype=torch.float64)
        for i, n in zip(indices, torch._foreach_pow(norms, p), strict=True):
            out[i] = n
    return out


def _multi_tensor_grads(
    tensors: Sequence[torch.Tensor], p: float, coefs: Sequence[float]
) -> list[torch.Tensor]:
    out: list[torch.Tensor] = list(tensors)
    for indices in group_by_device_and_dtype(tensors):
        ws = [tensors[i] for i in indices]
        direction = torch._foreach_sign(ws)
        if p != 1.0:
            torch._foreach_mul_(direction, torch._foreach_pow(torch._foreach_abs(ws), p - 1))
        torch._foreach_mul_(direction, [coefs[i] for i in indices])
        for i, g in zip(indices, direction, strict=True):
            out[i] = g
    return out


def _multi_tensor_prox_(tensors: Sequence[torch.Tensor], p: float, coef: float) -> None:
    for indices in group_by_device_and_dtype(tensors):
        ws = [tensors[i] for i in indices]
        targets = [t.to(torch.float64) for t in torch._foreach_abs(ws)]
        low = [torch.zeros_like(t) for t in targets]
        high = [t.clone() for t in targets]
        for _ in range(_BISECTION_STEPS):
            mid = torch._foreach_div(torch._foreach_add(low, high), 2.0)
            lhs = torch._foreach_add(mid, torch._foreach_mul(torch._foreach_pow(mid, p - 1), coef))
            for lo, hi, m, left, t in zip(low, high, mid, lhs, targets, strict=True):
                below = left < t
                lo.copy_(torch.where(below, m, lo))
                hi.copy_(torch.where(below, hi, m))
        solved = torch._foreach_div(torch._foreach_add(low, high), 2.0)
        for w, x in zip(ws, solved, strict=True):
            w.copy_(torch.sign(w) * x.to(w.dtype))


# ----------------------------------------------------------------------------- entry points
def value(tensors: Sequence[torch.Tensor], p: float, strength: float, root: bool, impl: Impl) -> torch.Tensor:
    """``λ·Σ|w|^p`` (or ``λ·Σ_tensors ‖w‖_p`` with ``root``) as a float64 0-dim tensor."""
    powers = _single_tensor_powers(tensors, p) if impl == "reference" else _multi_tensor_powers(tensors, p)
    device = tensors[0].device
    total = torch.zeros((), dtype=torch.float64, device=device)
    for s in powers:
        total = total + (s.pow(1.0 / p) if root else s).to(device)
    return strength * total


def grad(
    tensors: Sequence[torch.Tensor], p: float, strength: float, root: bool, impl: Impl
) -> list[torch.Tensor]:
    """``∂R/∂wᵢ`` as new tensors (see the module docstring)."""
    if root:
        norms = [s.pow(1.0 / p) for s in _single_tensor_powers(tensors, p)]
        coefs = [0.0 if float(n) == 0 else strength / float(n) ** (p - 1) for n in norms]
    else:
        coefs = [strength * p] * len(tensors)
    if impl == "reference":
        return [_single_tensor_grad(w, p, c) for w, c in zip(tensors, coefs, strict=True)]
    return _multi_tensor_grads(tensors, p, coefs)


def prox_(tensors: Sequence[torch.Tensor], p: float, coef: float, impl: Impl) -> None:
    """``wᵢ ← sign(wᵢ)·xᵢ`` with ``xᵢ + coef·xᵢ^(p−1) = |wᵢ|`` (``coef = tλp``), in place."""
    if coef == 0:
        return
    if impl == "reference":
        _single_tensor_prox_(tensors, p, coef)
    else:
        _multi_tensor_prox_(tensors, p, coef)
