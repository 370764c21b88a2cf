"""Penalties on sharded parameters (FSDP2 ``DTensor``): local work on shards, then batched all-reduces.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) each parameter is a ``DTensor``: every rank holds
a shard of it (``to_local()``), laid out by a device mesh and one placement per mesh dimension
(``Shard(d)`` splits tensor dimension ``d`` between that mesh dimension's ranks, ``Replicate()``
copies it). regtorch computes on the local shards and sums the partial results over exactly the mesh
dimensions that split what is being summed:

* a sum over all entries (the value of L1, L2, elastic net; statistics) over every mesh dimension
  that shards the tensor;
* a group's squared norm ``‖w_g‖²`` over the mesh dimensions that shard the dimensions the norm
  reduces (the group spans those ranks); a group along a sharded dimension is whole on one rank.

Partial sums of one call are batched: one all-reduce per process group (one in all for FSDP2's 1-D
mesh), never a gather of parameters. Element-wise gradients and proxes need no communication.
Penalties that describe neither structure (:attr:`Penalty.separable`, :meth:`Penalty.group_dims`)
fall back to gathering the tensor (``full_tensor()``), which is correct but costs an all-gather.

Nothing here imports ``torch.distributed``: a ``DTensor`` can only exist once
``torch.distributed.tensor`` has been imported, so :func:`has_dtensor` looks it up in
``sys.modules`` and plain tensors cost one dictionary lookup per call.

Collectives use the process group's own timeout (``init_process_group(timeout=...)``), so a rank
that died makes the others raise instead of waiting forever. Every rank must make the same calls
in the same order, as for any collective.

DDP needs none of this: its parameters are plain tensors, identical on every rank, and its
gradients are averaged during ``backward()``, before any optimizer hook runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from regtorch._fused import use_fused
from regtorch._proximal import GroupSpec, apply_prox_plan, group_reduce_dims
from regtorch._reductions import result_dtype

__all__ = [
    "Reducer",
    "ShardLayout",
    "add_grads_",
    "dtensor_type",
    "full_group_norms",
    "fully_sharded",
    "gradients",
    "group_norms_across",
    "has_dtensor",
    "is_dtensor",
    "local_views",
    "prox_",
    "total_value",
    "value",
    "values",
]


# ----------------------------------------------------------------------------- detection
def dtensor_type() -> type | None:
    """Return the ``DTensor`` class, or ``None`` if no ``DTensor`` can exist in this process yet."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else getattr(module, "DTensor", None)


def is_dtensor(tensor: object) -> bool:
    """Return whether ``tensor`` is a ``DTensor`` (without importing ``torch.distributed``)."""
    cls = dtensor_type()
    return cls is not None and isinstance(tensor, cls)


def has_dtensor(tensors: Sequence[object]) -> bool:
    """Return whether any of ``tensors`` is a ``DTensor``: the one check plain-tensor code paths pay."""
    cls = dtensor_type()
    return cls is not None and any(issubclass(kind, cls) for kind in set(map(type, tensors)))


def fully_sharded(module: Any) -> bool:
    """Return whether ``module`` or a submodule went through FSDP2's ``fully_shard``."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    cls = None if fsdp is None else getattr(fsdp, "FSDPModule", None)
    return cls is not None and any(isinstance(m, cls) for m in module.modules())


# ----------------------------------------------------------------------------- layouts
@dataclass(frozen=True, eq=False)
class ShardLayout:
    """How a ``DTensor`` is laid out over its mesh.

    Attributes:
        mesh: The ``DeviceMesh``.
        placements: One placement per mesh dimension.
        shape: The global shape.
        stride: The global stride.
        shards: ``(mesh dim, tensor dim)`` for each mesh dimension that splits the tensor.
    """

    mesh: Any
    placements: tuple[Any, ...]
    shape: torch.Size
    stride: tuple[int, ...]
    shards: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, tensor: torch.Tensor) -> ShardLayout:
        """Return the layout of the ``DTensor`` ``tensor``.

        Raises:
            ValueError: For a ``Partial`` placement (a parameter is never a pending sum) or an
                unknown one.
        """
        shards = []
        for mesh_dim, placement in enumerate(tensor.placements):  # type: ignore[attr-defined]
            if placement.is_replicate():
                continue
            dim = getattr(placement, "dim", None)  # Shard and FSDP2+TP's _StridedShard
            if placement.is_partial() or dim is None:
                raise ValueError(
                    "regtorch regularizes DTensor parameters sharded (Shard) or replicated "
                    f"(Replicate) over their mesh; got a parameter of shape {tuple(tensor.shape)} with "
                    f"placements {tuple(tensor.placements)}."  # type: ignore[attr-defined]
                )
            shards.append((mesh_dim, dim % max(tensor.ndim, 1)))
        return cls(
            mesh=tensor.device_mesh,  # type: ignore[attr-defined]
            placements=tuple(tensor.placements),  # type: ignore[attr-defined]
            shape=tensor.shape,
            stride=tuple(tensor.stride()),
            shards=tuple(shards),
        )

    def groups(self, dims: Sequence[int] | None = None) -> tuple[Any, ...]:
        """Return the process groups of the mesh dimensions that split any of ``dims`` (all if None)."""
        return tuple(
            self.mesh.get_group(mesh_dim) for mesh_dim, dim in self.shards if dims is None or dim in dims
        )

    def groups_along(self, dims: Sequence[int]) -> tuple[Any, ...]:
        """Return the process groups of the mesh dimensions that split a dimension not in ``dims``."""
        return tuple(self.mesh.get_group(mesh_dim) for mesh_dim, dim in self.shards if dim not in dims)

    @property
    def device(self) -> torch.device:
        """The device collectives on this mesh run on (``cuda:<current>`` for NCCL meshes)."""
        kind = self.mesh.device_type
        module = getattr(torch, kind, None)
        if kind == "cpu" or not hasattr(module, "current_device"):
            return torch.device(kind)
        return torch.device(kind, module.current_device())  # type: ignore[union-attr]

    def wrap(self, local: torch.Tensor) -> torch.Tensor:
        """Return ``local`` as this layout's shard of a ``DTensor`` (no communication)."""
        cls = dtensor_type()
        return cls.from_local(  # type: ignore[union-attr]
            local, self.mesh, self.placements, run_check=False, shape=self.shape, stride=self.stride
        )

    def local_part(self, full: torch.Tensor) -> torch.Tensor:
        """Return this rank's shard of the global tensor ``full`` (no communication)."""
        from torch.distributed.tensor import Replicate

        replicated = dtensor_type().from_local(  # type: ignore[union-attr]
            full, self.mesh, [Replicate()] * self.mesh.ndim, run_check=False
        )
        return replicated.redistribute(self.mesh, self.placements).to_local()


def local_views(tensors: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[ShardLayout | None]]:
    """Return the detached local shard of each tensor (itself for a plain tensor) and its layout.

    In-place changes to a view change the parameter (the view shares its storage).
    """
    cls = dtensor_type()
    views: list[torch.Tensor] = []
    layouts: list[ShardLayout | None] = []
    with torch.no_grad():
        for t in tensors:
            if cls is not None and isinstance(t, cls):
                views.append(t.to_local().detach())
                layouts.append(ShardLayout.of(t))
            else:
                views.append(t.detach())
                layouts.append(None)
    return views, layouts


def _full(tensor: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return tensor.full_tensor() if is_dtensor(tensor) else tensor.detach()  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- all-reduce
class Reducer:
    """Sums float64 partial results over process groups, batched: one all-reduce per group.

    Each :meth:`add` names the groups its value must be summed over (an empty tuple: none);
    :meth:`run` concatenates, for each group in order of first use, every value summed over it,
    all-reduces the buffer and returns the values in order. Summing over several groups one after
    the other sums over their product (the ranks of a multi-dimensional mesh).
    """

    def __init__(self) -> None:
        self._values: list[torch.Tensor] = []
        self._groups: list[tuple[Any, ...]] = []
        self._devices: list[torch.device] = []

    def add(self, value: torch.Tensor, groups: tuple[Any, ...], device: torch.device | None = None) -> int:
        """Queue ``value`` to be summed over ``groups`` (collectives on ``device``); return its index."""
        self._values.append(value.detach().to(torch.float64))
        self._groups.append(groups)
        self._devices.append(device or value.device)
        return len(self._values) - 1

    def run(self) -> list[torch.Tensor]:
        """All-reduce the queued values and return them, each on its own device."""
        values = list(self._values)
        order: list[Any] = []
        for groups in self._groups:
            order.extend(g for g in groups if not any(g is seen for seen in order))
        if order:
            import torch.distributed as dist

            for group in order:
                chosen = [i for i, groups in enumerate(self._groups) if any(g is group for g in groups)]
                device = self._devices[chosen[0]]
                flat = torch.cat([values[i].reshape(-1).to(device) for i in chosen])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
                for i, piece in zip(chosen, flat.split([values[i].numel() for i in chosen]), strict=True):
                    values[i] = piece.reshape(values[i].shape).to(self._values[i].device)
        self._values, self._groups, self._devices = [], [], []
        return values


# ----------------------------------------------------------------------------- group norms
def _local_sumsq(local: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Return the float64 sum of squares of each group's local entries, with ``dims`` kept (size 1)."""
    if not dims:
        return local.to(torch.float64).square()
    return torch.linalg.vector_norm(local, 2, dim=dims, keepdim=True, dtype=torch.float64).square()


def group_norms_across(
    locals_: Sequence[torch.Tensor], layouts: Sequence[ShardLayout | None], dims: Sequence[tuple[int, ...]]
) -> list[torch.Tensor]:
    """Return the global norm (float64) of each group of each local shard, dims kept (size 1).

    A group's squared norm is summed over the ranks it spans: one all-reduce of the per-group
    squared norms for all tensors together (none when no group spans ranks).
    """
    reducer = Reducer()
    sums, handles = [], []
    for local, layout, reduced in zip(locals_, layouts, dims, strict=True):
        sumsq = _local_sumsq(local, reduced)
        spans = () if layout is None else layout.groups(reduced)
        handles.append(reducer.add(sumsq, spans, layout.device) if spans else None)  # type: ignore[union-attr]
        sums.append(sumsq)
    reduced_sums = reducer.run()
    return [(s if h is None else reduced_sums[h]).sqrt() for s, h in zip(sums, handles, strict=True)]


def full_group_norms(tensor: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Return the norms of every group of the ``DTensor`` ``tensor``, the same on every rank.

    The shape is the global shape with ``dims`` of size 1; groups held by other ranks are gathered
    (one small all-gather of norms, not of parameters).
    """
    from torch.distributed.tensor import Replicate

    (local,), (layout,) = local_views([tensor])
    (norms,) = group_norms_across([local], [layout], [dims])
    if layout is None:
        return norms
    shard_dim = dict(layout.shards)
    placements = [Replicate() if shard_dim.get(m) in dims else p for m, p in enumerate(layout.placements)]
    shape = torch.Size(1 if d in dims else n for d, n in enumerate(layout.shape))
    stride = torch.empty(shape, device="meta").stride()
    spread = dtensor_type().from_local(  # type: ignore[union-attr]
        norms, layout.mesh, placements, run_check=False, shape=shape, stride=stride
    )
    return spread.full_tensor()


# ----------------------------------------------------------------------------- penalties
def values(
    penalties: Sequence[Any], tensors: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], dict[tuple[int, int], torch.Tensor]]:
    """Return the global value of ``penalties[i]`` on ``tensors[i]`` (float64) and the group norms used.

    Separable terms contribute their local value, summed over every mesh dimension that shards the
    tensor. Group terms contribute ``_value_from_norms`` of their groups' global norms: summed over
    the mesh dimensions that shard the group dimension (when the groups are split between ranks) and
    computed identically on every rank when the groups span ranks. For a 1-D mesh this is one
    all-reduce in all. The second dict maps ``(tensor index, term index)`` to the norms (float64,
    dims kept), for a backward pass to reuse.
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
                    totals[i] += term._value_one(w).to(w.device)
                    continue
                if term.separable:
                    queued.append((i, first, first.add(term._value_one(w), layout.groups(), layout.device)))
                    continue
                dims = term.group_dims(w.ndim)
                if dims is None:  # no declared structure: gather
                    totals[i] += term._value_one(_full(tensors[i])).to(w.device)
                    continue
                sumsq = _local_sumsq(w, dims)
                spans, along = layout.groups(dims), layout.groups_along(dims)
                if spans:
                    spanning.append((i, k, term, first.add(sumsq, spans, layout.device), along))
                else:
                    norms[i, k] = sumsq.sqrt()
                    value = term._value_from_norms(norms[i, k])
                    queued.append((i, first, first.add(value, along, layout.device)))
        reduced = first.run()
        for i, k, term, handle, along in spanning:
            norms[i, k] = reduced[handle].sqrt()
            value = term._value_from_norms(norms[i, k])
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
    """Return the sum of per-tensor values in the penalty's result dtype, on the first shard's device."""
    device = totals[0].device if totals else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float64, device=device)
    for value in totals:
        total = total + value.to(device)
    return total.to(result_dtype(tensors))


def add_grads_(
    penalties: Sequence[Any],
    tensors: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    alpha: float,
    foreach: bool | None,
    fused: bool | None = None,
    norms: dict[tuple[int, int], torch.Tensor] | None = None,
) -> None:
    """Add ``alpha·∂penalties[i]/∂tensors[i]`` to ``grads[i]`` (``DTensor`` or plain) in place.

    Separable terms act on the local shards (multi-tensor kernels per penalty when ``foreach``);
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
                if term.separable:
                    term.add_grad_(
                        [locals_[i] for i in indices],
                        [local_grads[i] for i in indices],
                        alpha=alpha,
                        foreach=foreach,
                        fused=fused,
                    )
                    continue
                for i in indices:
                    if term.group_dims(locals_[i].ndim) is not None:
                        jobs.append((i, term, (i, k)))
                    elif layouts[i] is None:
                        local_grads[i].add_(term._grad_one(locals_[i]), alpha=alpha)
                    else:  # no declared structure: gather
                        full_grad = term._grad_one(_full(tensors[i]))
                        local_grads[i].add_(layouts[i].local_part(full_grad), alpha=alpha)  # type: ignore[union-attr]
        known = norms or {}
        missing = [(i, term, key) for i, term, key in jobs if key not in known]
        found = group_norms_across(
            [locals_[i] for i, _, _ in missing],
            [layouts[i] for i, _, _ in missing],
            [term.group_dims(locals_[i].ndim) for i, term, _ in missing],
        )
        known = {**known, **{key: n for (_, _, key), n in zip(missing, found, strict=True)}}
        for i, term, key in jobs:
            w = locals_[i]
            local_grads[i].add_(term._grad_from_norms(w, known[key].to(w.dtype)), alpha=alpha)


def gradients(
    penalties: Sequence[Any],
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
    penalty: Any, tensors: Sequence[torch.Tensor], step: float, foreach: bool, fused: bool | None = None
) -> None:
    """Apply ``penalty``'s prox in place to sharded ``tensors``.

    A closed form acts on the local shards; its group step uses the global group norms (one
    all-reduce when groups span ranks). Other separable penalties act shard by shard; the rest
    gather each tensor, apply the prox and keep their shard.
    """
    locals_, layouts = local_views(tensors)
    plan = penalty.prox_plan()

    def global_norms(shards: Sequence[torch.Tensor], spec: GroupSpec) -> list[torch.Tensor]:
        dims = [group_reduce_dims(spec, w.ndim) for w in shards]
        found = group_norms_across(shards, layouts, dims)
        return [n.to(w.dtype) for n, w in zip(found, shards, strict=True)]

    with torch.no_grad():
        if plan is not None:
            fast = bool(plan.l1 or plan.l2) and use_fused(locals_, fused)
            apply_prox_plan(locals_, step, plan, foreach=foreach, fused=fast, group_norms_fn=global_norms)
            return
        for i, (w, layout) in enumerate(zip(locals_, layouts, strict=True)):
            if layout is None or penalty.separable:
                penalty._prox_one_(w, step)
            else:
                full = _full(tensors[i]).clone()
                penalty._prox_one_(full, step)
                w.copy_(layout.local_part(full))


class _ShardedValue(torch.autograd.Function):
    """``Σᵢ penaltiesᵢ(tensorsᵢ)`` over sharded tensors; backward returns ``DTensor`` gradients."""

    @staticmethod
    def forward(
        ctx: Any, penalties: Sequence[Any], foreach: bool | None, fused: bool | None, *tensors: torch.Tensor
    ):
        totals, norms = values(penalties, tensors)
        ctx.penalties = penalties
        ctx.foreach = foreach
        ctx.fused = fused
        ctx.norms = norms
        ctx.save_for_backward(*tensors)
        return total_value(totals, tensors)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor):
        tensors = ctx.saved_tensors
        scale = float(grad_output) if grad_output.device.type == "cpu" else grad_output
        out = gradients(ctx.penalties, tensors, ctx.foreach, ctx.fused, scale=scale, norms=ctx.norms)
        return (None, None, None, *out)


def value(
    penalties: Sequence[Any],
    tensors: Sequence[torch.Tensor],
    foreach: bool | None = None,
    fused: bool | None = None,
) -> torch.Tensor:
    """Return ``Σᵢ penaltiesᵢ(tensorsᵢ)``: one all-reduce, differentiable when a tensor requires grad.

    The backward returns each ``DTensor`` parameter's gradient as a ``DTensor`` of its layout, which
    autograd accumulates into ``.grad`` beside FSDP2's reduce-scattered data gradient (FSDP2 adds
    into an existing sharded ``.grad``); it reuses the forward's group norms (no communication).
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _ShardedValue.apply(penalties, foreach, fused, *tensors)
    totals, _ = values(penalties, tensors)
    return total_value(totals, tensors)
