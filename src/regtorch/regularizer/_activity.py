"""Activity regularization: a penalty on module outputs, collected by forward hooks.

Keras' ``activity_regularizer`` and Torch7's ``nn.L1Penalty`` penalise what a layer outputs
rather than its weights; an L1 activity penalty gives sparse activations (few active units per
example), an L2 one keeps activations small.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from regtorch.penalties import Penalty

__all__ = ["ActivityRegularizer", "ActivityStats", "ModuleActivity"]

Modules = nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module]


@dataclass(frozen=True)
class ModuleActivity:
    """What one hooked module output in its last forward.

    Attributes:
        name: The module's name (the mapping key, else ``"<index>:<class name>"``).
        shape: Shape of its last output, or ``None`` before its first forward.
        zero_fraction: Fraction of exact zeros in its last output (over every element, so over
            the batch too), or ``None`` before its first forward.
        penalty: Its share of :meth:`ActivityRegularizer.penalty`, ``R(output) / batch size``, or
            ``None`` when the last forward collected none (``torch.no_grad()``, no grad).
    """

    name: str
    shape: tuple[int, ...] | None
    zero_fraction: float | None
    penalty: float | None


@dataclass(frozen=True)
class ActivityStats:
    """Activation statistics of the hooked modules' last outputs.

    Attributes:
        modules: One :class:`ModuleActivity` per hooked module, in the order given.
        zero_fraction: Mean over the modules that have run of their ``zero_fraction``
            (``None`` if none has run): the mean activation sparsity.
        penalty: The total :meth:`ActivityRegularizer.penalty` as a float.
    """

    modules: list[ModuleActivity] = field(default_factory=list)
    zero_fraction: float | None = None
    penalty: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the statistics as a JSON-serializable dict."""
        return asdict(self)


def _named_modules(modules: Any) -> list[tuple[str, nn.Module]]:
    if isinstance(modules, nn.Module):
        named = [(f"0:{type(modules).__name__}", modules)]
    elif isinstance(modules, Mapping):
        named = [(str(key), module) for key, module in modules.items()]
    elif isinstance(modules, Sequence) and not isinstance(modules, str):
        named = [(f"{i}:{type(m).__name__}", m) for i, m in enumerate(modules)]
    else:
        raise TypeError(
            "The 'modules' argument of ActivityRegularizer must be an nn.Module, a list of modules "
            f"or a dict of name -> module; got {type(modules).__name__}."
        )
    if not named:
        raise ValueError(
            "The 'modules' argument of ActivityRegularizer must hold at least one module; got none."
        )
    seen: dict[int, str] = {}
    for name, module in named:
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"The 'modules' argument of ActivityRegularizer must hold nn.Module objects; entry "
                f"{name!r} is of type {type(module).__name__}."
            )
        if id(module) in seen:
            raise ValueError(
                f"The 'modules' argument of ActivityRegularizer holds the same module twice "
                f"({seen[id(module)]!r} and {name!r}); its output would be penalised twice."
            )
        seen[id(module)] = name
    return named


class ActivityRegularizer:
    """Penalise the outputs of modules: ``penalty() = Σ_modules R(output) / batch size``.

    A forward hook on each module computes, at every forward in which its output requires grad
    (grad mode on, trainable parameters upstream),

        ``Pₘ = R(yₘ) / yₘ.shape[batch_dim]``,

    where ``yₘ`` is the module's output and ``R`` the penalty (e.g. ``L1(λ)``: ``λ·Σ|yₘ|``). This
    is Keras' convention for ``activity_regularizer``: the penalty of the batch divided by the
    batch size, so that it is a mean over examples like the data loss, and ``λ`` keeps its
    meaning when the batch size changes. (Torch7's ``nn.L1Penalty`` adds ``λ·Σ|y|`` without the
    division, or divides by the number of elements with ``sizeAverage``.)

    :meth:`penalty` returns ``Σₘ Pₘ`` over the hooked modules, each from its **last** forward:
    every forward replaces a module's value (no accumulation across forwards), and several
    hooked modules that run in one forward add up. A forward under ``torch.no_grad()`` (or whose
    output does not require grad) collects nothing: the module's value becomes ``None`` and
    :meth:`penalty` is 0 until a forward with grad, so evaluation passes cost nothing and leave
    no stale graph. A module called several times in one forward (a shared layer) counts its
    last call only.

    Outputs must be floating-point tensors: a module that returns a tuple (``nn.LSTM``,
    ``nn.MultiheadAttention``) raises ``TypeError`` at its forward; hook the submodule (or a
    small wrapper) that outputs the tensor to penalise.

    Args:
        modules: An ``nn.Module``, a list of modules, or a dict ``{name: module}`` (names appear in
            :meth:`stats`).
        penalty: Any :class:`Penalty` (``L1``, ``L2``, ``ElasticNet``, ``Lp``, ``GroupLasso``...),
            applied to each output tensor as a whole.
        batch_dim: The dimension of the outputs that indexes examples (0 by default; 1 for
            sequence-first ``(T, B, H)`` outputs).

    Raises:
        TypeError: For modules that are not ``nn.Module`` or a penalty that is not a
            :class:`Penalty`.
        ValueError: For no modules, the same module twice, or a negative ``batch_dim``.

    Examples:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> act = ActivityRegularizer(model[1], L1(1e-3))
        >>> loss = loss_fn(model(x), y) + act.penalty()  # doctest: +SKIP
    """

    def __init__(self, modules: Modules, penalty: Penalty, *, batch_dim: int = 0) -> None:
        if not isinstance(penalty, Penalty):
            raise TypeError(
                "The 'penalty' argument of ActivityRegularizer must be a Penalty (e.g. "
                f"regtorch.L1(1e-4)); got {penalty!r} of type {type(penalty).__name__}."
            )
        if isinstance(batch_dim, bool) or not isinstance(batch_dim, int) or batch_dim < 0:
            raise ValueError(
                f"The 'batch_dim' argument of ActivityRegularizer must be an int >= 0; got {batch_dim!r}."
            )
        self.penalty_fn = penalty
        self.batch_dim = batch_dim
        self._named = _named_modules(modules)
        count = len(self._named)
        self._values: list[torch.Tensor | None] = [None] * count
        self._zero_fractions: list[torch.Tensor | None] = [None] * count
        self._shapes: list[tuple[int, ...] | None] = [None] * count
        self._handles: list[RemovableHandle] = [
            module.register_forward_hook(self._hook(index)) for index, (_, module) in enumerate(self._named)
        ]

    @property
    def names(self) -> list[str]:
        """The hooked modules' names, in order."""
        return [name for name, _ in self._named]

    @property
    def active(self) -> bool:
        """Whether the hooks are installed (``False`` after :meth:`remove`)."""
        return bool(self._handles)

    def _hook(self, index: int) -> Any:
        name = self._named[index][0]

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or not output.is_floating_point():
                what = (
                    f"a {output.dtype} tensor" if isinstance(output, torch.Tensor) else type(output).__name__
                )
                raise TypeError(
                    f"ActivityRegularizer penalises floating-point tensor outputs; module {name!r} "
                    f"({type(module).__name__}) returned {what}. Hook the submodule that outputs "
                    "the tensor to penalise (or a wrapper returning it)."
                )
            if output.ndim <= self.batch_dim:
                raise ValueError(
                    f"ActivityRegularizer divides by the batch size output.shape[{self.batch_dim}], "
                    f"but module {name!r} returned an output of shape {tuple(output.shape)}; pass "
                    "the right batch_dim."
                )
            detached = output.detach()
            self._shapes[index] = tuple(output.shape)
            self._zero_fractions[index] = 1.0 - torch.count_nonzero(detached) / max(detached.numel(), 1)
            if torch.is_grad_enabled() and output.requires_grad:
                self.penalty_fn.check_tensor(name, detached)
                self._values[index] = self.penalty_fn.value(output) / output.shape[self.batch_dim]
            else:
                self._values[index] = None

        return hook

    def penalty(self) -> torch.Tensor:
        """Return ``Σₘ R(yₘ) / batch size`` of the last forward, a differentiable 0-dim tensor.

        Returns ``torch.zeros(())`` when nothing was collected (no forward yet, or the last
        forwards ran without grad). Add it to the loss before ``backward()``.
        """
        values = [v for v in self._values if v is not None]
        if not values:
            return torch.zeros(())
        total = values[0]
        for value in values[1:]:
            total = total + value.to(total.device)
        return total

    def clear(self) -> None:
        """Forget the collected values and statistics (as before any forward)."""
        count = len(self._named)
        self._values = [None] * count
        self._zero_fractions = [None] * count
        self._shapes = [None] * count

    def stats(self) -> ActivityStats:
        """Return the activation sparsity (fraction of exact zeros) and penalty of each module."""
        per = []
        for index, (name, _) in enumerate(self._named):
            value, zeros = self._values[index], self._zero_fractions[index]
            per.append(
                ModuleActivity(
                    name=name,
                    shape=self._shapes[index],
                    zero_fraction=None if zeros is None else float(zeros),
                    penalty=None if value is None else float(value.detach()),
                )
            )
        ran = [p.zero_fraction for p in per if p.zero_fraction is not None]
        return ActivityStats(
            modules=per,
            zero_fraction=sum(ran) / len(ran) if ran else None,
            penalty=float(self.penalty().detach()),
        )

    def remove(self) -> None:
        """Remove the forward hooks and forget collected values. Calling it again does nothing."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    def __enter__(self) -> ActivityRegularizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "" if self.active else ", removed"
        return f"ActivityRegularizer({', '.join(self.names)}; {self.penalty_fn!r}{state})"
