"""The Regularizer: penalties bound to a model's parameters, applied in loss, grad or prox mode."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from regtorch._validation import Interval, check_choice, check_real
from regtorch.distributed._detect import has_dtensor
from regtorch.penalties import Penalty
from regtorch.penalties._backends import backend_for
from regtorch.regularizer._metric_prox import PROX_METRICS, check_metric_optimizer
from regtorch.regularizer._rules import Rule, check_unchanged, load_state, resolve_rules
from regtorch.regularizer._selection import Selection
from regtorch.regularizer._steps import prox_step, selected_in
from regtorch.sparse._stats import Stats, parameter_stats

__all__ = ["MODES", "AttachHandle", "Regularizer", "regularize"]

MODES = ("loss", "grad", "prox")


class AttachHandle:
    """What :meth:`Regularizer.attach` returns: ``.remove()`` detaches the hooks (idempotent)."""

    def __init__(self, regularizer: Regularizer, optimizer: torch.optim.Optimizer, hooks: list) -> None:
        self.regularizer = regularizer
        self.optimizer = optimizer
        self.hooks = hooks

    def remove(self) -> None:
        """Remove every hook this attach registered."""
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        self.regularizer._forget(self)

    def __enter__(self) -> AttachHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class Regularizer:
    """Penalties bound to a model's parameters, applied in one of three modes.

    * ``mode="loss"``: :meth:`penalty` is a differentiable 0-dim tensor to add to the loss;
      minimizes ``L(w) + s·R(w)``.
    * ``mode="grad"``: after :meth:`attach`, a step pre-hook adds ``s·∂R(w)`` to each selected
      parameter's ``.grad`` before every ``optimizer.step()``; the updates equal loss mode's.
    * ``mode="prox"``: after :meth:`attach`, a step post-hook applies ``w ← prox_{t·s·R}(w)`` to each
      selected parameter the step updated (it has a ``.grad``), with ``t = lr × step_factor`` of its
      parameter group at that step. With plain SGD this is proximal gradient descent (ISTA); with
      Adam it is decoupled (AdamW-style) decay for L2 and exact zeros for L1.
      With ``prox_metric="adam"`` the prox is taken in Adam's diagonal metric instead: per
      element, ``τ₁ᵢ = t·s·λ₁ / (√v̂ᵢ + ε)`` and ``wᵢ ← soft(wᵢ, τ₁ᵢ) / (1 + 2·t·s·λ₂ / (√v̂ᵢ + ε))``
      with ``v̂ = exp_avg_sq / (1 − β₂^step)`` read from the optimizer (Adam, AdamW, NAdam, RAdam).

    Here ``s`` is :attr:`scale` times ``schedule(num_steps)`` (both 1 by default).

    Args:
        model: The model whose parameters are regularized (``torch.compile`` and DDP wrappers are
            looked through).
        penalty: A :class:`~regtorch.Penalty`, or per-layer rules: a list of ``(selection, penalty)``
            pairs (Keras' per-layer regularizers). A parameter claimed by two rules is an error.
        params: The selection for a single penalty (default ``"weights"``); see
            :func:`regtorch.select_parameters`. Not allowed with rules.
        exclude: Parameters to leave out of every rule.
        mode: ``"loss"``, ``"grad"`` or ``"prox"``.
        step_factor: Multiplies the learning rate to give the prox step (prox mode).
        schedule: Optional ``f(num_steps) -> factor`` multiplying the strength (warm-up).
        foreach: Use multi-tensor kernels (default: on accelerators and for small tensors).
        fused: Use compiled one-pass kernels. ``None`` (default) picks them for 4M+ regularized
            elements where a compiler is available (the first call compiles: seconds on CPU);
            ``True`` forces them; ``False`` never. Where compilation fails regtorch warns once and
            runs eagerly.
        prox_metric: ``"euclidean"`` (default: ``prox_{t·s·R}``) or ``"adam"`` (the prox in the
            optimizer's diagonal metric ``diag(√v̂ + ε)``; prox mode, element-wise penalties of the
            elastic-net family and Adam-family optimizers only).
        example_input: One batch of inputs, needed by ``GroupLasso(groups="coupled")``: the model
            is traced once to find its coupled channels (requires ``regtorch[prune]``).

    Raises:
        ValueError: For an unknown mode, an empty selection, a parameter claimed twice, a penalty
            that cannot act on a parameter, ``mode="prox"`` with a penalty without a prox,
            ``prox_metric="adam"`` outside prox mode or with a group penalty, or parameters on the
            ``meta`` device.
        TypeError: For a penalty that is not a :class:`~regtorch.Penalty`, or complex/integer
            parameters.

    Examples:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> reg = Regularizer(model, L1(1e-3), mode="prox")
        >>> handle = reg.attach(opt)
    """

    def __init__(
        self,
        model: nn.Module,
        penalty: Penalty | Sequence[tuple[Selection, Penalty]],
        *,
        params: Selection | None = None,
        exclude: Selection | None = None,
        mode: str = "loss",
        step_factor: float = 1.0,
        schedule: Callable[[int], float] | None = None,
        foreach: bool | None = None,
        fused: bool | None = None,
        prox_metric: str = "euclidean",
        example_input: Any = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"The 'model' argument of Regularizer must be an nn.Module; got {type(model).__name__}."
            )
        self.mode = check_choice("Regularizer", "mode", mode, MODES)
        self.prox_metric = check_choice("Regularizer", "prox_metric", prox_metric, PROX_METRICS)
        if self.prox_metric != "euclidean" and self.mode != "prox":
            raise ValueError(
                f"The 'prox_metric' argument of Regularizer applies to mode='prox' only; got "
                f"prox_metric={prox_metric!r} with mode={mode!r}."
            )
        self.step_factor = check_real("Regularizer", "step_factor", step_factor, Interval(low=0.0))
        if schedule is not None and not callable(schedule):
            raise TypeError(
                f"The 'schedule' argument of Regularizer must be a callable f(step) -> float or "
                f"None; got {schedule!r}."
            )
        self.schedule = schedule
        for name, flag in (("foreach", foreach), ("fused", fused)):
            if flag not in (None, True, False):
                raise TypeError(
                    f"The {name!r} argument of Regularizer must be None, True or False; got {flag!r}."
                )
        self.foreach = foreach
        self.fused = fused
        self._scale = 1.0
        self.num_steps = 0
        self._handles: list[AttachHandle] = []
        self.rules: list[Rule] = resolve_rules(
            model,
            penalty,
            params,
            exclude,
            mode=self.mode,
            prox_metric=self.prox_metric,
            example_input=example_input,
        )
        """The resolved rules: each penalty with its parameter names and parameters."""
        self._rule_of = {id(p): r for r in self.rules for p in r.params}
        self._unchecked_model: weakref.ref[nn.Module] | None = weakref.ref(model)

    # ----------------------------------------------------------------- properties
    @property
    def penalties(self) -> list[Penalty]:
        """The penalty of each rule (one for a single penalty)."""
        return [r.penalty for r in self.rules]

    @property
    def scale(self) -> float:
        """A factor >= 0 multiplying every strength; set it to schedule the strength by hand."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        self._scale = check_real("Regularizer", "scale", value, Interval(low=0.0))

    @property
    def sharded(self) -> bool:
        """Whether the regularized parameters are FSDP2 ``DTensor`` shards."""
        return has_dtensor(self.parameters())

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers this regularizer is attached to (one entry per :meth:`attach` in force)."""
        return [handle.optimizer for handle in self._handles]

    def factor(self) -> float:
        """Return the current strength multiplier ``scale × schedule(num_steps)``."""
        if self.schedule is None:
            return self._scale
        scheduled = check_real(
            "Regularizer", "schedule(step)", self.schedule(self.num_steps), Interval(low=0.0)
        )
        return self._scale * scheduled

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Return the regularized ``(name, parameter)`` pairs, in rule order."""
        return [(n, p) for r in self.rules for n, p in zip(r.names, r.params, strict=True)]

    def parameters(self) -> list[nn.Parameter]:
        """Return the regularized parameters."""
        return [p for r in self.rules for p in r.params]

    def _check_model(self) -> None:
        """Once, at first use: the model still holds the parameters (not resharded, not replaced)."""
        if self._unchecked_model is not None:
            model, self._unchecked_model = self._unchecked_model(), None
            if model is not None:
                check_unchanged(model, self.rules)

    # ----------------------------------------------------------------- values
    def penalty(self) -> torch.Tensor:
        """Return the total penalty ``s·Σ_rules R(w)`` as a 0-dim tensor.

        In loss mode it is differentiable (add it to the loss); in grad and prox modes it is
        detached, for logging. With sharded parameters (FSDP2) it is the global value, the same on
        every rank: local sums on the shards and one all-reduce for all rules (call it on every rank).
        """
        self._check_model()
        factor = self.factor()
        rules: list[tuple[Penalty, list[torch.Tensor]]] = [(r.penalty, list(r.params)) for r in self.rules]
        backend = backend_for(self.parameters())
        if self.mode == "loss":
            total = backend.value(rules, self.foreach, self.fused)
        else:
            with torch.no_grad():
                total = backend.value(rules, self.foreach, self.fused)
        return total * factor if factor != 1.0 else total

    def stats(self) -> Stats:
        """Return per-parameter penalty, norms, exact zeros and zero groups, with totals."""
        triples = [(n, p, r.penalty) for r in self.rules for n, p in zip(r.names, r.params, strict=True)]
        return parameter_stats(triples, factor=self.factor())

    # ----------------------------------------------------------------- optimizer hooks
    def attach(self, optimizer: torch.optim.Optimizer, *, partial: bool = False) -> AttachHandle:
        """Hook this regularizer into ``optimizer``'s steps.

        In grad mode a step pre-hook adds the (sub)gradient; in prox mode a step post-hook applies
        the prox; in every mode a post-hook counts steps for ``schedule``.

        Args:
            optimizer: A ``torch.optim`` optimizer holding the regularized parameters.
            partial: Allow an optimizer that holds only some of them (several optimizers).

        Returns:
            A handle whose ``.remove()`` detaches the hooks.

        Raises:
            TypeError: If ``optimizer`` is not a ``torch.optim.Optimizer``.
            ValueError: For LBFGS in grad/prox mode, an optimizer missing the parameters, an
                optimizer this regularizer is already attached to, or ``prox_metric="adam"`` with
                an optimizer that keeps no ``exp_avg_sq``.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                "The 'optimizer' argument of Regularizer.attach must be a torch.optim.Optimizer; "
                f"got {type(optimizer).__name__}."
            )
        if any(h.optimizer is optimizer for h in self._handles):
            raise ValueError(
                "The 'optimizer' argument of Regularizer.attach is already attached to this regularizer "
                "(its penalty would be applied twice per step); call .remove() on the first handle first."
            )
        if isinstance(optimizer, torch.optim.LBFGS) and self.mode != "loss":
            raise ValueError(
                f"LBFGS re-evaluates a closure inside step(), so mode={self.mode!r} cannot hook "
                "it; use mode='loss' and add reg.penalty() to the loss inside the closure."
            )
        if self.prox_metric == "adam":
            check_metric_optimizer(optimizer)
        self._check_model()
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [n for n, p in self.named_parameters() if id(p) not in held]
        if len(missing) == len(self.parameters()) or (missing and not partial):
            shown = ", ".join(repr(n) for n in missing[:5]) + (" …" if len(missing) > 5 else "")
            raise ValueError(
                "The 'optimizer' argument of Regularizer.attach must hold the regularized "
                f"parameters; it lacks {len(missing)} of {len(self.parameters())}: {shown}. "
                "Build the optimizer from model.parameters(), or pass partial=True when several "
                "optimizers share the model."
            )
        hooks = []
        if self.mode == "grad":
            hooks.append(optimizer.register_step_pre_hook(self._grad_hook))
        hooks.append(optimizer.register_step_post_hook(self._post_step_hook))
        handle = AttachHandle(self, optimizer, hooks)
        self._handles.append(handle)
        return handle

    def _forget(self, handle: AttachHandle) -> None:
        if handle in self._handles:
            self._handles.remove(handle)

    def _grad_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        # ``args`` is the step's full argument tuple: (optimizer, closure?).
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is not None:
            # step(closure) computes the gradients inside the closure: add ∂R right after it runs.
            def closure_then_penalty() -> Any:
                loss = closure()
                self.add_grad_(optimizer)
                return loss

            if "closure" in kwargs:
                return args, {**kwargs, "closure": closure_then_penalty}
            return (args[0], closure_then_penalty, *args[2:]), kwargs
        self.add_grad_(optimizer)
        return None

    def add_grad_(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Add ``∂(s·R)`` to the ``.grad`` of the regularized parameters now, as grad mode's hook does.

        Only parameters that have a gradient, and that ``optimizer`` holds when one is given (for
        custom training loops that call it between ``backward()`` and their update).

        Raises:
            TypeError: If a gradient is sparse.
        """
        factor = self.factor()
        if factor == 0:
            return
        jobs = []
        for _, rule, params in selected_in(self.rules, self._rule_of, optimizer):
            for p in params:
                if p.grad is not None and p.grad.is_sparse:
                    raise TypeError(
                        "mode='grad' adds a dense (sub)gradient and cannot add it to the sparse "
                        f"gradient of the parameter of shape {tuple(p.shape)}; use mode='prox' or "
                        "'loss', or a dense gradient (e.g. nn.Embedding(sparse=False))."
                    )
            if not rule.per_tensor:
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
            jobs.append((rule.penalty, params, [p.grad for p in params if p.grad is not None]))
        if jobs:
            backend_for(self.parameters()).add_grad_(jobs, factor, self.foreach, self.fused)

    def _post_step_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.mode == "prox":
            factor = self.factor()
            if factor > 0:
                for group, rule, params in selected_in(self.rules, self._rule_of, optimizer):
                    prox_step(self, optimizer, group, rule, params, factor)
        if self._handles and optimizer is self._handles[0].optimizer:
            self.num_steps += 1

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Return the mutable state: penalties' strengths (as configs), scale and step count.

        ``mode`` and ``prox_metric`` are recorded as configuration, so that a state is not loaded
        into a regularizer configured otherwise.
        """
        return {
            "mode": self.mode,
            "prox_metric": self.prox_metric,
            "scale": self._scale,
            "num_steps": self.num_steps,
            "penalties": [r.penalty.get_config() for r in self.rules],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (strengths, scale, step count).

        Raises:
            ValueError: If the state belongs to a regularizer of another mode, prox metric, rule
                count or penalty kind (only strengths may differ); nothing is changed then.
        """
        self._scale, self.num_steps = load_state(self.rules, state, self.mode, self.prox_metric)

    def __repr__(self) -> str:
        metric = "" if self.prox_metric == "euclidean" else f", prox_metric={self.prox_metric!r}"
        return f"Regularizer(mode={self.mode!r}{metric}, {', '.join(r.describe() for r in self.rules)})"


def regularize(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    penalty: Penalty | Sequence[tuple[Selection, Penalty]],
    *,
    mode: str = "loss",
    params: Selection | None = None,
    **kwargs: Any,
) -> Regularizer:
    """Build a :class:`Regularizer` and attach it to ``optimizer`` in one line.

    In loss mode, remember to add ``reg.penalty()`` to the loss.

    Examples:
        >>> reg = regularize(model, optimizer, ElasticNet(l1=1e-5, l2=1e-4), mode="prox")
    """
    reg = Regularizer(model, penalty, params=params, mode=mode, **kwargs)
    reg.attach(optimizer)
    return reg
