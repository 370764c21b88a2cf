"""Sparsity and norm statistics of parameters, as plain dataclasses (no printing, no plotting)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from regtorch.distributed._detect import has_dtensor
from regtorch.kernels import group as kg
from regtorch.kernels import sum_abs, sum_square
from regtorch.penalties import GroupLasso, Penalty
from regtorch.regularizer._selection import Selection, select_parameters

__all__ = ["ParameterStats", "Stats", "parameter_stats", "sparsity"]


@dataclass(frozen=True)
class ParameterStats:
    """Statistics of one parameter.

    Attributes:
        name: Qualified parameter name.
        shape: The parameter's shape.
        numel: Number of elements.
        zeros: Number of entries exactly equal to 0.
        zero_fraction: ``zeros / numel``.
        l1_norm: ``Σ|w|``.
        l2_norm: ``√Σw²``.
        groups: Number of groups (rows = output neurons/filters, or the penalty's own groups).
        zero_groups: Groups whose entries are all exactly 0 (dead neurons/filters).
        group_spec: How groups were formed (``"rows"`` unless a GroupLasso term says otherwise).
        penalty: This parameter's share of the penalty, or ``None`` without a penalty (or with a
            coupled group penalty, whose groups span parameters: its value is in ``Stats.penalty``).
        finite: Whether every entry is finite.
    """

    name: str
    shape: tuple[int, ...]
    numel: int
    zeros: int
    zero_fraction: float
    l1_norm: float
    l2_norm: float
    groups: int
    zero_groups: int
    group_spec: str
    penalty: float | None
    finite: bool


@dataclass(frozen=True)
class Stats:
    """Statistics of a selection of parameters, with totals.

    Attributes:
        parameters: One :class:`ParameterStats` per parameter, in model order.
        numel: Total number of elements.
        zeros: Total exact zeros.
        zero_fraction: ``zeros / numel``.
        groups: Total groups.
        zero_groups: Total all-zero groups.
        l1_norm: ``Σ|w|`` over all parameters.
        l2_norm: ``√Σw²`` over all parameters.
        penalty: The total penalty, or ``None`` without a penalty.
        nonfinite: Names of parameters holding NaN or inf.
    """

    parameters: list[ParameterStats] = field(default_factory=list)
    numel: int = 0
    zeros: int = 0
    zero_fraction: float = 0.0
    groups: int = 0
    zero_groups: int = 0
    l1_norm: float = 0.0
    l2_norm: float = 0.0
    penalty: float | None = None
    nonfinite: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Return the statistics as a JSON-serializable dict."""
        return asdict(self)

    def format(self) -> str:
        """Return a plain-text table, one line per parameter and a total line."""
        header = (
            f"{'parameter':<28} {'shape':<16} {'zeros':>9} {'zero%':>7} {'0-groups':>11} {'L1':>11} {'L2':>9}"
        )
        lines = [header, "-" * len(header)]
        for p in self.parameters:
            lines.append(
                f"{p.name:<28.28} {'x'.join(map(str, p.shape)):<16} {p.zeros:>9} "
                f"{100 * p.zero_fraction:>6.2f}% {f'{p.zero_groups}/{p.groups}':>11} "
                f"{p.l1_norm:>11.4g} {p.l2_norm:>9.4g}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"{'total':<28} {self.numel:<16} {self.zeros:>9} {100 * self.zero_fraction:>6.2f}% "
            f"{f'{self.zero_groups}/{self.groups}':>11} {self.l1_norm:>11.4g} {self.l2_norm:>9.4g}"
        )
        if self.penalty is not None:
            lines.append(f"penalty: {self.penalty:.6g}")
        return "\n".join(lines)


_ROWS = kg.DimGroups(0)


def _grouping_of(penalty: Penalty | None) -> tuple[kg.Grouping, str]:
    """The per-parameter groups statistics count: a group-lasso term's own (rows otherwise)."""
    if penalty is not None:
        for term in penalty.terms():
            if isinstance(term, GroupLasso) and term.groups != "coupled":
                return term.grouping, str(term.groups) if not isinstance(term.groups, list) else "explicit"
    return _ROWS, "rows"


def _coupled(penalty: Penalty | None) -> bool:
    return penalty is not None and any(
        isinstance(t, GroupLasso) and t.groups == "coupled" for t in penalty.terms()
    )


def _value_of(penalty: Penalty, param: torch.Tensor, factor: float) -> float | None:
    if _coupled(penalty):
        return None  # a coupled penalty has no per-parameter share: its value is in Stats.penalty
    return factor * float(penalty.value([param]))


def _one(name: str, param: torch.Tensor, penalty: Penalty | None, factor: float) -> ParameterStats:
    w = param.detach()
    grouping, spec = _grouping_of(penalty)
    zeros = int((w == 0).sum())
    if w.ndim == 0:
        groups, zero_groups = w.numel(), zeros
    else:
        (sumsq,) = grouping.sumsq([w], "reference")
        groups = sumsq.numel()
        zero_groups = int((sumsq == 0).sum())
    value = None if penalty is None else _value_of(penalty, w, factor)
    return ParameterStats(
        name=name,
        shape=tuple(w.shape),
        numel=w.numel(),
        zeros=zeros,
        zero_fraction=zeros / max(w.numel(), 1),
        l1_norm=float(sum_abs(w)),
        l2_norm=math.sqrt(float(sum_square(w))),
        groups=groups,
        zero_groups=zero_groups,
        group_spec=spec,
        penalty=value,
        finite=bool(torch.isfinite(w).all()),
    )


def _sharded(
    named: Sequence[tuple[str, torch.Tensor, Penalty | None]], factor: float
) -> list[ParameterStats]:
    """:func:`_one` for every parameter when some are sharded (FSDP2 ``DTensor``): global numbers.

    Local counts and sums are summed over the ranks holding shards, group norms over the ranks a
    group spans; three all-reduces in all (penalties, group norms, counts), the same on every rank.
    """
    from regtorch.distributed._layout import Reducer, group_norms_across, local_views
    from regtorch.distributed._sharded import total_value
    from regtorch.distributed._sharded import values as sharded_values

    tensors = [p.detach() for _, p, _ in named]
    locals_, layouts = local_views(tensors)
    found = [_grouping_of(pen) for _, _, pen in named]
    specs = [spec if isinstance(g, (kg.DimGroups, kg.WholeTensor)) else "rows" for g, spec in found]
    groupings = [g if isinstance(g, (kg.DimGroups, kg.WholeTensor)) else _ROWS for g, _ in found]
    dims = [g.reduce_dims(w.ndim) for g, w in zip(groupings, locals_, strict=True)]
    with_penalty = [i for i, (_, _, pen) in enumerate(named) if pen is not None]
    penalties = [pen for _, _, pen in named if pen is not None]
    totals, _ = sharded_values(penalties, [tensors[i] for i in with_penalty])
    values = dict(zip(with_penalty, totals, strict=True))
    norms = group_norms_across(locals_, layouts, dims)
    reducer = Reducer()
    handles = []
    for w, layout, n, d in zip(locals_, layouts, norms, dims, strict=True):
        counts = torch.stack([(w == 0).sum(), (~torch.isfinite(w)).sum(), (n == 0).sum()]).to(torch.float64)
        sums = torch.stack([sum_abs(w), sum_square(w)]).to(counts.device)
        if layout is None:
            handles.append((reducer.add(counts, ()), reducer.add(sums, ())))
            continue
        # zeros, non-finite entries and sums over every shard; zero groups over the ranks that split
        # the groups between them (a group spanning ranks has the same norm on each of them)
        every, along = layout.groups(), layout.groups_along(d)
        local = torch.cat([counts[:2], sums])
        handles.append(
            (reducer.add(local, every, layout.device), reducer.add(counts[2:], along, layout.device))
        )
    reduced = reducer.run()
    per = []
    rows = zip(named, tensors, dims, handles, strict=True)
    for i, ((name, _, pen), w, d, (first, second)) in enumerate(rows):
        zeros, nonfinite = int(reduced[first][0]), int(reduced[first][1])
        l1, l2_squared = float(reduced[first][-2]), float(reduced[first][-1])
        value = None if pen is None else factor * float(total_value([values[i]], [w]))
        per.append(
            ParameterStats(
                name=name,
                shape=tuple(w.shape),
                numel=w.numel(),
                zeros=zeros,
                zero_fraction=zeros / max(w.numel(), 1),
                l1_norm=l1,
                l2_norm=math.sqrt(l2_squared),
                groups=math.prod(n for k, n in enumerate(w.shape) if k not in d),
                zero_groups=int(reduced[second].sum()),
                group_spec=specs[i],
                penalty=value,
                finite=nonfinite == 0,
            )
        )
    return per


def _total_penalty(
    named: Sequence[tuple[str, torch.Tensor, Penalty | None]], per: list[ParameterStats], factor: float
) -> float:
    """The sum of the parameters' shares; a coupled penalty's value over its whole list."""
    total = sum(p.penalty for p in per if p.penalty is not None)
    coupled: dict[int, tuple[Penalty, list[torch.Tensor]]] = {}
    for _, param, pen in named:
        if pen is not None and _coupled(pen):
            coupled.setdefault(id(pen), (pen, []))[1].append(param)
    for pen, params in coupled.values():
        total += factor * float(pen.value([p.detach() for p in params]))
    return total


def parameter_stats(named: Sequence[tuple[str, torch.Tensor, Penalty | None]], factor: float = 1.0) -> Stats:
    """Compute :class:`Stats` for ``(name, parameter, penalty or None)`` triples.

    ``factor`` multiplies every penalty (a regularizer's schedule). Parameters holding NaN or inf
    are listed in ``Stats.nonfinite`` and named in a ``RuntimeWarning``. With sharded parameters
    (FSDP2) the statistics are global and the same on every rank (a collective: call it on every
    rank).
    """
    with torch.no_grad():
        if has_dtensor([p for _, p, _ in named]):
            per = _sharded(named, factor)
        else:
            per = [_one(name, p, pen, factor) for name, p, pen in named]
    numel = sum(p.numel for p in per)
    zeros = sum(p.zeros for p in per)
    has_penalty = any(pen is not None for _, _, pen in named)
    nonfinite = [p.name for p in per if not p.finite]
    if nonfinite:
        warnings.warn(
            "These parameters hold NaN or inf: "
            + ", ".join(nonfinite)
            + ". Training has diverged; lower the learning rate or the penalty strength.",
            RuntimeWarning,
            stacklevel=3,
        )
    return Stats(
        parameters=per,
        numel=numel,
        zeros=zeros,
        zero_fraction=zeros / max(numel, 1),
        groups=sum(p.groups for p in per),
        zero_groups=sum(p.zero_groups for p in per),
        l1_norm=sum(p.l1_norm for p in per),
        l2_norm=math.sqrt(sum(p.l2_norm**2 for p in per)),
        penalty=_total_penalty(named, per, factor) if has_penalty else None,
        nonfinite=nonfinite,
    )


def sparsity(model: nn.Module, params: Selection = "weights", *, exclude: Selection | None = None) -> Stats:
    """Return sparsity and norm statistics of a model's parameters, no regularizer needed.

    Args:
        model: The model.
        params: Which parameters (default ``"weights"``: ndim >= 2 outside norm layers); see
            :func:`regtorch.select_parameters`.
        exclude: Parameters to leave out.

    Returns:
        :class:`Stats` with per-parameter exact-zero counts, zero rows (dead output neurons or
        filters) and norms, and totals.

    Examples:
        >>> model = nn.Linear(3, 2)
        >>> with torch.no_grad():
        ...     model.weight.zero_()
        >>> sparsity(model).zero_fraction
        1.0
    """
    chosen = select_parameters(model, params, exclude=exclude, owner="sparsity")
    return parameter_stats([(name, p, None) for name, p in chosen])
