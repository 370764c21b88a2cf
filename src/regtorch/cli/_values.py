"""Argument types of the command line: each converts text or raises one readable line."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import regtorch
from regtorch.training._config import parse_layer_l1
from regtorch.training._errors import UsageError
from regtorch.training._penalty_spec import parse_spec

__all__ = [
    "at_least_one",
    "count",
    "count0",
    "fraction",
    "layer_l1",
    "non_negative",
    "penalty_names",
    "penalty_spec",
    "positive",
    "sizes",
    "unit",
]


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
    return value


def non_negative(text: str) -> float:
    """A finite float >= 0 (strengths, weight decay)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; got {text}")
    return value


def positive(text: str) -> float:
    """A finite float > 0 (learning rate)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0; got {text}")
    return value


def fraction(text: str) -> float:
    """A float in [0, 1)."""
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1); got {text}")
    return value


def unit(text: str) -> float:
    """A float in [0, 1]."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1]; got {text}")
    return value


def _int(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}; got {text}")
    return value


def count(text: str) -> int:
    """An int >= 1."""
    return _int(text, 1)


def count0(text: str) -> int:
    """An int >= 0."""
    return _int(text, 0)


def sizes(text: str) -> tuple[int, ...]:
    """Comma-separated layer sizes, e.g. ``256,128``."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer sizes like 256,128; got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive layer sizes like 256,128; got {text!r}")
    return values


def penalty_names() -> list[str]:
    return [name.lower() for name in regtorch.list_penalties()]


def _checked_text(text: str, parse: Callable[[str], object], prefix: str) -> str:
    """Run ``parse(text)`` for its checks; keep the text itself (config.json holds it)."""
    try:
        parse(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(prefix)) from None
    return text


def penalty_spec(text: str) -> str:
    """``--penalty``: checked against the registry, kept as text (config.json holds it)."""
    return _checked_text(text, parse_spec, "--penalty: ")


def layer_l1(text: str) -> str:
    """``--layer-l1``: checked by :func:`parse_layer_l1`, kept as text (config.json holds it)."""
    return _checked_text(text, parse_layer_l1, "--layer-l1 ")


def at_least_one(text: str) -> float:
    value = _number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {text}")
    return value
