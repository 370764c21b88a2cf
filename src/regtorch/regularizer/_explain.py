"""Say, for every parameter of a model, whether a selection picks it and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from regtorch.regularizer._selection import (
    NoDecayRules,
    Selection,
    check_explicit_tensors,
    describe_selection,
    match_reason,
    unwrap_model,
    weights_rule,
)

__all__ = ["ParameterChoice", "SelectionExplanation", "explain_selection"]


@dataclass(frozen=True)
class ParameterChoice:
    """One parameter and the selection's verdict on it.

    Attributes:
        name: Qualified parameter name (a tied parameter once, under its first name).
        shape: The parameter's shape.
        module: Type name of the module that owns it.
        selected: Whether the selection picks it.
        reason: Why, or why not.
    """

    name: str
    shape: tuple[int, ...]
    module: str
    selected: bool
    reason: str


@dataclass(frozen=True)
class SelectionExplanation:
    """What :func:`explain_selection` found.

    Attributes:
        selection: The selection in words (with ``exclude=``).
        parameters: Every parameter of the model, in the model's order.
    """

    selection: str
    parameters: tuple[ParameterChoice, ...]

    @property
    def selected(self) -> list[str]:
        """Names of the selected parameters."""
        return [p.name for p in self.parameters if p.selected]

    @property
    def left_out(self) -> list[str]:
        """Names of the parameters not selected."""
        return [p.name for p in self.parameters if not p.selected]

    def format(self) -> str:
        """Return a readable table: name, shape, owning module, selected, reason."""
        rows = [("parameter", "shape", "module", "selected", "reason")]
        for p in self.parameters:
            rows.append((p.name, "x".join(map(str, p.shape)) or "()", p.module, "yes" if p.selected else "no",
                         p.reason))  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join([*(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)), r[4]]).rstrip()
                 for r in rows]  # fmt: skip
        chosen = [p for p in self.parameters if p.selected]
        entries = sum(_numel(p.shape) for p in chosen)
        total = sum(_numel(p.shape) for p in self.parameters)
        lines.append(
            f"{self.selection}: {len(chosen)} of {len(self.parameters)} parameters selected "
            f"({entries:,} of {total:,} entries)"
        )
        return "\n".join(lines)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _contains_weights(selection: Any) -> bool:
    if isinstance(selection, (list, tuple)):
        return any(_contains_weights(item) for item in selection)
    return isinstance(selection, str) and selection == "weights"


def explain_selection(
    model: nn.Module, params: Selection = "weights", *, exclude: Selection | None = None
) -> SelectionExplanation:
    """Explain which parameters a selection picks (as :func:`regtorch.select_parameters` does) and why.

    Unlike :func:`regtorch.select_parameters`, an empty selection is not an error here: the table
    shows why nothing matched.

    Args:
        model: The model (``torch.compile`` and DDP wrappers are looked through).
        params: The selection, as for :class:`regtorch.Regularizer` (default ``"weights"``).
        exclude: An optional selection to leave out.

    Returns:
        A :class:`SelectionExplanation` covering every parameter, frozen ones included;
        ``.format()`` prints it as a table.

    Raises:
        TypeError: For a selection of an unknown kind.
        ValueError: For a tensor that is not a trainable parameter of the model.

    Examples:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
        >>> explanation = explain_selection(model)
        >>> explanation.selected
        ['0.weight']
        >>> explanation.parameters[2].reason
        'a parameter of a normalization layer (LayerNorm)'
    """
    model = unwrap_model(model)
    known: dict[int, str] = {}
    entries: list[tuple[str, torch.Tensor, nn.Module]] = []
    aliases: dict[int, list[str]] = {}
    for module_name, module in model.named_modules():
        for local, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{local}" if module_name else local
            if id(param) in aliases:
                aliases[id(param)].append(name)
                continue
            aliases[id(param)] = []
            entries.append((name, param, module))
            if param.requires_grad:
                known[id(param)] = name
    check_explicit_tensors(params, known, "explain_selection", "params")
    no_decay = NoDecayRules.of(model)
    described = describe_selection(params)
    if exclude is not None:
        described += f" excluding {describe_selection(exclude)}"
    choices = []
    for name, param, module in entries:
        selected, reason = False, ""
        if not param.requires_grad:
            reason = "frozen (requires_grad=False)"
        elif param.is_complex() or not param.is_floating_point():
            reason = f"not a real floating-point tensor ({param.dtype})"
        else:
            matched = match_reason(params, name, param, module, "explain_selection", "params", no_decay)
            if matched is None:
                reason = (weights_rule(name, param, module, no_decay)[1] if _contains_weights(params)
                          else f"not matched by params={describe_selection(params)}")  # fmt: skip
            elif exclude is not None and (
                why := match_reason(exclude, name, param, module, "explain_selection", "exclude", no_decay)
            ):
                reason = f"excluded by exclude={describe_selection(exclude)} ({why})"
            else:
                selected, reason = True, matched
        if aliases[id(param)]:
            reason += f" (tied: also {', '.join(repr(a) for a in aliases[id(param)])})"
        choices.append(ParameterChoice(name, tuple(param.shape), type(module).__name__, selected, reason))
    return SelectionExplanation(described, tuple(choices))
