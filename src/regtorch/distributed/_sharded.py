"""The FSDP2 adapter: penalties on ``DTensor`` parameters, through their local shards.

:func:`regtorch.penalties._backends.backend_for` sends every operation on a list holding a
``DTensor`` here (:data:`SHARDED`). Each penalty term is handled by its structure, never by the
penalty knowing about shards:

* element-wise terms (``penalty.elementwise``): value, gradient and prox on the local shard; values
  summed over every mesh dimension that shards the tensor;
* group-lasso terms whose groups lie within a tensor (rows, columns, filters, channels, an int
  dimension, the whole tensor; ``Lp(2, root=True)``): the groups' squared norms summed over the ranks
  each group spans, then value, gradient and prox from those global norms on the local shard;
* anything else: the whole tensor is gathered (``full_tensor()``), which is correct but costs an
  all-gather.

Partial sums of one call are batched: one all-reduce per process group (one in all for FSDP2's 1-D
mesh), and a loss-mode backward reuses its forward's norms (no communication). Group lasso with
explicit index groups or coupled groups spanning parameters is refused on sharded parameters.

DDP needs none of this: its parameters are plain tensors, identical on every rank, and its
gradients are averaged during ``backward()``, before any optimizer hook runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.autograd.function import once_differentiable

from regtorch.distributed._layout import (
    Reducer,
    full_group_norms_along,
    gather,
    group_norms_across,
    local_sumsq,
    local_views,
)
from regtorch.kernels import choose, result_dtype
from regtorch.kernels import group as kg
from regtorch.penalties._prox_plan import ProxPlan

if TYPE_CHECKING:
    from regtorch.penalties import GroupLasso, Penalty

__all__ = ["SHARDED", "ShardedBackend", "full_group_norms"]


def _group_term(term: Penalty) -> GroupLasso | None:
    """The group lasso a term is, if its groups lie within each tensor (else ``None``).

    Raises:
        ValueError: For group lasso with explicit index groups or coupled groups.
    """
    plan = term.prox_plan()
    if plan is None or plan.group is None or plan.l1 or plan.l2:
        return None
    group = plan.group
    if not isinstance(group.grouping, (kg.DimGroups, kg.WholeTensor)):
        raise ValueError(
            f"{term!r} groups indices across the shards of FSDP2 parameters, which regtorch does not "
            "support: use groups='rows', 'columns', 'filters', 'channels', an int dimension or "
            "'tensor' with fully_shard, or train without FSDP2."
        )
    return group


def _dims(group: GroupLasso, ndim: int) -> tuple[int, ...]:
    return group.grouping.reduce_dims(ndim)  # type: ignore[attr-defined]


def _weights(group: GroupLasso, tensor: torch.Tensor) -> list[torch.Tensor | None]:
    """The group weights of a parameter, from its global shape."""
    return group.group_weights([torch.empty(tensor.shape, device="meta")])


def _pairs(rules: Sequence[tuple[Penalty, list[torch.Tensor]]]) -> tuple[list[Any], list[torch.Tensor]]:
    penalties: list[Any] = []
    tensors: list[torch.Tensor] = []
    for penalty, ts in rules:
        penalties.extend([penalty] * len(ts))
        tensors.extend(ts)
    return penalties, tensors


def values(
    penalties: Sequence[Penalty], tensors: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], dict[tuple[int, int], torch.Tensor]]:
    """Return the global value of ``penalties[i]`` on ``tensors[i]`` (float64) and the group norms used.

    Element-wise terms contribute their local value, summed over every mesh dimension that shards
    the tensor. Group terms contribute the value of their groups' global norms: summed over the
    mesh dimensions that shard the group dimension (groups split between ranks) and computed
    identically on every rank when the groups span ranks. For a 1-D mesh this is one all-reduce in
    all. The dict maps ``(tensor index, term index)`` to the norms (float64, dims kept), for a
    backward pass to reuse.
    """
    with torch.no_grad():
        locals_, layouts = local_views(tensors)
        totals = [torch.zeros((), dtype=torch.float64, device=w.device) for w in locals_]
        first, second = Reducer(), Reducer()
        queued: list[tuple[int, Reducer, int]] = []
        spanning: list[tuple[int, int, Any, int, tuple[Any, ...]]] = []
        norms: dict[tuple[int, int], torch.Tensor] = {}
        for i, (penalty, w, layout) in enumerate(zip(penalties, locals_, layouts, strict=True)):
            for k, term in enumerate(penalty.terms()):
                if layout is None:
                    totals[i] += term._value([w], "reference").to(w.device)
                    continue
                if term.elementwise:
                    queued.append(
                        (i, first, first.add(term._value([w], "reference"), layout.groups(), layout.device))
                    )
                    continue
                group = _group_term(term)
                if group is None:  # no declared structure: gather
                    totals[i] += term._value([gather(tensors[i])], "reference").to(w.device)
                    continue
                dims = _dims(group, w.ndim)
                sumsq = local_sumsq(w, dims)
                spans, along = layout.groups(dims), layout.groups_along(dims)
                if spans:
                    spanning.append((i, k, group, first.add(sumsq, spans, layout.device), along))
                else:
                    norms[i, k] = sumsq.sqrt()
                    value = group.value_from_norms([norms[i, k]], _weights(group, tensors[i]))
                    queued.append((i, first, first.add(value, along, layout.device)))
        reduced = first.run()
        for i, k, group, handle, along in spanning:
            norms[i, k] = reduced[handle].sqrt()
            value = group.value_from_norms([norms[i, k]], _weights(group, tensors[i]))
            if along:  # groups both span and split ranks (a 2-D sharding): a second round
                queued.append((i, second, second.add(value, along, layouts[i].device)))  # type: ignore[union-attr]
            else:
                totals[i] += value.to(totals[i].device)
        reduced_second = second.run()
        for i, reducer, handle in queued:
            result = reduced if reducer is first else reduced_second
            totals[i] += result[handle].to(totals[i].device)
    return totals, norms


def total_value(totals: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The sum of per-tensor values in the penalties' result dtype, on the first shard's device."""
    device = totals[0].device if totals else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float64, device=device)
    for value in totals:
        total = total + value.to(device)
    return total.to(result_dtype(tensors))


def add_grads_(
    penalties: Sequence[Penalty],
    tensors: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    alpha: float,
    foreach: bool | None,
    fused: bool | None = None,
    norms: dict[tuple[int, int], torch.Tensor] | None = None,
) -> None:
    """Add ``alpha·∂penalties[i]/∂tensors[i]`` to ``grads[i]`` (``DTensor`` or plain) in place.

    Element-wise terms act on the local shards (multi-tensor kernels per penalty when chosen);
    group terms use the global norms of their groups (``norms`` from :func:`values` when given,
    else one all-reduce for the groups that span ranks).
    """
    with torch.no_grad():
        locals_, layouts = local_views(tensors)
        local_grads, _ = local_views(grads)
        by_penalty: dict[int, tuple[Any, list[int]]] = {}
        for i, penalty in enumerate(penalties):
            by_penalty.setdefault(id(penalty), (penalty, []))[1].append(i)
        jobs: list[tuple[int, Any, tuple[int, int]]] = []
        for penalty, indices in by_penalty.values():
            for k, term in enumerate(penalty.terms()):
                if term.elementwise:
                    ws, gs = [locals_[i] for i in indices], [local_grads[i] for i in indices]
                    term._add_grad(ws, gs, alpha, choose(ws, foreach, fused))
                    continue
                for i in indices:
                    group = _group_term(term)
                    if group is not None:
                        jobs.append((i, group, (i, k)))
                    elif layouts[i] is None:
                        term._add_grad([locals_[i]], [local_grads[i]], alpha, "reference")
                    else:  # no declared structure: gather
                        (full_grad,) = term._grad([gather(tensors[i])], "reference")
                        local_grads[i].add_(layouts[i].local_part(full_grad), alpha=alpha)  # type: ignore[union-attr]
        known = norms or {}
        missing = [(i, group, key) for i, group, key in jobs if key not in known]
        found = group_norms_across(
            [locals_[i] for i, _, _ in missing],
            [layouts[i] for i, _, _ in missing],
            [_dims(group, locals_[i].ndim) for i, group, _ in missing],
        )
        known = {**known, **{key: n for (_, _, key), n in zip(missing, found, strict=True)}}
        for i, group, key in jobs:
            w = locals_[i]
            (g,) = group.grad_from_norms([w], [known[key].to(w.dtype)], _weights(group, tensors[i]))
            local_grads[i].add_(g, alpha=alpha)


def gradients(
    penalties: Sequence[Penalty],
    tensors: Sequence[torch.Tensor],
    foreach: bool | None,
    fused: bool | None = None,
    *,
    scale: float | torch.Tensor = 1.0,
    norms: dict[tuple[int, int], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Return ``scale·∂penaltiesᵢ/∂tensorsᵢ``, as a ``DTensor`` with the layout of a ``DTensor`` input.

    A tensor ``scale`` (a backward's incoming gradient on an accelerator) multiplies on its device,
    without a host sync.
    """
    locals_, layouts = local_views(tensors)
    out = [torch.zeros_like(w) for w in locals_]
    alpha = 1.0 if isinstance(scale, torch.Tensor) else scale
    add_grads_(penalties, tensors, out, alpha, foreach, fused, norms)
    if isinstance(scale, torch.Tensor):
        for g in out:
            g.mul_(scale.to(device=g.device, dtype=g.dtype))
    return [g if layout is None else layout.wrap(g) for g, layout in zip(out, layouts, strict=True)]


def prox_(
    penalty: Penalty, tensors: Sequence[torch.Tensor], step: float, foreach: bool | None, fused: bool | None
) -> None:
    """Apply ``penalty``'s prox in place to sharded ``tensors``.

    A closed form acts on the local shards; its group step uses the global group norms (one
    all-reduce when groups span ranks). Other element-wise penalties act shard by shard; the rest
    gather each tensor, apply the prox and keep their shard.
    """
    locals_, layouts = local_views(tensors)
    plan = penalty.prox_plan()
    with torch.no_grad():
        if plan is not None:
            norms = weights = None
            if plan.group is not None and plan.group.strength and step:
                group = _group_term(plan.group)
                assert group is not None
                # the group step acts on the soft-thresholded values: threshold first, then measure
                impl = choose(locals_, foreach, fused)
                ProxPlan(l1=plan.l1).apply(locals_, step, impl)
                dims = [_dims(group, w.ndim) for w in locals_]
                norms = [
                    n.to(w.dtype)
                    for n, w in zip(group_norms_across(locals_, layouts, dims), locals_, strict=True)
                ]
                weights = [_weights(group, t)[0] for t in tensors]
                ProxPlan(l2=plan.l2, group=plan.group).apply(
                    locals_, step, impl, group_norms=norms, group_weights=weights
                )
                return
            plan.apply(locals_, step, choose(locals_, foreach, fused))
            return
        for i, (w, layout) in enumerate(zip(locals_, layouts, strict=True)):
            if layout is None or penalty.elementwise:
                penalty._prox([w], step, "reference")
            else:
                full = gather(tensors[i]).clone()
                penalty._prox([full], step, "reference")
                w.copy_(layout.local_part(full))


class _ShardedValue(torch.autograd.Function):
    """``Σᵢ penaltiesᵢ(tensorsᵢ)`` over sharded tensors; backward returns ``DTensor`` gradients."""

    @staticmethod
    def forward(
        ctx: Any, penalties: Sequence[Any], foreach: bool | None, fused: bool | None, *tensors: torch.Tensor
    ):
        totals, norms = values(penalties, tensors)
        ctx.penalties, ctx.foreach, ctx.fused, ctx.norms = penalties, foreach, fused, norms
        ctx.save_for_backward(*tensors)
        return total_value(totals, tensors)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor):
        tensors = ctx.saved_tensors
        scale = float(grad_output) if grad_output.device.type == "cpu" else grad_output
        out = gradients(ctx.penalties, tensors, ctx.foreach, ctx.fused, scale=scale, norms=ctx.norms)
        return (None, None, None, *out)


class ShardedBackend:
    """The backend for lists holding FSDP2 ``DTensor`` parameters (see the module docstring)."""

    def value(self, rules, foreach, fused):
        penalties, tensors = _pairs(rules)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return _ShardedValue.apply(penalties, foreach, fused, *tensors)
        totals, _ = values(penalties, tensors)
        return total_value(totals, tensors)

    def grad(self, penalty, tensors, scale, foreach, fused):
        return gradients([penalty] * len(tensors), tensors, foreach, fused, scale=scale)

    def add_grad_(self, rules, alpha, foreach, fused):
        penalties: list[Any] = []
        tensors: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        for penalty, ts, gs in rules:
            penalties.extend([penalty] * len(ts))
            tensors.extend(t.detach() for t in ts)
            grads.extend(gs)
        add_grads_(penalties, tensors, grads, alpha, foreach, fused)

    def prox_(self, penalty, tensors, step, foreach, fused):
        prox_(penalty, [t.detach() for t in tensors], step, foreach, fused)


SHARDED = ShardedBackend()


def full_group_norms(group: GroupLasso, tensor: torch.Tensor) -> torch.Tensor:
    """Every group's norm of the ``DTensor`` ``tensor``, the same on every rank (a collective)."""
    checked = _group_term(group)
    assert checked is not None
    return full_group_norms_along(tensor, _dims(checked, tensor.ndim)).to(tensor.dtype)
