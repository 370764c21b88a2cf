"""A regularizer's penalty split into named parts for logs: the tutorial's "(of which A L1 loss; B L2 loss)".

The parts come from the penalties themselves (:meth:`regtorch.Penalty.parts`): an elastic net is
its ``L1`` and ``L2`` parts, a sum adds its terms' parts by name, any other penalty is one part
named after it. Metrics files use the lower-case names as keys (``l1``, ``l2``, ``grouplasso``,
``mcp``...).
"""

from __future__ import annotations

import torch

import regtorch

__all__ = ["PenaltyParts", "format_log_line", "part_key", "part_keys"]


def part_key(name: str) -> str:
    """The metrics key of a part: its name in lower case."""
    return name.lower()


def part_keys() -> list[str]:
    """The metrics keys of every registered penalty's parts (``metrics.csv`` has a column each)."""
    keys: list[str] = []
    for name in regtorch.list_penalties():
        key = part_key(name)
        if key not in keys:
            keys.append(key)
    return keys


class PenaltyParts:
    """Splits a regularizer's penalty into its parts, for logging.

    Values include the regularizer's current strength factor.

    Args:
        regularizer: A regularizer, or None.
    """

    def __init__(self, regularizer: regtorch.Regularizer | None) -> None:
        self.regularizer = regularizer
        self.parts: list[tuple[str, regtorch.Penalty, list[torch.Tensor]]] = []
        names: list[str] = []
        for rule in [] if regularizer is None else regularizer.rules:
            for name, part in rule.penalty.parts().items():
                self.parts.append((name, part, list(rule.params)))
                if name not in names:
                    names.append(name)
        if names and set(names) <= {"L1", "L2"}:
            names = ["L1", "L2"]  # the tutorial's line always shows both
        self.names = names
        """Part names in order of appearance (``["L1", "L2"]`` for an elastic net)."""

    def values(self) -> dict[str, float]:
        """Return each part's current value, keyed by :func:`part_key`."""
        if self.regularizer is None:
            return {}
        factor = self.regularizer.factor()
        out = dict.fromkeys((part_key(n) for n in self.names), 0.0)
        with torch.no_grad():
            for name, penalty, params in self.parts:
                out[part_key(name)] += factor * float(penalty.value(params))
        return out

    def labels(self) -> dict[str, str]:
        """Map each metrics key to the part's name (``"l1" → "L1"``)."""
        return {part_key(n): n for n in self.names}


def format_log_line(
    batch: int, loss: float, parts: dict[str, float], labels: dict[str, str] | None = None
) -> str:
    """Return the tutorial's line: ``Loss after mini-batch N: X (of which A L1 loss; B L2 loss)``.

    Without a penalty the parenthesis is left out; each part is named as its penalty names it
    (``(of which A GroupLasso loss)``).
    """
    text = f"Loss after mini-batch {batch:5d}: {loss:.3f}"
    if parts:
        labels = labels or {}
        inner = "; ".join(f"{value:.3f} {labels.get(key, key)} loss" for key, value in parts.items())
        text += f" (of which {inner})"
    return text
