"""``optimizer.step()`` of a fused Adam or AdamW, without ``torch.optim``'s per-call Python overhead.

For a small model ``Adam(fused=True).step()`` spends most of its time in Python: the profiling
wrapper, the hook chains, ``_init_group``'s per-parameter checks, and grouping the tensors by
device and dtype. :func:`fused_adam_step` runs the same update — one ``torch._foreach_add_`` on the
step counters and one ``torch._fused_adam_`` (``_fused_adamw_`` for decoupled weight decay) per
parameter group, with the group's own hyper-parameters — and the same hooks in the same order,
when nothing about the optimizer needs the general path; otherwise it does nothing and says so.

The update is the fused Adam step of ``torch.optim`` (``t ← t + 1``, ``m ← β₁m + (1 − β₁)g``,
``v ← β₂v + (1 − β₂)g²``, ``θ ← θ − lr·(m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)``, with its
weight decay, amsgrad and maximize options), computed by the same kernel, so the numbers are
identical.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import optimizer as _optimizer

from regtorch import Regularizer, _native

__all__ = ["fused_adam_step"]

_ADAMS = (torch.optim.Adam, torch.optim.AdamW)


def _known_pre_hook(hook: Any) -> bool:
    """A regtorch grad-mode hook: returns None when the step has no closure."""
    return getattr(hook, "__func__", None) is Regularizer._grad_hook


def _group_lists(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> tuple[list, ...] | None:
    """``(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)`` of a group, or None.

    None when the group needs ``torch.optim``'s general path: an option the fused kernel call
    here does not handle, a parameter whose state is not initialised yet (the first step), a
    sparse or complex gradient, or tensors on several devices or of several dtypes.
    """
    if not group.get("fused") or group.get("differentiable") or group.get("capturable"):
        return None
    amsgrad = group["amsgrad"]
    lists: tuple[list, ...] = ([], [], [], [], [], [])
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = lists
    state = optimizer.state
    kind = None
    for p in group["params"]:
        grad = p.grad
        if grad is None:
            continue
        if kind is None:
            kind = (p.device, p.dtype)
        s = state.get(p)
        if not s or grad.is_sparse or p.is_complex() or (p.device, p.dtype) != kind:
            return None
        params.append(p)
        grads.append(grad)
        exp_avgs.append(s["exp_avg"])
        exp_avg_sqs.append(s["exp_avg_sq"])
        if amsgrad:
            max_exp_avg_sqs.append(s["max_exp_avg_sq"])
        steps.append(s["step"])
    return lists


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) else value


def fused_adam_step(optimizer: torch.optim.Optimizer) -> bool:
    """Run ``optimizer.step()`` for a fused Adam/AdamW the short way; return False if it cannot.

    The short way applies to an optimizer of exactly the class ``Adam`` or ``AdamW`` whose
    groups are all ``fused=True`` (not differentiable or capturable), whose state exists for
    every parameter with a gradient, without gradient scaling, and whose step pre-hooks are
    regtorch's own, with no global pre-hook (post-hooks may be anything). The pre-hooks run
    first, then the update, then the post-hooks (the optimizer's, then the global ones), as in
    ``optimizer.step()``. When it returns False nothing has run: call ``optimizer.step()``.
    """
    if type(optimizer) not in _ADAMS or _optimizer._global_optimizer_pre_hooks:
        return False
    if any(getattr(optimizer, name, None) is not None for name in ("grad_scale", "found_inf")):
        return False
    pre_hooks = list(optimizer._optimizer_step_pre_hooks.values())
    if not all(_known_pre_hook(h) for h in pre_hooks):
        return False
    groups = []
    for group in optimizer.param_groups:
        lists = _group_lists(optimizer, group)
        if lists is None:
            return False
        groups.append((group, lists))
    args, kwargs = (optimizer,), {}
    for hook in pre_hooks:
        hook(optimizer, args, kwargs)
    decoupled_default = type(optimizer) is torch.optim.AdamW
    with torch.no_grad():
        for group, (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps) in groups:
            if not params:
                continue
            beta1, beta2 = group["betas"]
            update = (
                torch._fused_adamw_
                if group.get("decoupled_weight_decay", decoupled_default)
                else torch._fused_adam_
            )
            if _native.takes(steps):  # one C call: _foreach_add_ costs 2.5 µs a counter on CPU
                _native.increment_(steps)
            else:
                torch._foreach_add_(steps, 1)
            update(
                params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                amsgrad=group["amsgrad"], lr=group["lr"], beta1=_scalar(beta1), beta2=_scalar(beta2),
                weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                grad_scale=None, found_inf=None,
            )  # fmt: skip
    optimizer._optimizer_step_code()
    post_hooks = (
        *optimizer._optimizer_step_post_hooks.values(),
        *_optimizer._global_optimizer_post_hooks.values(),
    )
    for hook in post_hooks:
        hook(optimizer, args, kwargs)
    optimizer._opt_called = True  # what an LR scheduler's step wrapper records
    return True
