"""What a regularizer's optimizer hooks do at each step: find the parameters, apply the prox."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from regtorch.distributed._detect import has_dtensor
from regtorch.regularizer._metric_prox import adam_denominators, check_metric_penalty, metric_prox_
from regtorch.regularizer._rules import Rule

if TYPE_CHECKING:
    from regtorch.regularizer._regularizer import Regularizer

__all__ = ["prox_step", "selected_in"]


def selected_in(
    rules: list[Rule], rule_of: dict[int, Rule], optimizer: torch.optim.Optimizer | None
) -> Iterator[tuple[dict[str, Any] | None, Rule, list[torch.Tensor]]]:
    """Yield ``(param group, rule, params)`` for the regularized parameters with a gradient.

    Per group of ``optimizer`` (all parameters when it is ``None``, the group then ``None``). A
    rule whose penalty couples its whole list (coupled groups) comes whole, once, when any of its
    parameters has a gradient, with the group of its first parameter.
    """
    group_of = {} if optimizer is None else {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for rule in rules:
        if rule.per_tensor or not any(p.grad is not None for p in rule.params):
            continue
        if optimizer is None or id(rule.params[0]) in group_of:
            yield group_of.get(id(rule.params[0])), rule, list[torch.Tensor](rule.params)
    if optimizer is None:
        for rule in rules:
            with_grad: list[torch.Tensor] = [p for p in rule.params if p.grad is not None]
            if with_grad and rule.per_tensor:
                yield None, rule, with_grad
        return
    for group in optimizer.param_groups:
        by_rule: dict[int, tuple[Rule, list[torch.Tensor]]] = {}
        for p in group["params"]:
            owner = rule_of.get(id(p))
            if owner is not None and owner.per_tensor and p.grad is not None:
                by_rule.setdefault(id(owner), (owner, []))[1].append(p)
        for owner, params in by_rule.values():
            yield group, owner, params


def _learning_rate(group: dict[str, Any]) -> float:
    lr = group["lr"]
    return float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)


def prox_step(
    reg: Regularizer,
    optimizer: torch.optim.Optimizer,
    group: Any,
    rule: Rule,
    params: list[torch.Tensor],
    factor: float,
) -> None:
    """Apply ``rule``'s prox to ``params`` with step ``lr × step_factor × factor`` of ``group``.

    Raises:
        ValueError: For a coupled penalty whose parameters are in groups with different learning
            rates (its prox needs one step).
    """
    step = _learning_rate(group) * reg.step_factor * factor
    if not rule.per_tensor:
        held = {id(p) for p in params}
        rates = {_learning_rate(g) for g in optimizer.param_groups if any(id(p) in held for p in g["params"])}
        if len(rates) > 1:
            raise ValueError(
                f"The coupled penalty {rule.penalty!r} spans parameter groups with different learning "
                f"rates {sorted(rates)}; its prox needs one step. Put its parameters in one group."
            )
    if reg.prox_metric != "adam":
        rule.penalty.prox(params, step, foreach=reg.foreach, fused=reg.fused)
        return
    denominators = adam_denominators(optimizer, group, params)
    plan = check_metric_penalty(rule.penalty)
    foreach = reg.foreach if reg.foreach is not None else params[0].device.type != "cpu"
    if has_dtensor(params):  # element-wise: on the local shards, no communication
        from regtorch.distributed._layout import local_views

        params, denominators = local_views(params)[0], local_views(denominators)[0]
    metric_prox_(params, denominators, step, plan, foreach=foreach)
