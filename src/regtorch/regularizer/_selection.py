"""Which parameters a penalty touches: selection rules resolved once into an explicit list.

A *selection* is one of

* ``"weights"`` (the default) — the multiplicative weights of layers: trainable parameters with
  ``ndim >= 2`` (Linear, convolution and Hugging Face ``Conv1D`` weights, attention projections,
  token embedding matrices) except

  - parameters of normalization layers (BatchNorm*, LayerNorm, GroupNorm, InstanceNorm*,
    LocalResponseNorm, RMSNorm),
  - position embeddings and learned tokens, recognised by a component of the qualified name:
    ``pos_embed``, ``pos_embedding(s)``, ``position_embedding(s)``, ``positional_embedding(s)``,
    ``absolute_pos_embed``, ``embed_positions``, ``wpe``, ``relative_position_bias_table``;
    ``cls_token``, ``dist_token``, ``distillation_token``, ``reg_token(s)``, ``register_tokens``,
    ``mask_token``,
  - everything the model or any submodule lists in ``no_weight_decay()`` (names relative to that
    module, fnmatch patterns allowed) or matches a keyword of ``no_weight_decay_keywords()``
    (a substring of the name relative to that module) — timm's convention.

  Biases and norm scales (``ndim < 2``) are left out too, as timm and Hugging Face do. Token
  embedding matrices (``nn.Embedding``, Hugging Face's word and token-type embeddings) stay in,
  as in the weight decay of timm and of the Hugging Face ``Trainer``; exclude them with
  ``exclude=nn.Embedding`` if you prefer.
* ``"all"`` — every trainable parameter.
* any other string — an :mod:`fnmatch` pattern on qualified parameter names (``"fc1.*"``,
  ``"*.weight"``); a name without wildcards must match exactly.
* an ``nn.Module`` subclass — the parameters owned directly by modules of that type.
* a callable ``predicate(name, parameter) -> bool``.
* a tensor (an ``nn.Parameter`` of the model) or a list of these.
* a list or tuple mixing any of the above (their union).

Frozen parameters (``requires_grad=False``) are skipped, tied parameters count once, an empty
result is an error. :func:`regtorch.explain_selection` says, for every parameter, whether it is
selected and why.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "NORM_LAYER_TYPES",
    "NoDecayRules",
    "Selection",
    "check_explicit_tensors",
    "describe_selection",
    "match_reason",
    "named_trainable_parameters",
    "select_parameters",
    "unwrap_model",
    "weights_rule",
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


_POSITION_NAMES = frozenset({
    "pos_embed", "pos_embedding", "pos_embeddings", "position_embedding", "position_embeddings",
    "positional_embedding", "positional_embeddings", "absolute_pos_embed", "embed_positions", "wpe",
    "relative_position_bias_table",
})  # fmt: skip
_TOKEN_NAMES = frozenset({
    "cls_token", "dist_token", "distillation_token", "reg_token", "reg_tokens", "register_tokens",
    "mask_token",
})  # fmt: skip


def _listed(module: nn.Module, method: str) -> Iterable[Any]:
    """What ``module.<method>()`` lists, if the module's class defines that method; else nothing."""
    if not callable(getattr(type(module), method, None)):
        return ()
    return getattr(module, method)() or ()


@dataclass(frozen=True)
class NoDecayRules:
    """What a model lists through timm's ``no_weight_decay()`` / ``no_weight_decay_keywords()``.

    Attributes:
        patterns: ``(fnmatch pattern on the qualified name, module that listed it)``.
        keywords: ``(module prefix, keyword, module that listed it)``: a parameter under the
            prefix whose relative name contains the keyword.
    """

    patterns: tuple[tuple[str, str], ...] = ()
    keywords: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def of(cls, model: nn.Module) -> NoDecayRules:
        """Collect the rules of ``model`` and all its submodules."""
        patterns: list[tuple[str, str]] = []
        keywords: list[tuple[str, str, str]] = []
        for prefix, module in model.named_modules():
            where = repr(prefix) if prefix else "the model"
            for item in _listed(module, "no_weight_decay"):
                patterns.append((f"{prefix}.{item}" if prefix else str(item), where))
            for item in _listed(module, "no_weight_decay_keywords"):
                keywords.append((prefix, str(item), where))
        return cls(tuple(patterns), tuple(keywords))

    def reason(self, name: str) -> str:
        """Why ``name`` is listed, or ``""``."""
        for pattern, where in self.patterns:
            if fnmatch.fnmatchcase(name, pattern):
                return f"listed by no_weight_decay() of {where}"
        for prefix, keyword, where in self.keywords:
            if prefix and not name.startswith(prefix + "."):
                continue
            if keyword in (name[len(prefix) + 1 :] if prefix else name):
                return f"matches {keyword!r} of no_weight_decay_keywords() of {where}"
        return ""


def weights_rule(
    name: str, param: torch.Tensor, module: nn.Module, no_decay: NoDecayRules
) -> tuple[bool, str]:
    """Whether ``params="weights"`` selects a parameter, and why (see the module docstring)."""
    kind = type(module).__name__
    if isinstance(module, NORM_LAYER_TYPES):
        return False, f"a parameter of a normalization layer ({kind})"
    if param.ndim < 2:
        return False, "ndim < 2 (a bias or a scale)"
    for part in name.split("."):
        if part in _POSITION_NAMES:
            return False, f"a position embedding ({part!r})"
        if part in _TOKEN_NAMES:
            return False, f"a learned token ({part!r})"
    listed = no_decay.reason(name)
    if listed:
        return False, listed
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return True, f"the embedding matrix of {kind}"
    if name.rpartition(".")[2] == "weight":
        return True, f"the weight of {kind}"
    return True, f"an ndim >= 2 parameter of {kind}"


def match_reason(
    selection: Any,
    name: str,
    param: torch.Tensor,
    module: nn.Module,
    owner: str,
    argument: str,
    no_decay: NoDecayRules,
) -> str | None:
    """Why ``selection`` matches the parameter, or ``None`` when it does not."""
    if isinstance(selection, str):
        if selection == "all":
            return "params='all'"
        if selection == "weights":
            chosen, reason = weights_rule(name, param, module, no_decay)
            return reason if chosen else None
        return f"matches {selection!r}" if fnmatch.fnmatchcase(name, selection) else None
    if isinstance(selection, type):
        if not issubclass(selection, nn.Module):
            raise TypeError(
                f"The {argument!r} argument of {owner} accepts module types (subclasses of "
                f"nn.Module); got the type {selection.__name__}."
            )
        return f"owned by a {selection.__name__}" if isinstance(module, selection) else None
    if isinstance(selection, torch.Tensor):
        return "given as a tensor" if selection is param else None
    if isinstance(selection, (list, tuple)):
        for item in selection:
            item_reason = match_reason(item, name, param, module, owner, argument, no_decay)
            if item_reason is not None:
                return item_reason
        return None
    if callable(selection):
        return f"{describe_selection(selection)}(name, param) is true" if selection(name, param) else None
    raise TypeError(
        f"The {argument!r} argument of {owner} must be 'weights', 'all', an fnmatch pattern, "
        f"an nn.Module type, a predicate(name, param), a tensor, or a list of these; got "
        f"{selection!r} of type {type(selection).__name__}."
    )


def check_explicit_tensors(selection: Any, known: dict[int, str], owner: str, argument: str) -> None:
    """Refuse explicit tensors that are not trainable parameters of the model."""
    items: Iterable[Any] = selection if isinstance(selection, (list, tuple)) else [selection]
    for item in items:
        if isinstance(item, (list, tuple)):
            check_explicit_tensors(item, known, owner, argument)
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
    check_explicit_tensors(params, known, owner, argument)
    no_decay = NoDecayRules.of(model)
    chosen = []
    for name, param, module in candidates:
        if match_reason(params, name, param, module, owner, argument, no_decay) is None:
            continue
        if exclude is not None and match_reason(exclude, name, param, module, owner, "exclude", no_decay):
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
