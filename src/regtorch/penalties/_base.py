"""The penalty protocol: small stateless objects with ``value``, ``grad`` and ``prox`` on lists of tensors.

A penalty ``R`` maps a list of tensors ``[w₁, …, w_k]`` to a number, ``Σᵢ R(wᵢ)`` for every penalty
whose groups lie within one tensor. Every penalty offers

* :meth:`Penalty.value` — ``R`` as a 0-dim tensor, differentiable (its backward writes each
  gradient in one pass: no parameter-sized temporaries beyond the gradient);
* :meth:`Penalty.grad` and :meth:`Penalty.add_grad_` — the (sub)gradient, 0 at kinks;
* :meth:`Penalty.prox` — ``w ← argmin_x ½‖x − w‖² + t·R(x)``, in place;
* :meth:`Penalty.get_config` / :func:`penalty_from_config` — a JSON round trip.

A new penalty subclasses :class:`Penalty`, sets ``name`` (which registers it: the command line,
logs and configs then know it), declares its arguments as :class:`~regtorch._validation.Hyperparameter`
attributes, and implements three methods on plain tensors, with the implementation kind chosen
by :func:`regtorch.kernels.choose`: ``_value`` (a float64 0-dim tensor), ``_grad`` (new tensors)
and, if it has one, ``_prox`` (in place). ``_add_grad`` is derived from ``_grad``; a penalty may
override it (and ``_value_and_grad``) with one-pass kernels. Whether a tensor is a plain tensor or
a shard of an FSDP2 parameter is decided once per call, outside the penalty
(:mod:`regtorch.penalties._backends`).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from regtorch._validation import Interval, check_real, hyperparameters
from regtorch.kernels import Impl

if TYPE_CHECKING:
    from regtorch.penalties._prox_plan import ProxPlan

__all__ = ["Penalty", "as_list", "list_penalties", "penalty_class", "penalty_from_config"]

_REGISTRY: dict[str, type[Penalty]] = {}

NON_NEGATIVE = Interval(low=0.0)


def as_list(tensors: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A tensor or a sequence of tensors as a list."""
    return [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)


class Penalty:
    """Base class of every penalty: the public operations and the algebra.

    Class attributes:
        name: The registry name (also ``get_config()["name"]``); a subclass that sets it is
            registered.
        elementwise: Whether ``R(w) = Σⱼ r(wⱼ)`` entry by entry (a shard's value, gradient and prox
            are then its own).
    """

    name: ClassVar[str] = "Penalty"
    elementwise: ClassVar[bool] = False
    internal: ClassVar[bool] = False
    """Compositions (sums, scaling) are registered for configs but not listed as penalties."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _REGISTRY[cls.name] = cls

    # ----------------------------------------------------------------- the extension protocol
    def _value(self, tensors: list[torch.Tensor], impl: Impl) -> torch.Tensor:
        """``R`` over plain tensors as a float64 0-dim tensor on the first tensor's device."""
        raise NotImplementedError

    def _grad(self, tensors: list[torch.Tensor], impl: Impl) -> list[torch.Tensor]:
        """``∂R/∂wᵢ`` for each plain tensor, as new tensors."""
        raise NotImplementedError

    def _prox(self, tensors: list[torch.Tensor], step: float, impl: Impl) -> None:
        """``wᵢ ← prox_{step·R}(w)ᵢ`` in place; raises if the penalty has no prox."""
        raise ValueError(self.no_prox_message())

    def _add_grad(
        self, tensors: list[torch.Tensor], grads: list[torch.Tensor], alpha: float, impl: Impl
    ) -> None:
        """``gᵢ += alpha·∂R/∂wᵢ`` in place (derived from :meth:`_grad`)."""
        for g, d in zip(grads, self._grad(tensors, impl), strict=True):
            g.add_(d, alpha=alpha)

    def _value_and_grad(
        self, tensors: list[torch.Tensor], impl: Impl
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """The value and, where one pass computed it too, the gradient (``None`` entries otherwise)."""
        return self._value(tensors, impl), [None] * len(tensors)

    # ----------------------------------------------------------------- structure
    @property
    def supports_prox(self) -> bool:
        """Whether :meth:`prox` can be computed (a closed form or an exact per-element solve)."""
        return type(self)._prox is not Penalty._prox

    def prox_plan(self) -> ProxPlan | None:
        """The closed-form prox as a :class:`~regtorch.penalties.ProxPlan`, for penalties of the
        elastic-net and group-lasso families (sums of them keep a closed form)."""
        return None

    def check_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Raise ``ValueError`` if this penalty cannot act on ``tensor`` (parameter ``name``)."""

    def no_prox_message(self) -> str:
        """The message prox mode gives for a penalty without a prox."""
        return (
            f"{self!r} has no closed-form proximal operator, so mode='prox' cannot apply it; "
            "use mode='loss' or mode='grad'."
        )

    # ----------------------------------------------------------------- public operations
    def value(
        self,
        tensors: torch.Tensor | Sequence[torch.Tensor],
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> torch.Tensor:
        """Return ``R(w₁, …, w_k)`` as a 0-dim tensor.

        Accumulated in float64 and returned in float32 (float64 if any tensor is float64), so
        bf16/fp16 parameters get an accurate penalty. Differentiable when a tensor requires grad
        and grad mode is on; the backward writes each gradient in one pass.

        Args:
            tensors: A tensor or a list of tensors (plain, or FSDP2 ``DTensor`` parameters: then a
                collective, called on every rank).
            foreach: Use multi-tensor kernels (default: on accelerators and for small tensors).
            fused: Use compiled kernels (default: for 4M+ elements where a compiler is available).
        """
        from regtorch.penalties._backends import backend_for

        tensors = as_list(tensors)
        return backend_for(tensors).value([(self, tensors)], foreach, fused)

    __call__ = value

    def grad(
        self,
        tensors: torch.Tensor | Sequence[torch.Tensor],
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        scale: float = 1.0,
    ) -> list[torch.Tensor]:
        """Return ``scale·∂R/∂wᵢ`` for each tensor (0 at non-differentiable points)."""
        from regtorch.penalties._backends import backend_for

        tensors = [t.detach() for t in as_list(tensors)]
        return backend_for(tensors).grad(self, tensors, scale, foreach, fused)

    def add_grad_(
        self,
        tensors: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        *,
        alpha: float = 1.0,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        """Add ``alpha·∂R/∂wᵢ`` to ``grads[i]`` in place (what grad mode does to ``.grad``)."""
        from regtorch.penalties._backends import backend_for

        tensors = as_list(tensors)
        backend_for(tensors).add_grad_([(self, tensors, list(grads))], alpha, foreach, fused)

    def prox(
        self,
        tensors: torch.Tensor | Sequence[torch.Tensor],
        step: float,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        """Apply the proximal operator in place: ``wᵢ ← argmin_x ½‖x − wᵢ‖² + step·R(x)``.

        Args:
            tensors: The tensors to update in place.
            step: The step ``t >= 0`` (in prox mode: the optimizer's current learning rate).
            foreach: Use multi-tensor kernels (default: on accelerators and for small tensors).
            fused: Use compiled kernels (default: for 4M+ elements where a compiler is available).

        Raises:
            ValueError: If ``step`` is negative or not finite, too large for a non-convex penalty,
                or the penalty has no prox.
        """
        from regtorch.penalties._backends import backend_for

        step = check_real(type(self).__name__ + ".prox", "step", step, NON_NEGATIVE)
        tensors = as_list(tensors)
        backend_for(tensors).prox_(self, tensors, step, foreach, fused)

    # ----------------------------------------------------------------- algebra and config
    def get_config(self) -> dict[str, Any]:
        """Return a JSON-serializable description; :func:`penalty_from_config` inverts it."""
        return {"name": self.name, **{k: getattr(self, k) for k in hyperparameters(type(self))}}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Penalty:
        """Build a penalty from :meth:`get_config`'s output."""
        return penalty_from_config(config)

    def terms(self) -> list[Penalty]:
        """Return the penalties this one adds up (itself for a single penalty)."""
        return [self]

    def parts(self) -> dict[str, Penalty]:
        """Return the named parts logs report separately: ``{"L1": …, "L2": …}`` for an elastic
        net, ``{name: self}`` for other single penalties; a sum merges its terms' parts."""
        return {self.name: self}

    def scaled(self, factor: float) -> Penalty:
        """Return ``factor·R`` (``factor >= 0``).

        Penalties whose strengths all scale linearly (``c·L1(λ) = L1(cλ)``) return the same kind
        of penalty; others a :class:`~regtorch.penalties.Scaled` wrapper.
        """
        from regtorch.penalties._algebra import Scaled

        declared = hyperparameters(type(self))
        if self.linear_in_strength and any(h.scales for h in declared.values()):
            config = self.get_config()
            for key, h in declared.items():
                if h.scales:
                    config[key] = config[key] * factor
            return penalty_from_config(config)
        return Scaled(self, factor)

    linear_in_strength: ClassVar[bool] = False
    """Whether multiplying the ``scales`` hyperparameters by ``c`` multiplies ``R`` by ``c``."""

    def __add__(self, other: object) -> Penalty:
        from regtorch.penalties._algebra import Sum

        if isinstance(other, numbers.Number) and other == 0:
            return self  # lets sum([...]) work
        if not isinstance(other, Penalty):
            return NotImplemented
        return Sum([*self.terms(), *other.terms()])

    __radd__ = __add__

    def __mul__(self, factor: object) -> Penalty:
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            return NotImplemented
        return self.scaled(check_real(type(self).__name__, "factor", factor, NON_NEGATIVE))

    __rmul__ = __mul__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Penalty) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        config = self.get_config()
        args = ", ".join(f"{k}={v!r}" for k, v in config.items() if k != "name")
        return f"{config['name']}({args})"


def penalty_class(name: str) -> type[Penalty]:
    """Return the registered penalty class called ``name`` (case-insensitive).

    Raises:
        ValueError: If no penalty has that name.
    """
    public = {n.lower(): c for n, c in _REGISTRY.items() if not c.internal}
    found = public.get(str(name).lower())
    if found is None:
        raise ValueError(f"Unknown penalty {name!r}; known: {', '.join(list_penalties())}.")
    return found


def penalty_from_config(config: dict[str, Any]) -> Penalty:
    """Rebuild a penalty from :meth:`Penalty.get_config`'s output.

    Raises:
        ValueError: If ``config`` is not a dict naming a known penalty.
    """
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(
            f"The 'config' argument of penalty_from_config must be a dict with a 'name' key; got {config!r}."
        )
    name = config["name"]
    if name not in _REGISTRY:
        raise ValueError(
            f"The 'config' argument of penalty_from_config names an unknown penalty {name!r}; "
            f"known: {', '.join(sorted(_REGISTRY))}."
        )
    cls = _REGISTRY[name]
    kwargs = {k: v for k, v in config.items() if k != "name"}
    builder = getattr(cls, "_from_config_args", None)
    return builder(kwargs) if builder is not None else cls(**kwargs)


def list_penalties() -> list[str]:
    """Return the names of the registered penalties (compositions excluded), sorted."""
    return sorted(n for n, c in _REGISTRY.items() if not c.internal)
