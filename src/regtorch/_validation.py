"""Declarative argument checks shared by every public class.

Each public class declares its constraints once (an interval, a set of choices, a type) and calls
:func:`check` in its constructor. Messages always name the owner, the argument, what was expected
and what was received, e.g. ``The 'l1' argument of ElasticNet must be a finite float >= 0; got -0.1.``
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Choice", "Interval", "check", "check_choice", "check_real"]


@dataclass(frozen=True)
class Interval:
    """A real interval constraint.

    Args:
        low: Lower bound, or ``None`` for no bound.
        high: Upper bound, or ``None`` for no bound.
        closed: Which ends are included: ``"both"``, ``"left"``, ``"right"`` or ``"neither"``.
    """

    low: float | None = None
    high: float | None = None
    closed: str = "both"

    def describe(self) -> str:
        """Return the constraint in words, e.g. ``">= 0"`` or ``"in [0, 1]"``."""
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and self.high is not None:
            return f"in {'[' if left else '('}{self.low:g}, {self.high:g}{']' if right else ')'}"
        if self.low is not None:
            return f"{'>=' if left else '>'} {self.low:g}"
        if self.high is not None:
            return f"{'<=' if right else '<'} {self.high:g}"
        return "any value"

    def contains(self, value: float) -> bool:
        """Return whether ``value`` lies in the interval."""
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and (value < self.low or (value == self.low and not left)):
            return False
        return not (self.high is not None and (value > self.high or (value == self.high and not right)))


@dataclass(frozen=True)
class Choice:
    """A constraint to one of a fixed set of values."""

    options: tuple[Any, ...]

    def describe(self) -> str:
        """Return the options in words."""
        return "one of " + ", ".join(repr(o) for o in self.options)


def check_real(owner: str, name: str, value: Any, interval: Interval = Interval()) -> float:
    """Check that ``value`` is a finite real number inside ``interval`` and return it as a float.

    Args:
        owner: Name of the class or function that owns the argument (for the message).
        name: Name of the argument.
        value: The value received.
        interval: The allowed interval.

    Returns:
        The value as a Python float.

    Raises:
        TypeError: If the value is not a real number (bools are refused too).
        ValueError: If it is NaN, infinite, or outside the interval.
    """
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"The {name!r} argument of {owner} must be a finite float {interval.describe()}; got "
            f"{value!r} of type {type(value).__name__}."
        )
    as_float = float(value)
    if not math.isfinite(as_float) or not interval.contains(as_float):  # the message only when needed
        raise ValueError(
            f"The {name!r} argument of {owner} must be a finite float {interval.describe()}; got {value!r}."
        )
    return as_float


def check_choice(owner: str, name: str, value: Any, options: Iterable[Any]) -> Any:
    """Check that ``value`` is one of ``options`` and return it.

    Raises:
        ValueError: If it is not.
    """
    choice = Choice(tuple(options))
    if value not in choice.options:
        raise ValueError(f"The {name!r} argument of {owner} must be {choice.describe()}; got {value!r}.")
    return value


def check(owner: str, constraints: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Check several arguments against their declared constraints.

    Args:
        owner: Name of the class or function that owns the arguments.
        constraints: Argument name to :class:`Interval` or :class:`Choice`.
        values: Argument name to the value received.

    Returns:
        The checked values (reals converted to float).
    """
    checked = {}
    for name, value in values.items():
        constraint = constraints[name]
        if isinstance(constraint, Interval):
            checked[name] = check_real(owner, name, value, constraint)
        else:
            checked[name] = check_choice(owner, name, value, constraint.options)
    return checked
