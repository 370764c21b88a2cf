"""Helpers shared by the framework integrations (no framework imported here)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch

from regtorch import L2, ElasticNet, Lp, Penalty, Regularizer

__all__ = [
    "INTEGRATION_MODES",
    "add_penalty_gradient_",
    "check_mode",
    "check_penalty",
    "has_l2_term",
    "import_framework",
    "optimizers_holding",
    "unwrap_optimizer",
    "zero_fraction",
]

INTEGRATION_MODES = ("loss", "grad", "prox")


def import_framework(module: str, *, owner: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise an ``ImportError`` that names the extra to install.

    Args:
        module: The module to import, e.g. ``"lightning.pytorch"``.
        owner: The regtorch module asking, for the message.
        extra: The regtorch extra that installs the framework, e.g. ``"lightning"``.
        what: The framework's name in words.

    Returns:
        The imported module.

    Raises:
        ImportError: If the framework is not installed (or is blocked in ``sys.modules``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{owner} needs {what}, which is not installed (importing {module!r} failed: {err}). "
            f"Install it with: pip install 'regtorch[{extra}]'"
        ) from err


def check_mode(owner: str, mode: Any) -> str:
    """Return ``mode`` if it is one of ``"loss"``, ``"grad"``, ``"prox"``; raise ``ValueError`` otherwise."""
    if not isinstance(mode, str) or mode not in INTEGRATION_MODES:
        raise ValueError(
            f"The 'mode' argument of {owner} must be one of 'loss', 'grad', 'prox'; got {mode!r}."
        )
    return mode


def check_penalty(owner: str, penalty: Any) -> Penalty | Sequence[tuple[Any, Penalty]]:
    """Return ``penalty`` if it is a Penalty or a non-empty list of rules; raise ``TypeError`` otherwise."""
    if isinstance(penalty, Penalty):
        return penalty
    if (
        isinstance(penalty, (list, tuple))
        and penalty
        and all(
            isinstance(rule, (list, tuple)) and len(rule) == 2 and isinstance(rule[1], Penalty)
            for rule in penalty
        )
    ):
        return penalty
    raise TypeError(
        f"The 'penalty' argument of {owner} must be a regtorch Penalty (e.g. regtorch.L1(1e-4)) or a "
        f"non-empty list of (selection, Penalty) pairs; got {penalty!r}."
    )


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """Return the ``torch.optim.Optimizer`` inside framework wrappers.

    Lightning's ``LightningOptimizer`` keeps it in ``_optimizer``; Accelerate's
    ``AcceleratedOptimizer`` (used by Hugging Face ``Trainer``) in ``optimizer``.
    """
    seen = 0
    while seen < 8:
        seen += 1
        inner = getattr(optimizer, "_optimizer", None)
        if isinstance(inner, torch.optim.Optimizer):
            optimizer = inner
            continue
        inner = getattr(optimizer, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer) and inner is not optimizer:
            optimizer = inner
            continue
        break
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"Expected a torch.optim.Optimizer (or a wrapper of one); got {type(optimizer).__name__}."
        )
    return optimizer


def _held_ids(optimizer: torch.optim.Optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def optimizers_holding(
    regularizer: Regularizer, optimizers: Sequence[torch.optim.Optimizer], *, owner: str
) -> list[torch.optim.Optimizer]:
    """Return the optimizers that hold at least one regularized parameter.

    Raises:
        ValueError: If some regularized parameter is held by no optimizer (it would never be
            regularized), naming the first few.
    """
    holding = []
    covered: set[int] = set()
    for optimizer in optimizers:
        held = _held_ids(optimizer)
        if any(id(p) in held for p in regularizer.parameters()):
            holding.append(optimizer)
            covered |= held
    missing = [name for name, p in regularizer.named_parameters() if id(p) not in covered]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5]) + (" …" if len(missing) > 5 else "")
        raise ValueError(
            f"{owner}: {len(missing)} of the {len(regularizer.parameters())} regularized parameters are held "
            f"by no optimizer, so they would never be regularized: {shown}. Narrow 'params' (or use "
            "'exclude') to the parameters the optimizer(s) train."
        )
    return holding


def add_penalty_gradient_(
    regularizer: Regularizer, optimizer: torch.optim.Optimizer, *, create: bool
) -> None:
    """Add the gradient of ``regularizer.penalty()`` to the ``.grad`` of ``optimizer``'s parameters.

    Only the regularized parameters that ``optimizer`` holds are touched. With ``create=False``
    (grad mode) parameters without a ``.grad`` this step are skipped, as
    :class:`regtorch.Regularizer`'s grad mode does; with ``create=True`` (loss mode) they get one,
    as if the penalty had been added to the loss.

    The regularizer must be in loss mode, so that :meth:`~regtorch.Regularizer.penalty` is
    differentiable.
    """
    held = _held_ids(optimizer)
    params = [p for p in regularizer.parameters() if id(p) in held and (create or p.grad is not None)]
    if not params or regularizer.factor() == 0:
        return
    with torch.enable_grad():
        grads = torch.autograd.grad(regularizer.penalty(), params, allow_unused=True)
    with torch.no_grad():
        for param, grad in zip(params, grads, strict=True):
            if grad is None:
                continue
            if param.grad is None:
                param.grad = grad.to(param.dtype)
            elif param.grad.is_sparse:
                raise TypeError(
                    "The penalty's gradient is dense and cannot be added to the sparse gradient of the "
                    f"parameter of shape {tuple(param.shape)}; use mode='prox', or a dense gradient "
                    "(e.g. nn.Embedding(sparse=False))."
                )
            else:
                param.grad.add_(grad.to(param.grad.dtype))


def zero_fraction(regularizer: Regularizer) -> torch.Tensor:
    """Return the fraction of exactly-zero entries of the regularized parameters, as a 0-dim tensor.

    Computed on the parameters' device without a host synchronisation (cheap enough every step).
    """
    params = regularizer.parameters()
    device = params[0].device
    with torch.no_grad():
        zeros = torch.zeros((), dtype=torch.float64, device=device)
        numel = 0
        for param in params:
            zeros = zeros + (param.detach() == 0).sum().to(device=device, dtype=torch.float64)
            numel += param.numel()
        return (zeros / max(numel, 1)).to(torch.float32)


def has_l2_term(penalty: Any) -> bool:
    """Return whether a penalty (or any penalty of a rule list) has a squared-L2 component."""
    penalties = [penalty] if isinstance(penalty, Penalty) else [rule[1] for rule in penalty]
    for item in penalties:
        for term in item.terms():
            if isinstance(term, L2) and term.strength > 0:
                return True
            if isinstance(term, ElasticNet) and term.l2 > 0:
                return True
            if isinstance(term, Lp) and term.p == 2.0 and not term.root and term.strength > 0:
                return True
    return False
