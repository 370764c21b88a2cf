"""How FSDP2 lays a ``DTensor`` parameter out, and sums over the ranks that hold parts of it.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) each parameter is a ``DTensor``: every rank holds
a shard of it (``to_local()``), laid out by a device mesh and one placement per mesh dimension
(``Shard(d)`` splits tensor dimension ``d`` between that mesh dimension's ranks, ``Replicate()``
copies it). regtorch computes on the local shards and sums the partial results over exactly the mesh
dimensions that split what is being summed:

* a sum over all entries (the value of an element-wise penalty; statistics) over every mesh
  dimension that shards the tensor;
* a group's squared norm ``‖w_g‖²`` over the mesh dimensions that shard the dimensions the norm
  reduces (the group spans those ranks); a group along a sharded dimension is whole on one rank.

Partial sums of one call are batched (:class:`Reducer`): one all-reduce per process group (one in
all for FSDP2's 1-D mesh), never a gather of parameters. Collectives use the process group's own
timeout (``init_process_group(timeout=...)``), so a rank that died makes the others raise instead
of waiting forever. Every rank must make the same calls in the same order, as for any collective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from regtorch.distributed._detect import dtensor_type

__all__ = [
    "Reducer",
    "ShardLayout",
    "full_group_norms_along",
    "gather",
    "group_norms_across",
    "local_sumsq",
    "local_views",
]


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
                views.append(t.to_local().detach())  # type: ignore[attr-defined]
                layouts.append(ShardLayout.of(t))
            else:
                views.append(t.detach())
                layouts.append(None)
    return views, layouts


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (an all-gather for a ``DTensor``)."""
    with torch.no_grad():
        if isinstance(tensor, dtensor_type() or ()):
            return tensor.full_tensor()  # type: ignore[attr-defined]
        return tensor.detach()


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
def local_sumsq(local: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
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
        sumsq = local_sumsq(local, reduced)
        spans = () if layout is None else layout.groups(reduced)
        handles.append(reducer.add(sumsq, spans, layout.device) if spans else None)  # type: ignore[union-attr]
        sums.append(sumsq)
    reduced_sums = reducer.run()
    return [(s if h is None else reduced_sums[h]).sqrt() for s, h in zip(sums, handles, strict=True)]


def full_group_norms_along(tensor: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
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
