"""Masked fine-tuning: keep the zeros of a pruned model at zero while training the rest."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from regtorch._validation import Interval, check_real
from regtorch.penalties._group_lasso import GroupLasso, GroupSpec
from regtorch.regularizer._selection import Selection, select_parameters

__all__ = ["FrozenZeros", "freeze_zeros"]


class FrozenZeros:
    """The zero pattern kept by :func:`freeze_zeros`; call :meth:`remove` to stop keeping it.

    Attributes:
        masks: Parameter name to a bool tensor (same shape and device as the parameter), True
            where the entry is frozen at zero.
    """

    def __init__(
        self,
        named_params: list[tuple[str, nn.Parameter]],
        masks: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
    ) -> None:
        self.masks = masks
        self._params = [(param, masks[name]) for name, param in named_params]
        self._handles: list[RemovableHandle] = []
        for param, mask in self._params:
            self._handles.append(param.register_hook(_gradient_hook(mask)))
        self._handles.append(optimizer.register_step_post_hook(self._after_step))

    @property
    def frozen(self) -> int:
        """Number of frozen entries."""
        return sum(int(mask.sum()) for mask in self.masks.values())

    @property
    def total(self) -> int:
        """Number of entries of the selected parameters."""
        return sum(mask.numel() for mask in self.masks.values())

    @property
    def frozen_fraction(self) -> float:
        """Frozen entries / entries of the selected parameters (0 when there are none)."""
        total = self.total
        return self.frozen / total if total else 0.0

    @property
    def active(self) -> bool:
        """Whether the hooks are still installed."""
        return bool(self._handles)

    def apply(self) -> None:
        """Set the frozen entries to exactly zero now (the hooks do it after every step)."""
        with torch.no_grad():
            for param, mask in self._params:
                param.masked_fill_(mask, 0.0)

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.apply()

    def remove(self) -> None:
        """Remove every hook; the parameters then train freely. Calling it again does nothing."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FrozenZeros:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return (
            f"FrozenZeros({len(self.masks)} parameters, {self.frozen:,} of {self.total:,} entries "
            f"frozen ({self.frozen_fraction:.1%}), {state})"
        )


def _grouper(groups: GroupSpec | None, fraction: float | None) -> GroupLasso | None:
    """The grouping of ``freeze_zeros(..., groups=...)`` (a unit-strength GroupLasso), checked."""
    if groups is None:
        return None
    if fraction is None:
        raise ValueError(
            "The 'groups' argument of freeze_zeros goes with 'fraction' (the share of groups to zero); "
            f"got groups={groups!r} without a fraction."
        )
    if isinstance(groups, str) and groups == "coupled":
        raise ValueError(
            "The 'groups' argument of freeze_zeros cannot be 'coupled' (coupled groups come from tracing "
            "a model); got 'coupled'. Use rows, columns, filters, channels, a dimension or index groups."
        )
    try:
        return GroupLasso(1.0, groups=groups)
    except (TypeError, ValueError) as exc:
        raise type(exc)(str(exc).replace("argument of GroupLasso", "argument of freeze_zeros")) from None


def _zero_mask(
    weight: torch.Tensor, atol: float, fraction: float | None, grouper: GroupLasso | None
) -> torch.Tensor:
    """True where ``|w| <= atol`` or in the ``round(fraction · n)`` smallest entries (or groups)."""
    magnitude = weight.abs()
    mask = magnitude <= atol
    if fraction is None:
        return mask
    if grouper is None:
        count = round(fraction * weight.numel())
        if count > 0:
            smallest = magnitude.flatten().topk(count, largest=False, sorted=False).indices
            mask.view(-1)[smallest] = True
        return mask
    (sumsq,) = grouper.grouping.sumsq([weight], "reference")
    count = round(fraction * sumsq.numel())
    if count > 0:
        keep = torch.ones(sumsq.numel(), dtype=weight.dtype, device=weight.device)
        keep[sumsq.reshape(-1).topk(count, largest=False, sorted=False).indices] = 0
        (kept,) = grouper.grouping.scaled([torch.ones_like(weight)], [keep.reshape(sumsq.shape)])
        mask |= kept == 0
    return mask


def _gradient_hook(mask: torch.Tensor) -> Any:
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad.masked_fill(mask, 0.0)

    return hook


def freeze_zeros(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: Selection = "weights",
    *,
    atol: float = 0.0,
    fraction: float | None = None,
    groups: GroupSpec | None = None,
) -> FrozenZeros:
    """Keep the current zeros of the selected parameters at exactly zero during training.

    This is masked fine-tuning ("prune, then retrain"): after sparse training or pruning, the
    entries that are zero (``|w| <= atol``; those below ``atol`` are set to ``0`` now) stay
    zero while the others keep training. With ``fraction`` it is magnitude pruning first: in
    each selected tensor of ``n`` entries, the ``k = round(fraction · n)`` entries of smallest
    ``|w|`` (entries already zero come first) are set to ``0`` and frozen together with every
    entry ``|w| <= atol``, so a tensor ends with ``max(k, its current zeros)`` frozen entries.
    With ``groups`` as well it is structured pruning: of the ``G`` groups of each tensor (rows,
    columns, filters... as :class:`~regtorch.GroupLasso` groups them), the ``round(fraction · G)``
    with the smallest ``‖w_g‖₂`` (all-zero groups come first) are set to zero and frozen.
    Two hooks keep them:

    * a gradient hook on each selected parameter (``param.register_hook``) zeroes the gradient
      of the frozen entries, so momentum, Adam moments and gradient clipping norms do not build
      on them;
    * a step post-hook on ``optimizer`` (``optimizer.register_step_post_hook``) sets the frozen
      entries back to exactly ``0`` after every ``optimizer.step()``, undoing what momentum
      from earlier steps or decoupled weight decay would move.

    Existing optimizer state (``momentum_buffer``, ``exp_avg``, ``exp_avg_sq``... of the
    parameter's shape) is zeroed at the frozen entries too, so it stops moving them at once.

    Args:
        model: The model holding the parameters.
        optimizer: The optimizer that trains them.
        params: Which parameters (see :func:`regtorch.regularizer._selection.select_parameters`):
            ``"weights"`` (default: ``ndim >= 2`` outside normalization layers), ``"all"``, an
            fnmatch pattern, a module type, a predicate, tensors, or a list of these.
        atol: Entries with ``|w| <= atol`` count as zero.
        fraction: If given, a float in ``[0, 1]``: also zero and freeze the ``round(fraction · n)``
            smallest-magnitude entries of each selected tensor (ties broken arbitrarily).
        groups: With ``fraction``: prune whole groups instead of entries. Any ``groups`` of
            :class:`~regtorch.GroupLasso` but ``"coupled"``: ``"rows"`` (a Linear's output
            neurons), ``"columns"`` (its input features), ``"filters"``, ``"channels"``, an int
            dimension, ``"tensor"`` or explicit index groups.

    Returns:
        A :class:`FrozenZeros` with ``masks``, ``frozen_fraction`` and ``remove()``; it is also a
        context manager that removes the hooks on exit.

    Raises:
        TypeError: If ``model`` is not a module, ``optimizer`` not a ``torch.optim.Optimizer``,
            or ``params`` of an unknown kind.
        ValueError: If ``atol`` is negative or not finite, ``fraction`` is outside ``[0, 1]``,
            ``groups`` is given without ``fraction``, is ``"coupled"`` or does not fit a selected
            parameter, ``params`` selects nothing, or the optimizer updates none of the selected
            parameters.

    Examples:
        >>> frozen = freeze_zeros(model, optimizer)  # doctest: +SKIP
        >>> for x, y in loader:  # doctest: +SKIP
        ...     optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
        >>> frozen.remove()  # doctest: +SKIP
        >>> freeze_zeros(model, optimizer, params="fc1.weight", fraction=0.9)  # doctest: +SKIP
        >>> freeze_zeros(model, optimizer, "fc2.weight", fraction=0.5, groups="columns")  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"The 'model' argument of freeze_zeros must be an nn.Module; got "
            f"{type(model).__name__}."
        )
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"The 'optimizer' argument of freeze_zeros must be a torch.optim.Optimizer; got "
            f"{type(optimizer).__name__}."
        )
    atol = check_real("freeze_zeros", "atol", atol, Interval(low=0))
    if fraction is not None:
        fraction = check_real("freeze_zeros", "fraction", fraction, Interval(low=0, high=1))
    grouper = _grouper(groups, fraction)
    named = select_parameters(model, params, owner="freeze_zeros", argument="params")
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not any(id(param) in optimized for _, param in named):
        raise ValueError(
            "The 'optimizer' argument of freeze_zeros must update the selected parameters; got "
            f"an optimizer that updates none of {[name for name, _ in named][:6]}."
        )
    if grouper is not None:
        for name, param in named:
            try:
                grouper.check_tensor(name, param)
            except ValueError as exc:
                reason = str(exc).split(". Leave it out")[0]
                raise ValueError(
                    f"The 'groups' argument of freeze_zeros does not fit a selected parameter: {reason}. "
                    "Choose the parameters it fits with 'params'."
                ) from None
    masks = {}
    with torch.no_grad():
        for name, param in named:
            mask = _zero_mask(param.detach(), atol, fraction, grouper)
            masks[name] = mask
            param.masked_fill_(mask, 0.0)
            for key, value in optimizer.state.get(param, {}).items():
                if key != "step" and isinstance(value, torch.Tensor) and value.shape == param.shape:
                    value.masked_fill_(mask, 0)
    return FrozenZeros(named, masks, optimizer)
