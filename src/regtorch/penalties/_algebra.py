"""Compositions of penalties: :class:`Sum` (what ``+`` builds) and :class:`Scaled` (``c·R``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from regtorch._validation import Interval, check_real
from regtorch.kernels import Impl
from regtorch.penalties._base import Penalty, penalty_from_config
from regtorch.penalties._prox_plan import ProxPlan

__all__ = ["Scaled", "Sum"]


class Sum(Penalty):
    """The sum of penalties ``R = Σⱼ Rⱼ`` (what ``+`` builds).

    ``value`` and ``grad`` add the terms'. ``prox`` uses the closed form of the sum where one exists:
    any mix of L1, L2, ElasticNet and at most one group structure (GroupLasso with one ``groups``
    setting, or ``Lp(2, root=True)``), e.g. ``L1(a) + GroupLasso(b)`` is the sparse group lasso.
    Other sums raise ``ValueError`` in prox mode.

    Args:
        terms: The penalties to add (nested sums are flattened).
    """

    name = "Sum"
    internal = True

    def __init__(self, terms: Sequence[Penalty]) -> None:
        flat: list[Penalty] = []
        for term in terms:
            if not isinstance(term, Penalty):
                raise TypeError(
                    f"The 'terms' argument of Sum must hold penalties; got {term!r} of type "
                    f"{type(term).__name__}."
                )
            flat.extend(term.terms())
        if not flat:
            raise ValueError("The 'terms' argument of Sum must hold at least one penalty; got none.")
        self._terms = flat

    @classmethod
    def _from_config_args(cls, kwargs: dict[str, Any]) -> Sum:
        return cls([penalty_from_config(c) for c in kwargs["terms"]])

    @property
    def elementwise(self) -> bool:  # type: ignore[override]
        return all(t.elementwise for t in self._terms)

    def terms(self) -> list[Penalty]:
        return list(self._terms)

    def parts(self) -> dict[str, Penalty]:
        merged: dict[str, Penalty] = {}
        for term in self._terms:
            for name, part in term.parts().items():
                merged[name] = merged[name] + part if name in merged else part
        return merged

    def _value(self, tensors: list[torch.Tensor], impl: Impl) -> torch.Tensor:
        total = self._terms[0]._value(tensors, impl)
        for term in self._terms[1:]:
            total = total + term._value(tensors, impl)
        return total

    def _grad(self, tensors, impl):
        grads = self._terms[0]._grad(tensors, impl)
        for term in self._terms[1:]:
            term._add_grad(tensors, grads, 1.0, impl)
        return grads

    def _add_grad(self, tensors, grads, alpha, impl):
        for term in self._terms:
            term._add_grad(tensors, grads, alpha, impl)

    def prox_plan(self) -> ProxPlan | None:
        plan: ProxPlan | None = ProxPlan()
        for term in self._terms:
            term_plan = term.prox_plan()
            if term_plan is None or plan is None:
                return None
            plan = plan.merge(term_plan)
        return plan

    @property
    def supports_prox(self) -> bool:
        if len(self._terms) == 1:
            return self._terms[0].supports_prox
        return self.prox_plan() is not None

    def _prox(self, tensors, step, impl):
        if len(self._terms) == 1:
            self._terms[0]._prox(tensors, step, impl)
            return
        plan = self.prox_plan()
        if plan is None:
            raise ValueError(self.no_prox_message())
        plan.apply(tensors, step, impl)

    def no_prox_message(self) -> str:
        return (
            f"The sum {self!r} has no closed-form proximal operator here (closed forms exist for "
            "sums of L1, L2, ElasticNet and one GroupLasso grouping), so mode='prox' cannot apply "
            "it; use mode='loss' or mode='grad'."
        )

    def check_tensor(self, name: str, tensor: torch.Tensor) -> None:
        for term in self._terms:
            term.check_tensor(name, tensor)

    def scaled(self, factor: float) -> Penalty:
        return Sum([t.scaled(factor) for t in self._terms])

    def get_config(self) -> dict[str, Any]:
        return {"name": "Sum", "terms": [t.get_config() for t in self._terms]}

    def __repr__(self) -> str:
        return " + ".join(repr(t) for t in self._terms)


class Scaled(Penalty):
    """``c·R`` for a penalty ``R`` whose strengths do not scale into another penalty of its kind.

    ``value`` and ``grad`` are multiplied by ``c``; the prox with step ``t`` is ``R``'s prox with
    step ``c·t`` (``prox_{t·cR} = prox_{(ct)·R}``).

    Args:
        penalty: The penalty ``R``.
        factor: ``c >= 0``.
    """

    name = "Scaled"
    internal = True

    def __init__(self, penalty: Penalty, factor: float) -> None:
        if not isinstance(penalty, Penalty):
            raise TypeError(f"The 'penalty' argument of Scaled must be a Penalty; got {penalty!r}.")
        self.penalty = penalty
        self.factor = check_real("Scaled", "factor", factor, Interval(low=0.0))

    @classmethod
    def _from_config_args(cls, kwargs: dict[str, Any]) -> Scaled:
        return cls(penalty_from_config(kwargs["penalty"]), kwargs["factor"])

    @property
    def elementwise(self) -> bool:  # type: ignore[override]
        return self.penalty.elementwise

    @property
    def supports_prox(self) -> bool:
        return self.penalty.supports_prox

    def parts(self) -> dict[str, Penalty]:
        return {name: part.scaled(self.factor) for name, part in self.penalty.parts().items()}

    def _value(self, tensors, impl):
        return self.factor * self.penalty._value(tensors, impl)

    def _grad(self, tensors, impl):
        grads = self.penalty._grad(tensors, impl)
        torch._foreach_mul_(grads, self.factor)
        return grads

    def _add_grad(self, tensors, grads, alpha, impl):
        self.penalty._add_grad(tensors, grads, alpha * self.factor, impl)

    def _prox(self, tensors, step, impl):
        self.penalty._prox(tensors, step * self.factor, impl)

    def check_tensor(self, name: str, tensor: torch.Tensor) -> None:
        self.penalty.check_tensor(name, tensor)

    def scaled(self, factor: float) -> Penalty:
        return Scaled(self.penalty, self.factor * factor)

    def get_config(self) -> dict[str, Any]:
        return {"name": "Scaled", "factor": self.factor, "penalty": self.penalty.get_config()}

    def __repr__(self) -> str:
        return f"{self.factor:g} * {self.penalty!r}"
