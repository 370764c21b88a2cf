"""Instances of every registered penalty, built from its declared constraints (no list to maintain).

A penalty added to the registry is picked up here and so tested by every registry-wide test.
"""

from __future__ import annotations

import inspect

import regtorch as rt
from regtorch._validation import Boolean, Choice, Interval, hyperparameters


def _value_for(constraint: object) -> object:
    if isinstance(constraint, Interval):
        if constraint.low is None:
            return 0.3
        return constraint.low + 0.3
    if isinstance(constraint, Choice):
        return constraint.options[0]
    if isinstance(constraint, Boolean):
        return False
    raise AssertionError(f"no example value for {constraint!r}")


def example(cls: type[rt.Penalty]) -> rt.Penalty:
    """The penalty built with its defaults and, for required arguments, a value inside the constraint."""
    declared = hyperparameters(cls)
    kwargs = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        strength = name in declared and declared[name].scales
        if name == "self" or (param.default is not inspect.Parameter.empty and not strength):
            continue
        kwargs[name] = _value_for(declared[name].constraint)  # strengths never left at a default 0
    return cls(**kwargs)


def registry_examples() -> list[rt.Penalty]:
    """One instance per registered penalty, plus a sum and a non-linear scaling."""
    found = [example(rt.penalty_class(name)) for name in rt.list_penalties()]
    return [*found, rt.L1(0.1) + rt.GroupLasso(0.2, "columns"), 0.5 * rt.SCAD(0.3)]
