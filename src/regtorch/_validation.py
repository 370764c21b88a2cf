"""Declarative argument checks: constraints are data, declared once per class and checked by one helper.

A class declares each validated argument as a :class:`Hyperparameter` holding a constraint
(:class:`Interval`, :class:`Choice`, :class:`Boolean`, or any object with the same three methods).
Assigning the attribute validates it (so strengths stay valid when changed during training), the
registry and the command line read the constraints to parse ``key=value`` text, and messages always
name the owner, the argument, what was expected and what was received, e.g.
``The 'l1' argument of ElasticNet must be a finite float >= 0; got -0.1.``
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Boolean",
    "Choice",
    "Constraint",
    "Hyperparameter",
    "Interval",
    "check_choice",
    "check_real",
    "hyperparameters",
]


class Constraint(Protocol):
    """What a constraint offers: a check, a description and a parser for command-line text."""

    def check(self, owner: str, name: str, value: Any) -> Any:
        """Return ``value`` (normalised) or raise ``TypeError``/``ValueError`` naming owner and argument."""
        ...

    def describe(self) -> str:
        """The constraint in words, for messages and help."""
        ...

    def parse(self, text: str) -> Any:
        """Convert command-line text to a value (``ValueError`` if it cannot be)."""
        ...


@dataclass(frozen=True)
class Interval:
    """A real interval: a finite float (or int with ``integer=True``) between ``low`` and ``high``.

    Args:
        low: Lower bound, or ``None`` for no bound.
        high: Upper bound, or ``None`` for no bound.
        closed: Which ends are included: ``"both"``, ``"left"``, ``"right"`` or ``"neither"``.
        integer: Require an integer.
    """

    low: float | None = None
    high: float | None = None
    closed: str = "both"
    integer: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite float"
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and self.high is not None:
            return f"{kind} in {'[' if left else '('}{self.low:g}, {self.high:g}{']' if right else ')'}"
        if self.low is not None:
            return f"{kind} {'>=' if left else '>'} {self.low:g}"
        if self.high is not None:
            return f"{kind} {'<=' if right else '<'} {self.high:g}"
        return kind

    def contains(self, value: float) -> bool:
        """Return whether ``value`` lies in the interval."""
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and (value < self.low or (value == self.low and not left)):
            return False
        return not (self.high is not None and (value > self.high or (value == self.high and not right)))

    def check(self, owner: str, name: str, value: Any) -> float | int:
        if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
            value = value.item()
        wanted = numbers.Integral if self.integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise TypeError(
                f"The {name!r} argument of {owner} must be {self.describe()}; got {value!r} of type "
                f"{type(value).__name__}."
            )
        number = int(value) if isinstance(value, numbers.Integral) else float(value)
        if not math.isfinite(number) or not self.contains(number):  # the message only when needed
            raise ValueError(f"The {name!r} argument of {owner} must be {self.describe()}; got {value!r}.")
        return number

    def parse(self, text: str) -> float | int:
        return int(text) if self.integer else float(text)


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of values."""

    options: tuple[Any, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)

    def check(self, owner: str, name: str, value: Any) -> Any:
        if value not in self.options:
            raise ValueError(f"The {name!r} argument of {owner} must be {self.describe()}; got {value!r}.")
        return value

    def parse(self, text: str) -> Any:
        return text


@dataclass(frozen=True)
class Boolean:
    """``True`` or ``False`` (not 0 or 1)."""

    def describe(self) -> str:
        return "a bool"

    def check(self, owner: str, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"The {name!r} argument of {owner} must be a bool; got {value!r}.")
        return value

    def parse(self, text: str) -> bool:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")


class Hyperparameter:
    """A validated attribute declared on a class: its constraint is data.

    Args:
        constraint: What values are allowed.
        scales: Whether the attribute is a strength that multiplying the penalty by ``c`` multiplies
            by ``c`` (``c·L1(λ) = L1(cλ)``).
        doc: One line for help texts.
    """

    def __init__(self, constraint: Constraint, *, scales: bool = False, doc: str = "") -> None:
        self.constraint = constraint
        self.scales = scales
        self.doc = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.slot = "_" + name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(obj, self.slot)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj, self.slot, self.constraint.check(type(obj).__name__, self.name, value))


def hyperparameters(cls: type) -> dict[str, Hyperparameter]:
    """Return the :class:`Hyperparameter` attributes of ``cls`` (inherited ones first), by name."""
    found: dict[str, Hyperparameter] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, Hyperparameter):
                found[name] = value
    return found


def check_real(owner: str, name: str, value: Any, interval: Interval = Interval()) -> float:
    """Check that ``value`` is a finite real number inside ``interval`` and return it as a float.

    Raises:
        TypeError: If the value is not a real number (bools are refused too).
        ValueError: If it is NaN, infinite, or outside the interval.
    """
    return float(interval.check(owner, name, value))


def check_choice(owner: str, name: str, value: Any, options: Iterable[Any]) -> Any:
    """Check that ``value`` is one of ``options`` and return it.

    Raises:
        ValueError: If it is not.
    """
    return Choice(tuple(options)).check(owner, name, value)
