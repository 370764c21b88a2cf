"""MCP, the minimax concave penalty (Zhang 2010), with its kernels in three implementations.

For ``λ >= 0`` and ``γ > 1``, per entry (the convention of ncvreg and skglm):

* value:    ``r(w) = λ|w| − w²/(2γ)`` for ``|w| <= γλ``, ``γλ²/2`` beyond;
* gradient: ``sign(w)·(λ − |w|/γ)`` for ``|w| <= γλ``, 0 beyond (0 at ``w = 0``);
* prox with step ``t < γ`` (firm thresholding): 0 for ``|w| <= tλ``,
  ``sign(w)·(|w| − tλ)/(1 − t/γ)`` for ``tλ < |w| <= γλ``, ``w`` beyond.

The multi-tensor kernels use equivalent forms without selects: with ``m = min(|w|, γλ)``,
``r = λm − m²/(2γ)``; the gradient is ``sign(w)·max(λ − |w|/γ, 0)``; the prox is
``sign(w)·min(|w|, max(|w| − tλ, 0)/(1 − t/γ))``.
"""

from __future__ import annotations

import torch

from regtorch._validation import Hyperparameter, Interval
from regtorch.kernels._elementwise import ElementwiseKernels
from regtorch.penalties._elementwise import ElementwisePenalty

__all__ = ["MCP"]


# ----------------------------------------------------------------------------- reference
def _value(w: torch.Tensor, lam: float, gamma: float) -> torch.Tensor:
    a = w.abs()
    r = torch.where(a <= gamma * lam, lam * a - a * a / (2 * gamma), gamma * lam * lam / 2)
    return r.sum(dtype=torch.float64)


def _grad(w: torch.Tensor, lam: float, gamma: float) -> torch.Tensor:
    a = w.abs()
    return torch.where(a <= gamma * lam, torch.sign(w) * (lam - a / gamma), 0.0).to(w.dtype)


def _prox(w: torch.Tensor, t: float, lam: float, gamma: float) -> torch.Tensor:
    a = w.abs()
    firm = torch.sign(w) * (a - t * lam) / (1 - t / gamma)
    return torch.where(a <= t * lam, 0.0, torch.where(a <= gamma * lam, firm, w)).to(w.dtype)


# ----------------------------------------------------------------------------- multi-tensor
def _foreach_value(ws: list[torch.Tensor], lam: float, gamma: float) -> torch.Tensor:
    m = torch._foreach_abs(ws)
    torch._foreach_clamp_max_(m, gamma * lam)
    s1 = torch.stack(torch._foreach_norm(m, 1, dtype=torch.float64)).sum()
    s2 = torch.stack(torch._foreach_norm(m, 2, dtype=torch.float64)).square().sum()
    return lam * s1 - s2 / (2 * gamma)


def _foreach_grad(ws: list[torch.Tensor], lam: float, gamma: float) -> list[torch.Tensor]:
    slope = torch._foreach_mul(torch._foreach_abs(ws), -1.0 / gamma)
    torch._foreach_add_(slope, lam)
    torch._foreach_clamp_min_(slope, 0.0)
    torch._foreach_mul_(slope, torch._foreach_sign(ws))
    return list(slope)


def _foreach_prox_(ws: list[torch.Tensor], t: float, lam: float, gamma: float) -> None:
    a = torch._foreach_abs(ws)
    firm = torch._foreach_sub(a, t * lam)
    torch._foreach_clamp_min_(firm, 0.0)
    torch._foreach_div_(firm, 1 - t / gamma)
    torch._foreach_minimum_(firm, a)
    torch._foreach_mul_(firm, torch._foreach_sign(ws))
    torch._foreach_copy_(ws, firm)


KERNELS = ElementwiseKernels(_value, _grad, _prox, _foreach_value, _foreach_grad, _foreach_prox_)


class MCP(ElementwisePenalty):
    """The minimax concave penalty ``R(w) = Σ r(wᵢ)``, ``r(w) = λ|w| − w²/(2γ)`` for ``|w| <= γλ``,
    ``γλ²/2`` beyond (Zhang 2010; ncvreg's and skglm's convention).

    Like L1 near zero (exact zeros in prox mode), constant for large weights (no shrinkage bias).

    * (sub)gradient: ``sign(w)·(λ − |w|/γ)`` for ``|w| <= γλ``, 0 beyond and at 0;
    * prox with step ``t < γ`` (firm thresholding): 0 for ``|w| <= tλ``,
      ``sign(w)(|w| − tλ)/(1 − t/γ)`` up to ``|w| = γλ``, ``w`` beyond. Steps ``t >= γ`` are refused
      (the prox is then not unique).

    Args:
        strength: λ >= 0 (skglm's ``alpha``).
        gamma: γ > 1: the penalty is flat from ``|w| = γλ`` on. Smaller is closer to L0.

    Examples:
        >>> MCP(1.0, gamma=3.0).value(torch.tensor([0.5, 5.0]))
        tensor(1.9583)
    """

    name = "MCP"
    strength = Hyperparameter(Interval(low=0.0), doc="λ: the slope at 0")
    gamma = Hyperparameter(Interval(low=1.0, closed="neither"), doc="γ > 1: flat beyond |w| = γλ")
    kernels = KERNELS

    def __init__(self, strength: float, gamma: float = 3.0) -> None:
        self.strength = strength
        self.gamma = gamma

    def step_limit(self) -> tuple[float, str, str]:
        return self.gamma, "gamma", "gamma"
