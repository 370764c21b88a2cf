"""Proximal steps in Adam's diagonal metric (the preconditioned prox of adaptive proximal methods).

Adam moves each parameter by ``w ← w − lr·m̂ / d`` with the per-element denominator

    ``d = √v̂ + ε``,   ``v̂ = v / (1 − β₂^k)``,

where ``v`` is the optimizer's ``exp_avg_sq`` (``max_exp_avg_sq`` with ``amsgrad=True``) and ``k``
its step count. That step minimises ``⟨m̂, x⟩ + (1/(2·lr))·Σᵢ dᵢ(xᵢ − wᵢ)²``: a gradient step in
the metric ``D = diag(d)``. Taking the proximal step in the same metric (ProxGen, Yun et al. 2021,
"Adaptive Proximal Gradient Methods for Structured Neural Networks") gives

    ``w ← argmin_x  ½·Σᵢ dᵢ(xᵢ − wᵢ)² + t·R(x)``,   ``t = lr × step_factor × schedule factor``.

For an element-wise ``R(x) = λ₁‖x‖₁ + λ₂‖x‖²`` (L1, L2, ElasticNet, ``Lp`` with p = 1 or 2) this
separates into one scalar problem per element with step ``t/dᵢ``:

    ``wᵢ ← sign(wᵢ)·max(|wᵢ| − τ₁ᵢ, 0) / (1 + 2·τ₂ᵢ)``,   ``τ₁ᵢ = t·λ₁/dᵢ``,   ``τ₂ᵢ = t·λ₂/dᵢ``.

So an element that Adam moves in large steps (small ``dᵢ``) is thresholded more, one it moves in
small steps less, and a zero is exact. A group penalty (GroupLasso, ``Lp(2, root=True)``, sums
with a group term) couples elements with different ``dᵢ``: its prox in this metric has no closed
form (it needs a root search per group), so it is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from regtorch.kernels import elastic_net as en
from regtorch.penalties import Penalty, ProxPlan

__all__ = [
    "ADAM_FAMILY",
    "PROX_METRICS",
    "adam_denominators",
    "check_metric_optimizer",
    "check_metric_penalty",
    "metric_prox_",
]

PROX_METRICS = ("euclidean", "adam")
"""The metrics prox mode can take its step in (``Regularizer(prox_metric=...)``)."""

ADAM_FAMILY: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.NAdam,
    torch.optim.RAdam,
)
"""Optimizers that keep Adam's second moment ``exp_avg_sq`` per parameter (subclasses included)."""


def _names(types: Sequence[type]) -> str:
    return ", ".join(t.__name__ for t in types)


def metric_plan(penalty: Penalty) -> ProxPlan | None:
    """Return ``penalty``'s prox plan if it is element-wise (no group term), else ``None``."""
    plan = penalty.prox_plan()
    if plan is None or plan.group is not None:
        return None
    return plan


def check_metric_penalty(penalty: Penalty) -> ProxPlan:
    """Return the element-wise prox plan of ``penalty``, or raise if it has none.

    Raises:
        ValueError: For a penalty whose prox has no element-wise closed form in a diagonal
            metric (group lasso, ``Lp`` with p other than 1 and 2, their sums).
    """
    plan = metric_plan(penalty)
    if plan is None:
        if penalty.prox_plan() is not None:
            why = (
                "a group term couples elements that Adam scales differently, so its prox in "
                "Adam's diagonal metric has no closed form"
            )
        else:
            why = "its prox is not a soft-threshold followed by a scaling, the closed form needed per element"
        raise ValueError(
            f"The 'prox_metric' argument of Regularizer is 'adam', which needs penalties with an "
            f"element-wise prox (L1, L2, ElasticNet, Lp with p = 1 or 2); got {penalty!r}: {why}. "
            "Use prox_metric='euclidean' for it."
        )
    return plan


def check_metric_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Raise if ``optimizer`` keeps no ``exp_avg_sq`` (it is not of the Adam family).

    Raises:
        ValueError: For an optimizer outside :data:`ADAM_FAMILY` (SGD, Adagrad, Adamax...).
    """
    if not isinstance(optimizer, ADAM_FAMILY):
        raise ValueError(
            "The 'prox_metric' argument of Regularizer is 'adam', which needs an optimizer that "
            f"keeps Adam's second moment 'exp_avg_sq' ({_names(ADAM_FAMILY)}); got "
            f"{type(optimizer).__name__}. Use prox_metric='euclidean' with this optimizer."
        )


def _scalar(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def adam_denominators(
    optimizer: torch.optim.Optimizer, group: dict[str, Any], params: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Return Adam's per-element denominator ``d = √(v / (1 − β₂^k)) + ε`` for each parameter.

    ``v`` is ``state["exp_avg_sq"]`` (``state["max_exp_avg_sq"]`` when the group has
    ``amsgrad=True``), ``k = state["step"]``, ``β₂ = group["betas"][1]``, ``ε = group["eps"]``.

    Args:
        optimizer: An optimizer of the Adam family, after its step.
        group: The parameter group holding ``params``.
        params: Parameters of that group.

    Returns:
        New tensors of the parameters' shapes (and dtypes).

    Raises:
        RuntimeError: If a parameter has no Adam state yet (the optimizer did not step it).
    """
    beta2 = _scalar(group["betas"][1])
    eps = _scalar(group["eps"])
    key = "max_exp_avg_sq" if group.get("amsgrad", False) else "exp_avg_sq"
    denominators = []
    for p in params:
        state = optimizer.state.get(p, {})
        if key not in state or "step" not in state:
            raise RuntimeError(
                f"prox_metric='adam' reads the optimizer state {key!r} of each parameter, but the "
                f"parameter of shape {tuple(p.shape)} has none; {type(optimizer).__name__} has not "
                "stepped it."
            )
        step = _scalar(state["step"])
        correction = 1.0 - beta2**step if step > 0 else 1.0
        v = state[key].detach()
        denominators.append(v.div(correction).sqrt_().add_(eps).to(p.dtype))
    return denominators


def metric_prox_(
    tensors: Sequence[torch.Tensor],
    denominators: Sequence[torch.Tensor],
    step: float,
    plan: ProxPlan,
    *,
    foreach: bool = False,
) -> None:
    """Apply the prox of ``t·R`` in the metric ``diag(d)`` in place, for an element-wise plan.

    ``wᵢ ← sign(wᵢ)·max(|wᵢ| − t·λ₁/dᵢ, 0) / (1 + 2·t·λ₂/dᵢ)``, the unique minimiser of
    ``½·Σᵢ dᵢ(xᵢ − wᵢ)² + t·(λ₁‖x‖₁ + λ₂‖x‖²)``. With ``dᵢ = 1`` it is the Euclidean prox.

    Args:
        tensors: The parameters, updated in place.
        denominators: ``d`` for each tensor (same shapes; entries > 0).
        step: ``t >= 0``.
        plan: ``λ₁ = plan.l1``, ``λ₂ = plan.l2``; ``plan.group`` must be ``None``.
        foreach: Use multi-tensor kernels (same numbers as the per-tensor reference).

    Raises:
        ValueError: If ``plan`` has a group term.
    """
    if plan.group is not None:
        raise ValueError(f"metric_prox_ needs an element-wise plan (no group term); got {plan}.")
    if not tensors or step == 0:
        return
    with torch.no_grad():
        rho = [d.reciprocal() for d in denominators]
        en.scaled_prox_(
            tensors, rho, step * plan.l1, 2.0 * step * plan.l2, "foreach" if foreach else "reference"
        )
