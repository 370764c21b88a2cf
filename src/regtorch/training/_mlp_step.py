"""A hand-written forward and backward for plain MLPs: autograd's numbers, a fraction of its overhead.

For the tutorial's network (``Flatten → Linear → ReLU → … → Linear`` and a mean cross-entropy)
at small batches, most of a training step is per-operation overhead, not arithmetic: building the
autograd graph, running its engine, and ``AccumulateGrad`` allocating gradient tensors. This module
computes the same gradients with the very ATen kernels autograd's derivative formulas call —
``addmm`` forward; ``nll_loss_backward`` and ``_log_softmax_backward_data`` for the loss;
``mm`` / ``sum`` for each Linear's weight and bias; ``mm`` and ``threshold_backward`` through each
ReLU — and writes the weight and bias gradients straight into persistent ``.grad`` buffers.

For a batch ``X`` (``n × d₀``), layers ``hₖ = aₖ₋₁Wₖᵀ + bₖ``, ``aₖ = max(hₖ, 0)`` and
``L = −(1/n) Σᵢ log softmax(h_K)ᵢ,yᵢ``, with ``δ_K = ∂L/∂h_K = (softmax(h_K) − onehot(y))/n``:
``∂L/∂Wₖ = δₖᵀ aₖ₋₁``, ``∂L/∂bₖ = Σᵢ δₖ,ᵢ`` and ``δₖ₋₁ = (δₖ Wₖ) ⊙ [aₖ₋₁ > 0]``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.modules import module as _module

from regtorch import _native

__all__ = ["changed_since_checked", "has_hooks", "mlp_grads_", "mlp_layers"]

_ATEN = torch.ops.aten
_MEAN = 1  # at::Reduction::Mean
_IGNORE_INDEX = -100

_Terms = Mapping[torch.Tensor, tuple[float, float]] | None


def _hooked(m: nn.Module) -> bool:
    """Module hooks, or gradient hooks on its own parameters (``register_hook``, post-accumulate)."""
    if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
        return True
    return any(
        p is not None and (p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None))
        for p in m._parameters.values()
    )


def _global_hooks() -> bool:
    return bool(
        _module._global_forward_hooks
        or _module._global_forward_pre_hooks
        or _module._global_backward_hooks
        or _module._global_backward_pre_hooks
    )


def has_hooks(model: nn.Module) -> bool:
    """Return whether ``model``, a direct child, a child's parameter or the global registry has a hook."""
    return _global_hooks() or _hooked(model) or any(_hooked(m) for m in model._modules.values())


def changed_since_checked(model: nn.Module, linears: tuple[nn.Linear, ...]) -> bool:
    """Whether what :func:`mlp_layers` checked may no longer hold for the same modules.

    A hook added since, or a parameter frozen since (``requires_grad=False``: autograd would leave
    its gradient ``None`` and the optimizer would skip it), each step cheaply.
    """
    return has_hooks(model) or not all(p.requires_grad for m in linears for p in m._parameters.values())


def mlp_layers(model: nn.Module) -> tuple[bool, tuple[nn.Linear, ...]] | None:
    """Return ``(flatten, linears)`` when ``model`` is a plain MLP this module can train, else None.

    A plain MLP is exactly an ``nn.Sequential`` of an optional leading ``nn.Flatten()`` (default
    dimensions) followed by ``Linear``, then any number of ``ReLU → Linear``, with no module hooks,
    no gradient hooks on its parameters (e.g. :func:`regtorch.freeze_zeros`), no parametrizations
    (they change the module's class), no parameter used twice (tied weights, a reused layer) and
    every parameter requiring grad.
    """
    if type(model) is not nn.Sequential or _hooked(model) or _global_hooks():
        return None
    modules = list(model._modules.values())
    flatten = bool(modules) and type(modules[0]) is nn.Flatten
    if flatten:
        if (modules[0].start_dim, modules[0].end_dim) != (1, -1) or _hooked(modules[0]):
            return None
        modules = modules[1:]
    if len(modules) % 2 == 0:
        return None
    linears = modules[0::2]
    if not all(type(m) is nn.Linear for m in linears) or not all(type(m) is nn.ReLU for m in modules[1::2]):
        return None
    if any(_hooked(m) for m in modules):
        return None
    params = [p for m in linears for p in m._parameters.values() if p is not None]
    if not all(p.requires_grad for p in params):
        return None
    if len({id(p) for p in params}) != len(params):  # tied weights or a reused layer: gradients add up
        return None
    return flatten, tuple(linears)


def _grad_buffer(param: torch.Tensor) -> torch.Tensor:
    """Return ``param.grad``, first replaced by a new buffer if it cannot be written in place."""
    grad = param.grad
    if grad is None or grad.shape != param.shape or grad.dtype != param.dtype or not grad.is_contiguous():
        grad = param.grad = torch.empty_like(param, memory_format=torch.contiguous_format)
    return grad


def _weight_grad_(weight: torch.Tensor, delta_t: torch.Tensor, a_prev: torch.Tensor, terms: _Terms) -> None:
    """``∇W ← δᵀ·a (+ a₁·sign(W) + a₂·W)``, the penalty term folded into the matrix product."""
    grad = _grad_buffer(weight)
    a1, a2 = terms.get(weight, (0.0, 0.0)) if terms else (0.0, 0.0)
    if a1:
        torch.sign(weight, out=grad)
        grad.addmm_(delta_t, a_prev, beta=a1)
        if a2:
            grad.add_(weight, alpha=a2)
    elif a2:
        torch.addmm(weight, delta_t, a_prev, beta=a2, out=grad)
    else:
        torch.mm(delta_t, a_prev, out=grad)


def _bias_grad_(bias: torch.Tensor, delta: torch.Tensor, terms: _Terms) -> None:
    """``∇b ← Σᵢ δᵢ (+ a₁·sign(b) + a₂·b)``."""
    grad = _grad_buffer(bias)
    torch.sum(delta, 0, out=grad)
    a1, a2 = terms.get(bias, (0.0, 0.0)) if terms else (0.0, 0.0)
    if a1:
        grad.add_(torch.sign(bias), alpha=a1)
    if a2:
        grad.add_(bias, alpha=a2)


def _add_terms_natively(
    params: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    terms: Mapping[torch.Tensor, tuple[float, float]],
) -> None:
    """``∇p ← ∇p + a₁·sign(p) + a₂·p`` for the parameters with terms, one C call per coefficient pair
    (the ``.grad`` buffers are :func:`_grad_buffer`'s: contiguous, of the parameters' sizes)."""
    by_pair: dict[tuple[float, float], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for p in itertools.chain.from_iterable(params):
        pair = terms.get(p) if p is not None else None
        if pair is not None:
            tensors, grads = by_pair.setdefault(pair, ([], []))
            tensors.append(p)
            grads.append(p.grad)
    for (a1, a2), (tensors, grads) in by_pair.items():
        if a1 or a2:
            _native.add_grad_(tensors, grads, a1, a2)


def mlp_grads_(
    flatten: bool,
    linears: tuple[nn.Linear, ...],
    x: torch.Tensor,
    y: torch.Tensor,
    terms: _Terms = None,
) -> torch.Tensor:
    """Set every parameter's ``.grad`` to ``∂(L + R)/∂θ``; return the mean cross-entropy ``L`` (0-dim).

    Args:
        flatten: Whether the model starts with ``nn.Flatten()`` (``x`` is flattened from dim 1).
        linears: The model's Linear layers, in order, with a ReLU between consecutive ones.
        x: The batch's inputs.
        y: The batch's class indices (int64).
        terms: An element-wise penalty ``R`` as ``{p: (a₁, a₂)}`` with
            ``∂R/∂p = a₁·sign(p) + a₂·p`` (:meth:`regtorch.Regularizer.grad_coefficients`); None
            or missing parameters: no penalty.

    Returns:
        The batch's mean cross-entropy, detached.

    The ``.grad`` buffers are overwritten, not accumulated into (as after ``zero_grad()``).
    """
    # ``_parameters`` directly: nn.Module.__getattr__ costs ~0.25 µs a lookup, 6 µs a step here
    params = [(m._parameters["weight"], m._parameters["bias"]) for m in linears]
    native_terms = None
    if terms and _native.takes(list(terms)):
        # one C call after the backward beats three kernels per weight folded into it
        terms, native_terms = None, terms
    with torch.no_grad():
        a = x.flatten(1) if flatten else x
        activations = [a]
        last = len(linears) - 1
        for k, (w, b) in enumerate(params):
            h = torch.addmm(b, a, w.t()) if b is not None else torch.mm(a, w.t())
            if k < last:
                h.relu_()
                activations.append(h)
            a = h
        log_probs = torch.log_softmax(a, 1)
        loss, total_weight = _ATEN.nll_loss_forward(log_probs, y, None, _MEAN, _IGNORE_INDEX)
        delta = _ATEN.nll_loss_backward(
            torch.ones((), dtype=loss.dtype, device=loss.device),
            log_probs, y, None, _MEAN, _IGNORE_INDEX, total_weight,
        )  # fmt: skip
        delta = _ATEN._log_softmax_backward_data(delta, log_probs, 1, log_probs.dtype)
        for k in range(last, -1, -1):
            w, b = params[k]
            a_prev = activations[k]
            _weight_grad_(w, delta.t(), a_prev, terms)
            if b is not None:
                _bias_grad_(b, delta, terms)
            if k:
                delta = _ATEN.threshold_backward(torch.mm(delta, w), a_prev, 0)
        if native_terms:
            _add_terms_natively(params, native_terms)
    return loss
