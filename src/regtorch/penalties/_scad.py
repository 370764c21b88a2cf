"""SCAD, the smoothly clipped absolute deviation penalty (Fan & Li 2001), with its kernels.

For ``λ >= 0`` and ``a > 2``, per entry (the convention of ncvreg and skglm, whose ``gamma`` is ``a``):

* value:    ``λ|w|`` for ``|w| <= λ``; ``(2aλ|w| − w² − λ²)/(2(a − 1))`` for ``λ < |w| <= aλ``;
  ``λ²(a + 1)/2`` beyond;
* gradient: ``λ·sign(w)`` for ``|w| <= λ``; ``sign(w)(aλ − |w|)/(a − 1)`` up to ``aλ``; 0 beyond;
* prox with step ``t < a − 1``: ``soft(w, tλ)`` for ``|w| <= (1 + t)λ``;
  ``((a − 1)w − sign(w)·atλ)/(a − 1 − t)`` for ``(1 + t)λ < |w| <= aλ``; ``w`` beyond.

The multi-tensor kernels use equivalent forms without selects: with ``m = |w|`` and
``d = clamp(m, λ, aλ) − λ``, ``r = λ·min(m, aλ) − d²/(2(a − 1))``; the gradient is
``sign(w)·min(λ, max(aλ − m, 0)/(a − 1))``; the prox is
``sign(w)·min(m, max(max(m − tλ, 0), ((a − 1)m − atλ)/(a − 1 − t)))``.
"""

from __future__ import annotations

import torch

from regtorch._validation import Hyperparameter, Interval
from regtorch.kernels._elementwise import ElementwiseKernels
from regtorch.penalties._elementwise import ElementwisePenalty

__all__ = ["SCAD"]


# ----------------------------------------------------------------------------- reference
def _value(w: torch.Tensor, lam: float, a: float) -> torch.Tensor:
    m = w.abs()
    middle = (2 * a * lam * m - m * m - lam * lam) / (2 * (a - 1))
    r = torch.where(m <= lam, lam * m, torch.where(m <= a * lam, middle, lam * lam * (a + 1) / 2))
    return r.sum(dtype=torch.float64)


def _grad(w: torch.Tensor, lam: float, a: float) -> torch.Tensor:
    m = w.abs()
    slope = torch.where(m <= lam, lam, torch.where(m <= a * lam, (a * lam - m) / (a - 1), 0.0))
    return (torch.sign(w) * slope).to(w.dtype)


def _prox(w: torch.Tensor, t: float, lam: float, a: float) -> torch.Tensor:
    m = w.abs()
    soft = torch.sign(w) * torch.clamp(m - t * lam, min=0)
    middle = ((a - 1) * w - torch.sign(w) * a * t * lam) / (a - 1 - t)
    return torch.where(m <= (1 + t) * lam, soft, torch.where(m <= a * lam, middle, w)).to(w.dtype)


# ----------------------------------------------------------------------------- multi-tensor
def _foreach_value(ws: list[torch.Tensor], lam: float, a: float) -> torch.Tensor:
    capped = torch._foreach_abs(ws)
    torch._foreach_clamp_max_(capped, a * lam)
    excess = torch._foreach_sub(capped, lam)
    torch._foreach_clamp_min_(excess, 0.0)
    s1 = torch.stack(torch._foreach_norm(capped, 1, dtype=torch.float64)).sum()
    s2 = torch.stack(torch._foreach_norm(excess, 2, dtype=torch.float64)).square().sum()
    return lam * s1 - s2 / (2 * (a - 1))


def _foreach_grad(ws: list[torch.Tensor], lam: float, a: float) -> list[torch.Tensor]:
    slope = torch._foreach_mul(torch._foreach_abs(ws), -1.0)
    torch._foreach_add_(slope, a * lam)
    torch._foreach_clamp_min_(slope, 0.0)
    torch._foreach_div_(slope, a - 1)
    torch._foreach_clamp_max_(slope, lam)
    torch._foreach_mul_(slope, torch._foreach_sign(ws))
    return list(slope)


def _foreach_prox_(ws: list[torch.Tensor], t: float, lam: float, a: float) -> None:
    m = torch._foreach_abs(ws)
    soft = torch._foreach_sub(m, t * lam)
    torch._foreach_clamp_min_(soft, 0.0)
    middle = torch._foreach_mul(m, (a - 1) / (a - 1 - t))
    torch._foreach_sub_(middle, a * t * lam / (a - 1 - t))
    torch._foreach_maximum_(soft, middle)
    torch._foreach_minimum_(soft, m)
    torch._foreach_mul_(soft, torch._foreach_sign(ws))
    torch._foreach_copy_(ws, soft)


KERNELS = ElementwiseKernels(_value, _grad, _prox, _foreach_value, _foreach_grad, _foreach_prox_)


class SCAD(ElementwisePenalty):
    """The smoothly clipped absolute deviation penalty ``R(w) = Σ r(wᵢ)`` (Fan & Li 2001).

    ``r(w) = λ|w|`` for ``|w| <= λ``, a quadratic blend ``(2aλ|w| − w² − λ²)/(2(a − 1))`` up to
    ``|w| = aλ``, and ``λ²(a + 1)/2`` beyond (ncvreg's and skglm's convention; skglm calls ``a``
    ``gamma``). L1 near zero, flat for large weights.

    * (sub)gradient: ``λ·sign(w)`` up to ``λ``, ``sign(w)(aλ − |w|)/(a − 1)`` up to ``aλ``, 0 beyond;
    * prox with step ``t < a − 1``: ``soft(w, tλ)`` up to ``|w| = (1 + t)λ``,
      ``((a − 1)w − sign(w)atλ)/(a − 1 − t)`` up to ``aλ``, ``w`` beyond. Steps ``t >= a − 1`` are
      refused (the prox is then not unique).

    Args:
        strength: λ >= 0 (skglm's ``alpha``).
        a: a > 2 (3.7 is Fan & Li's choice).

    Examples:
        >>> SCAD(1.0, a=3.7).value(torch.tensor([0.5, 5.0]))
        tensor(2.8500)
    """

    name = "SCAD"
    strength = Hyperparameter(Interval(low=0.0), doc="λ: the slope at 0")
    a = Hyperparameter(Interval(low=2.0, closed="neither"), doc="a > 2: flat beyond |w| = aλ")
    kernels = KERNELS

    def __init__(self, strength: float, a: float = 3.7) -> None:
        self.strength = strength
        self.a = a

    def step_limit(self) -> tuple[float, str, str]:
        return self.a - 1, f"a - 1 = {self.a - 1:g}", "a"
