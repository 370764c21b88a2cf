"""Which parameters a penalty touches: selection rules resolved once into an explicit list.

A *selection* is one of

* ``"weights"`` — parameters with ``ndim >= 2`` that do not belong to a normalization layer
  (BatchNorm*, LayerNorm, GroupNorm, InstanceNorm*, LocalResponseNorm, RMSNorm). Biases and norm
  scales are not penalised, as timm and Hugging Face do.
* ``"all"`` — every trainable parameter.
* any other string — an :mod:`fnmatch` pattern on qualified parameter names (``"fc1.*"``,
  ``"*.weight"``); a name without wildcards must match exactly.
* an ``nn.Module`` subclass — the parameters owned directly by modules of that type.
* a callable ``predicate(name, parameter) -> bool``.
* a tensor (an ``nn.Parameter`` of the model) or a list of these.
* a list or tuple mixing any of the above (their union).

Frozen parameters (``requires_grad=False``) are skipped, tied parameters count once, an empty
result is an error.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "NORM_LAYER_TYPES",
    "Selection",
    "describe_selection",
    "named_trainable_parameters",
    "select_parameters",
    "unwrap_model",
]

Selection = str | type | Callable[[str, torch.Tensor], bool] | torch.Tensor | Sequence[Any]


def _norm_layer_types() -> tuple[type, ...]:
    types: list[type] = [
        nn.modules.batchnorm._NormBase,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
    ]
    rms = getattr(nn, "RMSNorm", None)
    if rms is not None:
        types.append(rms)
    return tuple(types)


NORM_LAYER_TYPES: tuple[type, ...] = _norm_layer_types()
"""Module types whose parameters ``params="weights"`` leaves out."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the user's module inside ``torch.compile`` and ``DistributedDataParallel`` wrappers.

    Parameter names are then the ones the user wrote (``fc1.weight``, not
    ``_orig_mod.module.fc1.weight``).
    """
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
            continue
        return model


def named_trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter, nn.Module]]:
    """List ``(qualified name, parameter, owning module)`` for every trainable parameter once."""
    seen: set[int] = set()
    found = []
    for module_name, module in model.named_modules():
        for local_name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            name = f"{module_name}.{local_name}" if module_name else local_name
            found.append((name, param, module))
    return found


def describe_selection(selection: Any) -> str:
    """Return a short readable description of a selection, for messages."""
    if isinstance(selection, str):
        return repr(selection)
    if isinstance(selection, type):
        return selection.__name__
    if isinstance(selection, torch.Tensor):
        return f"a tensor of shape {tuple(selection.shape)}"
    if isinstance(selection, (list, tuple)):
        return "[" + ", ".join(describe_selection(s) for s in selection) + "]"
    if callable(selection):
        return getattr(selection, "__name__", "a predicate")
    return repr(selection)


def _matches(
    selection: Any,
    name: str,
    param: torch.Tensor,
    module: nn.Module,
    owner: str,
    argument: str,
) -> bool:
    if isinstance(selection, str):
        if selection == "all":
            return True
        if selection == "weights":
            return param.ndim >= 2 and not isinstance(module, NORM_LAYER_TYPES)
        return fnmatch.fnmatchcase(name, selection)
    if isinstance(selection, type):
        if not issubclass(selection, nn.Module):
            raise TypeError(
                f"The {argument!r} argument of {owner} accepts module types (subclasses of "
                f"nn.Module); got the type {selection.__name__}."
            )
        return isinstance(module, selection)
    if isinstance(selection, torch.Tensor):
        return selection is param
    if isinstance(selection, (list, tuple)):
        return any(_matches(s, name, param, module, owner, argument) for s in selection)
    if callable(selection):
        return bool(selection(name, param))
    raise TypeError(
        f"The {argument!r} argument of {owner} must be 'weights', 'all', an fnmatch pattern, "
        f"an nn.Module type, a predicate(name, param), a tensor, or a list of these; got "
        f"{selection!r} of type {type(selection).__name__}."
    )


def _check_explicit_tensors(selection: Any, known: dict[int, str], owner: str, argument: str) -> None:
    """Refuse explicit tensors that are not trainable parameters of the model."""
    items: Iterable[Any] = selection if isinstance(selection, (list, tuple)) else [selection]
    for item in items:
        if isinstance(item, (list, tuple)):
            _check_explicit_tensors(item, known, owner, argument)
        elif isinstance(item, torch.Tensor) and id(item) not in known:
            if isinstance(item, nn.Parameter) and not item.requires_grad:
                continue  # frozen parameters are skipped
            raise ValueError(
                f"The {argument!r} argument of {owner} holds a tensor of shape "
                f"{tuple(item.shape)} that is not a trainable parameter of the model."
            )


def _check_dtype(name: str, param: torch.Tensor, owner: str) -> None:
    if param.is_complex() or not param.is_floating_point():
        raise TypeError(
            f"{owner} regularizes real floating-point parameters; parameter {name!r} has dtype {param.dtype}."
        )


def select_parameters(
    model: nn.Module,
    params: Selection = "weights",
    *,
    exclude: Selection | None = None,
    owner: str = "Regularizer",
    argument: str = "params",
) -> list[tuple[str, nn.Parameter]]:
    """Resolve a selection into an explicit list of ``(qualified name, parameter)``.

    Args:
        model: The model whose parameters are selected (``torch.compile`` and DDP wrappers are
            looked through, so names are the user's own).
        params: What to select; see the module docstring.
        exclude: An optional selection of the same kinds to leave out.
        owner: Who asks, for error messages.
        argument: The argument's name, for error messages.

    Returns:
        The selected trainable parameters in the model's order, each once.

    Raises:
        TypeError: For a selection of an unknown kind, or a complex or integer parameter.
        ValueError: If the selection matches no trainable parameter.

    Examples:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))
        >>> [name for name, _ in select_parameters(model)]
        ['0.weight', '2.weight']
    """
    model = unwrap_model(model)
    candidates = named_trainable_parameters(model)
    known = {id(p): n for n, p, _ in candidates}
    _check_explicit_tensors(params, known, owner, argument)
    chosen = []
    for name, param, module in candidates:
        if not _matches(params, name, param, module, owner, argument):
            continue
        if exclude is not None and _matches(exclude, name, param, module, owner, "exclude"):
            continue
        _check_dtype(name, param, owner)
        chosen.append((name, param))
    if not chosen:
        examples = ", ".join(repr(n) for n, _, _ in candidates[:6]) or "none"
        raise ValueError(
            f"The {argument!r} argument of {owner} must select at least one trainable parameter; "
            f"got {describe_selection(params)}"
            + (f" (excluding {describe_selection(exclude)})" if exclude is not None else "")
            + f", which selects none. The model's trainable parameters include: {examples}."
        )
    return chosen
