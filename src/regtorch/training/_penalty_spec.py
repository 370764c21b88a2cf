"""``--penalty``: penalties named on the command line, learned from the registry.

A *penalty spec* is ``NAME`` or ``NAME:ITEM,ITEM,...``. ``NAME`` is a registered penalty
(:func:`regtorch.list_penalties`, case-insensitive: ``l1``, ``elasticnet``, ``mcp``, ...), one of
the command line's shorthands (``group`` for ``GroupLasso``, ``sparse-group`` for ``L1 +
GroupLasso``) or ``none``. An ``ITEM`` is ``KEY=VALUE``, a constructor argument of the penalty
(``mcp:strength=0.003,gamma=3``); ``regtorch compare`` also takes a mode (``elasticnet:prox``) and
run options as items. Values are parsed by each argument's declared constraint, or read as Python
literals (``groups=[[0,1],[2,3]]``, ``weights=sqrt``). Without items the strengths come from the
``--l1``/``--l2``/``--alpha``/``--l1-ratio``/``--p``/``--strength``/``--groups`` options.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass, field
from typing import Any

import regtorch
from regtorch._validation import hyperparameters
from regtorch.training._errors import UsageError

__all__ = [
    "DEFAULT_STRENGTH",
    "SHORTHANDS",
    "PenaltySpec",
    "argument_names",
    "flag_arguments",
    "flag_options",
    "parse_spec",
    "split_items",
    "split_spec",
]

SHORTHANDS = {"group": "GroupLasso", "sparse-group": "sparse-group", "none": "none"}
"""Command-line names that are not registry names."""

#: Strengths used when a penalty is chosen without one. They are sums over all regularized
#: weights added to the mean cross-entropy of a batch (so they do not depend on the batch size);
#: on the default MLP they leave accuracy intact and make the penalty's effect visible.
DEFAULT_STRENGTH = {"l1": 1e-3, "l2": 1e-3, "strength": 1e-2, "p": 1.5, "l1_ratio": 0.5}

#: The strength options each penalty reads, and the constructor argument each one fills.
_FLAGS: dict[str, dict[str, str | None]] = {
    "none": {},
    "L1": {"l1": "strength"},
    "L2": {"l2": "strength"},
    "ElasticNet": {"l1": "l1", "l2": "l2", "alpha": None, "l1_ratio": None},
    "Lp": {"p": "p", "strength": "strength"},
    "GroupLasso": {"strength": "strength", "groups": "groups"},
    "sparse-group": {"l1": None, "strength": None, "groups": None},
}


def split_items(text: str) -> list[str]:
    """Split ``a=1,b=[1,2],c`` at the commas outside brackets and quotes."""
    items: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    items.append("".join(current).strip())
    return [item for item in items if item]


def split_spec(text: str) -> tuple[str, list[str]]:
    """Split ``NAME:ITEM,ITEM`` (or ``NAME,ITEM,ITEM``) into the name and the items."""
    first, *items = split_items(text) or [""]
    name, _, item = first.partition(":")
    return name.strip(), ([item.strip()] if item.strip() else []) + items


def _canonical(name: str) -> str:
    """The registry name (or shorthand) of a command-line penalty name."""
    lowered = name.strip().lower()
    if lowered in SHORTHANDS:
        return SHORTHANDS[lowered]
    try:
        return regtorch.penalty_class(lowered).name
    except ValueError:
        known = sorted({*SHORTHANDS, *(n.lower() for n in regtorch.list_penalties())})
        raise UsageError(
            f"--penalty: unknown penalty {name.strip()!r}; choose from {', '.join(known)}"
        ) from None


def argument_names(name: str) -> list[str]:
    """The constructor arguments of a registered penalty."""
    cls = regtorch.penalty_class(name)
    return [n for n in inspect.signature(cls.__init__).parameters if n != "self"]


def _parse_value(cls: type, key: str, text: str) -> Any:
    declared = hyperparameters(cls).get(key)
    if declared is not None:
        return declared.constraint.parse(text)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


@dataclass
class PenaltySpec:
    """A parsed ``--penalty`` value.

    Attributes:
        name: The registry name, ``"sparse-group"`` or ``"none"``.
        arguments: Constructor arguments given as items.
        extra: Items that are not constructor arguments (``regtorch compare``'s mode and options).
    """

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)

    @property
    def registered(self) -> bool:
        """Whether ``name`` is a registry name (not a shorthand)."""
        return self.name not in ("none", "sparse-group")

    def build(self, **defaults: Any) -> regtorch.Penalty:
        """Build the penalty from the items, ``defaults`` filling required arguments not given.

        Raises:
            UsageError: For a missing argument or a value the penalty refuses (its message).
        """
        cls = regtorch.penalty_class(self.name)
        kwargs = {**defaults, **self.arguments}
        needed = inspect.signature(cls.__init__).parameters
        missing = [
            n
            for n, p in needed.items()
            if n != "self" and p.default is inspect.Parameter.empty and n not in kwargs
        ]
        if missing:
            raise UsageError(
                f"--penalty {self.name.lower()} needs {', '.join(missing)}: e.g. "
                f"--penalty {self.name.lower()}:{missing[0]}=VALUE"
            )
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--penalty {self.name.lower()}: {exc}") from None


def parse_spec(text: str, *, allow_extra: bool = False) -> PenaltySpec:
    """Parse ``NAME[:ITEM,...]``.

    Args:
        text: The spec.
        allow_extra: Keep items that are not constructor arguments (a mode, ``KEY=VALUE`` run
            options) in ``extra`` instead of refusing them.

    Raises:
        UsageError: For an unknown penalty, or an item that is not ``KEY=VALUE`` with ``KEY`` one of
            the penalty's arguments (when ``allow_extra`` is false).
    """
    head, items = split_spec(text)
    spec = PenaltySpec(_canonical(head))
    names = argument_names(spec.name) if spec.registered else []
    cls = regtorch.penalty_class(spec.name) if spec.registered else None
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if eq and key in names and cls is not None:
            spec.arguments[key] = _parse_value(cls, key, value.strip())
        elif allow_extra:
            spec.extra.append(item)
        else:
            what = f"{spec.name.lower()}'s arguments are {', '.join(names)}" if names else "it takes none"
            raise UsageError(f"--penalty {text!r}: expected KEY=VALUE items; {what}; got {item!r}")
    return spec


def flag_arguments(name: str) -> dict[str, str | None]:
    """Map each strength option a penalty reads (``l1``, ``strength``...) to the constructor argument
    it fills (``None``: read another way, e.g. ``--alpha``).

    A registered penalty without a shorthand reads ``--strength`` for a required ``strength``.
    """
    if name in _FLAGS:
        return _FLAGS[name]
    needed = inspect.signature(regtorch.penalty_class(name).__init__).parameters
    required = needed.get("strength")
    if required is not None and required.default is inspect.Parameter.empty:
        return {"strength": "strength"}
    return {}


def flag_options(spec: PenaltySpec) -> tuple[str, ...]:
    """The strength options a spec reads: its penalty's, minus those whose argument it gives."""
    if spec.name == "ElasticNet" and ("l1" in spec.arguments or "l2" in spec.arguments):
        return tuple(o for o in ("l1", "l2") if o not in spec.arguments)
    return tuple(
        option for option, argument in flag_arguments(spec.name).items() if argument not in spec.arguments
    )
