"""A regularizer's rules: which penalty acts on which parameters, resolved once from selections."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from regtorch._validation import Interval, check_real, hyperparameters
from regtorch.kernels import group as kg
from regtorch.penalties import GroupLasso, Penalty, Sum
from regtorch.regularizer._metric_prox import check_metric_penalty
from regtorch.regularizer._selection import Selection, describe_selection, select_parameters, unwrap_model

__all__ = ["Rule", "check_unchanged", "load_state", "load_strengths", "resolve_rules"]


@dataclass
class Rule:
    """One penalty and the parameters it acts on.

    Attributes:
        selection: What selected the parameters (as given).
        penalty: The penalty.
        names: Qualified names of the parameters, in model order.
        params: The parameters.
    """

    selection: Any
    penalty: Penalty
    names: list[str]
    params: list[nn.Parameter]

    @property
    def per_tensor(self) -> bool:
        """Whether each parameter's penalty is its own (else the penalty couples the whole list)."""
        return all(not _coupled(t) for t in self.penalty.terms())

    def describe(self) -> str:
        """``selection: penalty (N tensors)``."""
        what = "'weights'" if self.selection is None else describe_selection(self.selection)
        if not self.per_tensor:
            what = "coupled channels" if self.selection is None else f"coupled channels of {what}"
        return f"{what}: {self.penalty!r} ({len(self.params)} tensors)"


def _coupled(term: Penalty) -> bool:
    return isinstance(term, GroupLasso) and term.groups == "coupled"


def _is_rule_list(penalty: Any) -> bool:
    return isinstance(penalty, (list, tuple)) and all(
        isinstance(r, (list, tuple)) and len(r) == 2 for r in penalty
    )


def _bind_coupled(
    model: nn.Module,
    penalty: Penalty,
    example_input: Any,
    selection: Selection | None,
    exclude: Selection | None,
) -> tuple[Penalty, list[tuple[str, nn.Parameter]]]:
    """Trace ``model``, keep the coupled groups' slices of selected parameters, bind the group terms."""
    if example_input is None:
        raise ValueError(
            "GroupLasso(groups='coupled') finds the coupled channels by tracing the model once: pass "
            "Regularizer(model, penalty, example_input=x) with one batch of inputs."
        )
    from regtorch.sparse._dependency import coupled_groups

    model = unwrap_model(model)
    found = coupled_groups(model, example_input)
    named = dict(model.named_parameters())
    member_names = list(dict.fromkeys(m.name for m in found.members))
    allowed = None
    if selection is not None or exclude is not None:
        chosen = select_parameters(model, "all" if selection is None else selection, exclude=exclude)
        allowed = {n for n, _ in chosen}
    names = [n for n in member_names if allowed is None or n in allowed]
    if not names:
        raise ValueError(
            "GroupLasso(groups='coupled') found no coupled channels among the selected parameters "
            f"(the model's coupled parameters: {', '.join(member_names[:6]) or 'none'})."
        )
    index = {n: i for i, n in enumerate(names)}
    members = tuple(
        kg.CoupledMember(index[m.name], m.dim, tuple(int(g) for g in m.group_ids.tolist()))
        for m in found.members
        if m.name in index
    )
    grouping = kg.CoupledGroups(
        members, found.num_groups, tuple(tuple(named[n].shape) for n in names), tuple(found.labels)
    )
    terms = [t.bind(grouping) if _coupled(t) else t for t in penalty.terms()]  # type: ignore[attr-defined]
    bound = terms[0] if len(terms) == 1 else Sum(terms)
    return bound, [(n, named[n]) for n in names]


def resolve_rules(
    model: nn.Module,
    penalty: Penalty | Sequence[tuple[Selection, Penalty]],
    params: Selection | None,
    exclude: Selection | None,
    *,
    mode: str,
    prox_metric: str,
    example_input: Any = None,
) -> list[Rule]:
    """Resolve a penalty (or per-layer rules) into rules over explicit parameter lists.

    Raises:
        TypeError: For something that is not a penalty or a list of ``(selection, penalty)`` pairs.
        ValueError: For an empty selection, a parameter claimed by two rules, a penalty that
            cannot act on a parameter or cannot run in ``mode``.
    """
    if isinstance(penalty, Penalty):
        rules_in = [(params, penalty)]
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
    rules: list[Rule] = []
    owner_of: dict[int, int] = {}
    for index, (selection, rule_penalty) in enumerate(rules_in):
        if not isinstance(rule_penalty, Penalty):
            raise TypeError(
                f"Rule {index} of the 'penalty' argument of Regularizer must pair a selection "
                f"with a Penalty; got {rule_penalty!r} of type {type(rule_penalty).__name__}."
            )
        if mode == "prox" and not rule_penalty.supports_prox:
            raise ValueError(rule_penalty.no_prox_message())
        if prox_metric == "adam":
            check_metric_penalty(rule_penalty)
        if any(_coupled(t) for t in rule_penalty.terms()):
            rule_penalty, chosen = _bind_coupled(model, rule_penalty, example_input, selection, exclude)
        else:
            chosen = select_parameters(model, "weights" if selection is None else selection, exclude=exclude)
        for name, param in chosen:
            if id(param) in owner_of:
                first = owner_of[id(param)]
                raise ValueError(
                    f"Parameter {name!r} is claimed by two rules of Regularizer: rule {first} "
                    f"({describe_selection(rules_in[first][0])}) and rule {index} "
                    f"({describe_selection(selection)}). Each parameter may have one penalty; "
                    "narrow a selection or use exclude=."
                )
            owner_of[id(param)] = index
            if param.is_meta:
                raise ValueError(
                    f"Parameter {name!r} is on the 'meta' device (no data yet); build the Regularizer "
                    "after the model is materialised (e.g. after to_empty() and initialisation)."
                )
            rule_penalty.check_tensor(name, param)
        rules.append(Rule(selection, rule_penalty, [n for n, _ in chosen], [p for _, p in chosen]))
    return rules


def load_strengths(current: Penalty, config: dict[str, Any], where: str, *, dry_run: bool = False) -> None:
    """Set the strengths in ``config`` on ``current``, which must be the same kind of penalty.

    With ``dry_run`` only check.

    Raises:
        ValueError: If ``config`` describes another penalty (type, terms or a setting that is not a
            strength).
    """
    name = config.get("name") if isinstance(config, dict) else None
    if name != current.name:
        raise ValueError(
            f"The 'state' argument of Regularizer.load_state_dict holds a {name!r} penalty for {where}; "
            f"this regularizer has {current!r} there. Load a state saved by a regularizer built the same way."
        )
    if isinstance(current, Sum):
        terms = config.get("terms", [])
        if len(terms) != len(current.terms()):
            raise ValueError(
                f"The 'state' argument of Regularizer.load_state_dict holds a sum of {len(terms)} penalties "
                f"for {where}; this regularizer has {current!r}."
            )
        for term, term_config in zip(current.terms(), terms, strict=True):
            load_strengths(term, term_config, where, dry_run=dry_run)
        return
    declared = hyperparameters(type(current))
    strengths = {k: v for k, v in config.items() if k in declared and declared[k].scales}
    for key, value in config.items():
        if key != "name" and key not in strengths and current.get_config().get(key) != value:
            raise ValueError(
                f"The 'state' argument of Regularizer.load_state_dict has {key}={value!r} for {where}; "
                f"this regularizer has {current!r}. Only strengths are loaded."
            )
    for key, value in strengths.items():
        declared[key].constraint.check(type(current).__name__, key, value)
        if not dry_run:
            setattr(current, key, value)


def check_unchanged(model: nn.Module, rules: list[Rule]) -> None:
    """Raise if ``model`` no longer holds the rules' parameters (``fully_shard``, ``to_empty()``...)."""
    from regtorch.distributed._detect import fully_sharded, has_dtensor

    params = [p for r in rules for p in r.params]
    if not has_dtensor(params) and fully_sharded(model):
        raise ValueError(
            "The model was sharded by FSDP2 (fully_shard) after this Regularizer was built, so "
            "it holds the parameters fully_shard replaced. Build the Regularizer (and the "
            "optimizer) after fully_shard."
        )
    current = {id(p) for p in unwrap_model(model).parameters()}
    stale = [n for r in rules for n, p in zip(r.names, r.params, strict=True) if id(p) not in current]
    if stale:
        raise ValueError(
            f"The model no longer holds {len(stale)} of the regularized parameters ({', '.join(stale[:3])}"
            f"{' …' if len(stale) > 3 else ''}): they were replaced after the Regularizer was built "
            "(e.g. by to_empty(), load_state_dict(assign=True) or a shrink). Build the Regularizer again."
        )


def load_state(rules: list[Rule], state: Any, mode: str, prox_metric: str) -> tuple[float, int]:
    """Check a :meth:`Regularizer.state_dict` against the rules, load its strengths (all or nothing)
    and return its ``(scale, num_steps)``.

    Raises:
        ValueError: If the state belongs to a regularizer of another mode, prox metric, rule count
            or penalty kind (only strengths may differ); nothing is changed then.
    """
    if not isinstance(state, dict) or not isinstance(state.get("penalties"), list):
        raise ValueError(
            "The 'state' argument of Regularizer.load_state_dict must be a dict from "
            f"Regularizer.state_dict(); got {type(state).__name__}."
        )
    if state.get("mode") != mode or len(state["penalties"]) != len(rules):
        raise ValueError(
            "The 'state' argument of Regularizer.load_state_dict comes from a regularizer with "
            f"mode={state.get('mode')!r} and {len(state['penalties'])} rule(s); this one has "
            f"mode={mode!r} and {len(rules)} rule(s)."
        )
    if state.get("prox_metric", "euclidean") != prox_metric:
        raise ValueError(
            "The 'state' argument of Regularizer.load_state_dict comes from a regularizer with "
            f"prox_metric={state.get('prox_metric', 'euclidean')!r}; this one has "
            f"prox_metric={prox_metric!r}."
        )
    scale = check_real("Regularizer.load_state_dict", "scale", state.get("scale", 1.0), Interval(low=0.0))
    steps = state.get("num_steps", 0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(
            "The 'num_steps' entry of Regularizer.load_state_dict's state must be an int >= 0; "
            f"got {steps!r}."
        )
    for dry_run in (True, False):  # check every rule before changing any
        for index, (rule, config) in enumerate(zip(rules, state["penalties"], strict=True)):
            load_strengths(rule.penalty, config, f"rule {index}", dry_run=dry_run)
    return scale, steps
