"""The Regularizer: penalties bound to a model's parameters, applied in loss, grad or prox mode."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from regtorch import _distributed
from regtorch._distributed import fully_sharded, has_dtensor, local_views
from regtorch._penalty import Penalty, penalty_from_config
from regtorch._validation import Interval, check_choice, check_real
from regtorch.regularizer._metric_prox import (
    PROX_METRICS,
    adam_denominators,
    check_metric_optimizer,
    check_metric_penalty,
    metric_prox_,
)
from regtorch.regularizer._selection import Selection, describe_selection, select_parameters
from regtorch.sparse._stats import Stats, parameter_stats

__all__ = ["MODES", "AttachHandle", "Regularizer", "regularize"]

MODES = ("loss", "grad", "prox")


@dataclass
class _Rule:
    selection: Any
    penalty: Penalty
    names: list[str]
    params: list[nn.Parameter]


class AttachHandle:
    """What :meth:`Regularizer.attach` returns: ``.remove()`` detaches the hooks (idempotent)."""

    def __init__(self, regularizer: Regularizer, optimizer: torch.optim.Optimizer, hooks: list):
        self.regularizer = regularizer
        self.optimizer = optimizer
        self._hooks = hooks

    def remove(self) -> None:
        """Remove every hook this attach registered."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self in self.regularizer._handles:
            self.regularizer._handles.remove(self)

    def __enter__(self) -> AttachHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _is_rule_list(penalty: Any) -> bool:
    return isinstance(penalty, (list, tuple)) and all(
        isinstance(r, (list, tuple)) and len(r) == 2 for r in penalty
    )


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
      with ``v̂ = exp_avg_sq / (1 − β₂^step)`` read from the optimizer (Adam, AdamW, NAdam, RAdam);
      see :mod:`regtorch.regularizer._metric_prox`.

    Here ``s`` is :attr:`scale` times ``schedule(num_steps)`` (both 1 by default).

    Args:
        model: The model whose parameters are regularized (``torch.compile`` and DDP wrappers are
            looked through).
        penalty: A :class:`Penalty`, or per-layer rules: a list of ``(selection, penalty)`` pairs
            (Keras' per-layer regularizers). A parameter claimed by two rules is an error.
        params: The selection for a single penalty (default ``"weights"``: ndim >= 2 outside
            normalization layers); see :func:`regtorch.select_parameters`. Not allowed with rules.
        exclude: Parameters to leave out of every rule.
        mode: ``"loss"``, ``"grad"`` or ``"prox"``.
        step_factor: Multiplies the learning rate to give the prox step (prox mode).
        schedule: Optional ``f(num_steps) -> factor`` multiplying the strength (warm-up).
        foreach: Use multi-tensor kernels (default: on accelerators).
        fused: Use compiled one-pass kernels for the element-wise work. ``None`` (default) picks
            them for 4M+ regularized elements where a compiler is available; ``True`` forces
            them; where compilation fails regtorch warns once and runs eagerly.
        prox_metric: ``"euclidean"`` (default: ``prox_{t·s·R}``) or ``"adam"`` (the prox in the
            optimizer's diagonal metric ``diag(√v̂ + ε)``; prox mode, element-wise penalties and
            Adam-family optimizers only).

    Raises:
        ValueError: For an unknown mode, an empty selection, a parameter claimed twice, a penalty
            that cannot act on a parameter, ``mode="prox"`` with a penalty without a prox, or
            ``prox_metric="adam"`` outside prox mode or with a group penalty.
        TypeError: For a penalty that is not a :class:`Penalty`, or complex/integer parameters.

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
        self.foreach = foreach
        if fused not in (None, True, False):
            raise TypeError(
                f"The 'fused' argument of Regularizer must be None, True or False; got {fused!r}."
            )
        self.fused = fused
        self._scale = 1.0
        self.num_steps = 0
        # Set by a training loop that already added this step's grad-mode (sub)gradient to .grad
        # (folded into its own backward pass); the next grad hook then skips it, once.
        self._grad_added = False
        self._handles: list[AttachHandle] = []
        self._rules = self._resolve(model, penalty, params, exclude)
        self._rule_of = {id(p): r for r in self._rules for p in r.params}
        self._sharded = has_dtensor(self.parameters())  # FSDP2 DTensor parameters
        # checked once (first penalty() or attach()): fully_shard after this replaced the parameters
        self._unchecked_model = None if self._sharded else weakref.ref(model)

    # ----------------------------------------------------------------- construction
    def _resolve(self, model, penalty, params, exclude) -> list[_Rule]:
        if isinstance(penalty, Penalty):
            rules_in = [("weights" if params is None else params, penalty)]
        elif _is_rule_list(penalty) and penalty:
            if params is not None:
                raise ValueError(
                    "The 'params' argument of Regularizer must be left out when 'penalty' is a "
                    "list of (selection, penalty) rules: each rule has its own selection; got "
                    f"params={describe_selection(params)}."
                )
            rules_in = list(penalty)
        else:
            raise TypeError(
                "The 'penalty' argument of Regularizer must be a Penalty (e.g. regtorch.L1(1e-4)) "
                f"or a non-empty list of (selection, penalty) pairs; got {penalty!r}."
            )
        rules: list[_Rule] = []
        owner_of: dict[int, tuple[int, str]] = {}
        for index, (selection, rule_penalty) in enumerate(rules_in):
            if not isinstance(rule_penalty, Penalty):
                raise TypeError(
                    f"Rule {index} of the 'penalty' argument of Regularizer must pair a selection "
                    f"with a Penalty; got {rule_penalty!r} of type {type(rule_penalty).__name__}."
                )
            if self.mode == "prox" and not rule_penalty.supports_prox:
                raise ValueError(rule_penalty._no_prox_message())
            if self.prox_metric == "adam":
                check_metric_penalty(rule_penalty)
            chosen = select_parameters(model, selection, exclude=exclude)
            for name, param in chosen:
                if id(param) in owner_of:
                    first, _first_name = owner_of[id(param)]
                    raise ValueError(
                        f"Parameter {name!r} is claimed by two rules of Regularizer: rule {first} "
                        f"({describe_selection(rules_in[first][0])}) and rule {index} "
                        f"({describe_selection(selection)}). Each parameter may have one penalty; "
                        "narrow a selection or use exclude=."
                    )
                owner_of[id(param)] = (index, name)
                rule_penalty.check_tensor(name, param)
            rules.append(_Rule(selection, rule_penalty, [n for n, _ in chosen], [p for _, p in chosen]))
        return rules

    # ----------------------------------------------------------------- properties
    @property
    def penalties(self) -> list[Penalty]:
        """The penalty of each rule (one for a single penalty)."""
        return [r.penalty for r in self._rules]

    @property
    def scale(self) -> float:
        """A factor >= 0 multiplying every strength; set it to schedule the strength by hand."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        self._scale = check_real("Regularizer", "scale", value, Interval(low=0.0))

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
        return [(n, p) for r in self._rules for n, p in zip(r.names, r.params, strict=False)]

    def parameters(self) -> list[nn.Parameter]:
        """Return the regularized parameters."""
        return [p for r in self._rules for p in r.params]

    # ----------------------------------------------------------------- loss mode and values
    def penalty(self) -> torch.Tensor:
        """Return the total penalty ``s·Σ_rules R(w)`` as a 0-dim tensor.

        In loss mode it is differentiable (add it to the loss); in grad and prox modes it is
        detached, for logging. With sharded parameters (FSDP2) it is the global value, the same on
        every rank: local sums on the shards and one all-reduce for all rules (call it on every rank).
        """
        if self._unchecked_model is not None:
            self._check_not_resharded()
        factor = self.factor()
        if self._sharded:
            penalties = [r.penalty for r in self._rules for _ in r.params]
            if self.mode == "loss":
                total = _distributed.value(penalties, self.parameters(), self.foreach, self.fused)
            else:
                with torch.no_grad():
                    total = _distributed.value(penalties, self.parameters())
            return total * factor if factor != 1.0 else total
        if self.mode == "loss":
            values = [r.penalty.value(r.params, foreach=self.foreach, fused=self.fused) for r in self._rules]
        else:
            with torch.no_grad():
                values = [r.penalty.value(r.params) for r in self._rules]
        total = values[0]
        for value in values[1:]:
            total = total + value.to(total.device)
        return total * factor if factor != 1.0 else total

    # ----------------------------------------------------------------- custom training loops
    def grad_coefficients(self) -> dict[torch.Tensor, tuple[float, float]] | None:
        """Return ``{p: (a₁, a₂)}`` with ``∂(s·R)/∂p = a₁·sign(p) + a₂·p`` right now, or None.

        ``a₁ = s·λ₁`` and ``a₂ = 2·s·λ₂`` (``s`` = :meth:`factor`) for every regularized parameter
        when each rule's penalty is element-wise (L1 and squared-L2 terms only) and nothing is
        sharded; None otherwise. For a training loop that writes the penalty's gradient inside its
        own kernels (``regtorch train`` folds it into the weight-gradient product), then calls
        :meth:`skip_next_grad_hook` in grad mode.
        """
        if self._sharded:
            return None
        factor = self.factor()
        coefficients: dict[torch.Tensor, tuple[float, float]] = {}
        for rule in self._rules:
            plan = rule.penalty._elementwise_plan()
            if plan is None:
                return None
            pair = (factor * plan.l1, 2.0 * factor * plan.l2)
            for p in rule.params:
                coefficients[p] = pair
        return coefficients

    def skip_next_grad_hook(self) -> None:
        """Make the next grad-mode hook call add nothing, once: this step's gradient is already added.

        For a training loop that added ``∂(s·R)`` itself (see :meth:`grad_coefficients`) to the
        gradients of an optimizer this regularizer is attached to, before calling its ``step()``.
        """
        self._grad_added = True

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers this regularizer is attached to (one entry per :meth:`attach` in force)."""
        return [handle.optimizer for handle in self._handles]

    def _check_not_resharded(self) -> None:
        model = self._unchecked_model()  # type: ignore[misc]
        self._unchecked_model = None
        if model is not None and fully_sharded(model):
            raise ValueError(
                "The model was sharded by FSDP2 (fully_shard) after this Regularizer was built, so "
                "it holds the parameters fully_shard replaced. Build the Regularizer (and the "
                "optimizer) after fully_shard."
            )

    def stats(self) -> Stats:
        """Return per-parameter penalty, norms, exact zeros and zero groups, with totals."""
        triples = [(n, p, r.penalty) for r in self._rules for n, p in zip(r.names, r.params, strict=False)]
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
            ValueError: For LBFGS in grad/prox mode, an optimizer missing the parameters, or
                ``prox_metric="adam"`` with an optimizer that keeps no ``exp_avg_sq``.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                "The 'optimizer' argument of Regularizer.attach must be a torch.optim.Optimizer; "
                f"got {type(optimizer).__name__}."
            )
        if isinstance(optimizer, torch.optim.LBFGS) and self.mode != "loss":
            raise ValueError(
                f"LBFGS re-evaluates a closure inside step(), so mode={self.mode!r} cannot hook "
                "it; use mode='loss' and add reg.penalty() to the loss inside the closure."
            )
        if self.prox_metric == "adam":
            check_metric_optimizer(optimizer)
        if self._unchecked_model is not None:
            self._check_not_resharded()
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

    def _selected_in(self, optimizer: torch.optim.Optimizer | None):
        """Yield ``(group, rule, params)`` for the regularized parameters each group holds.

        With no optimizer: ``(None, rule, params)`` for every rule's parameters that have a gradient.
        """
        if optimizer is None:
            for rule in self._rules:
                params = [p for p in rule.params if p.grad is not None]
                if params:
                    yield None, rule, params
            return
        rule_of = self._rule_of
        for group in optimizer.param_groups:
            by_rule: dict[int, tuple[_Rule, list[torch.Tensor]]] = {}
            for p in group["params"]:
                rule = rule_of.get(id(p))
                if rule is not None and p.grad is not None:
                    by_rule.setdefault(id(rule), (rule, []))[1].append(p)
            for rule, params in by_rule.values():
                yield group, rule, params

    def _grad_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        # ``args`` is the step's full argument tuple: (optimizer, closure?) — the closure, if any,
        # is args[1] or kwargs["closure"].
        if self._grad_added:
            self._grad_added = False
            return None
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

        Only parameters that have a gradient, and that ``optimizer`` holds when one is given.

        Raises:
            TypeError: If a gradient is sparse.
        """
        factor = self.factor()
        if factor == 0:
            return
        for _, rule, params in self._selected_in(optimizer):
            grads = []
            for p in params:
                if p.grad.is_sparse:
                    raise TypeError(
                        "mode='grad' adds a dense (sub)gradient and cannot add it to the sparse "
                        f"gradient of the parameter of shape {tuple(p.shape)}; use mode='prox' or "
                        "'loss', or a dense gradient (e.g. nn.Embedding(sparse=False))."
                    )
                grads.append(p.grad)
            rule.penalty.add_grad_(params, grads, alpha=factor, foreach=self.foreach, fused=self.fused)

    def _post_step_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.mode == "prox":
            factor = self.factor()
            if factor > 0:
                for group, rule, params in self._selected_in(optimizer):
                    lr = group["lr"]
                    lr = float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)
                    step = lr * self.step_factor * factor
                    if self.prox_metric == "adam":
                        denominators = adam_denominators(optimizer, group, params)
                        plan = check_metric_penalty(rule.penalty)
                        foreach = self.foreach if self.foreach is not None else params[0].device.type != "cpu"
                        if self._sharded:  # element-wise: on the local shards, no communication
                            params, denominators = local_views(params)[0], local_views(denominators)[0]
                        metric_prox_(params, denominators, step, plan, foreach=foreach)
                    else:
                        rule.penalty.prox(params, step, foreach=self.foreach, fused=self.fused)
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
            "penalties": [r.penalty.get_config() for r in self._rules],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (strengths, scale, step count).

        Raises:
            ValueError: If the state belongs to a regularizer of another mode, prox metric or rule
                count (a state without ``prox_metric`` counts as ``"euclidean"``).
        """
        if not isinstance(state, dict) or "penalties" not in state:
            raise ValueError(
                "The 'state' argument of Regularizer.load_state_dict must be a dict from "
                f"Regularizer.state_dict(); got {type(state).__name__}."
            )
        if state.get("mode") != self.mode or len(state["penalties"]) != len(self._rules):
            raise ValueError(
                "The 'state' argument of Regularizer.load_state_dict comes from a regularizer with "
                f"mode={state.get('mode')!r} and {len(state['penalties'])} rule(s); this one has "
                f"mode={self.mode!r} and {len(self._rules)} rule(s)."
            )
        if state.get("prox_metric", "euclidean") != self.prox_metric:
            raise ValueError(
                "The 'state' argument of Regularizer.load_state_dict comes from a regularizer with "
                f"prox_metric={state.get('prox_metric', 'euclidean')!r}; this one has "
                f"prox_metric={self.prox_metric!r}."
            )
        penalties = [penalty_from_config(c) for c in state["penalties"]]
        for rule, penalty in zip(self._rules, penalties, strict=False):
            rule.penalty = penalty
        self.scale = state.get("scale", 1.0)
        self.num_steps = int(state.get("num_steps", 0))

    def __repr__(self) -> str:
        rules = ", ".join(
            f"{describe_selection(r.selection)}: {r.penalty!r} ({len(r.params)} tensors)" for r in self._rules
        )
        metric = "" if self.prox_metric == "euclidean" else f", prox_metric={self.prox_metric!r}"
        return f"Regularizer(mode={self.mode!r}{metric}, {rules})"


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
