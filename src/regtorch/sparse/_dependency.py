"""Coupled groups of any architecture, as plain data: which parameter slices must go together.

:func:`coupled_groups` traces a model once with Torch-Pruning's ``DependencyGraph`` (the optional
extra ``regtorch[prune]``; see :mod:`regtorch.sparse._dependency_trace` for the rules) and returns a
:class:`CoupledGroups`: for every parameter dimension that takes part, the id of the group each
slice belongs to. A group is a minimal removable unit:

* a convolution's output channel with its bias entry, the BatchNorm entries it feeds and the input
  slices of every consumer; in a residual stage, every convolution adding into the same stream
  (with their BatchNorms) and every consumer of the stream, as one group per stream channel;
* a Linear's output neuron with the consumers' input columns (an MLP hidden unit);
* an attention head: its rows of the query, key and value projections (with bias entries) and its
  columns of the output projection.

The model's outputs (the classifier or LM head) and its inputs are never groups. Groups that no
amount of zeros could remove without changing the outputs (a LayerNorm normalises over the hidden
size of a transformer, so every hidden channel is such a group) are left out by default; with
``include_blocked=True`` they are listed with the reason in :attr:`CoupledGroups.blocked`, which
is how :func:`regtorch.shrink` explains why it keeps them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from regtorch.regularizer._selection import unwrap_model
from regtorch.sparse._dependency_family import Family, member_size, slice_dims
from regtorch.sparse._dependency_trace import trace_families

__all__ = [
    "AttentionHeads",
    "CoupledGroups",
    "GroupMember",
    "ModuleSlice",
    "build_groups",
    "check_example_input",
    "coupled_groups",
]


@dataclass(frozen=True)
class GroupMember:
    """One parameter dimension taking part in coupled groups.

    Attributes:
        name: Qualified parameter name, as ``model.named_parameters()`` gives it (tied parameters
            once, under their first name).
        dim: The sliced dimension (non-negative).
        group_ids: ``int64`` tensor of length ``param.shape[dim]``; entry ``i`` is the id of the group
            that slice ``i`` (``param.select(dim, i)``) belongs to, or ``-1`` if none.
    """

    name: str
    dim: int
    group_ids: torch.Tensor


@dataclass(frozen=True)
class ModuleSlice:
    """The channels of one module along one direction, for the module's own attributes and buffers.

    Attributes:
        name: Qualified module name.
        type: Module type name (``"Conv2d"``, ``"BatchNorm2d"``...).
        direction: ``"out"`` (output channels, or the one channel dimension of BatchNorm, Embedding,
            PReLU) or ``"in"`` (input channels).
        group_ids: ``int64`` tensor over those channels, ``-1`` where none.
    """

    name: str
    type: str
    direction: str
    group_ids: torch.Tensor


@dataclass(frozen=True)
class AttentionHeads:
    """An attention module whose heads are groups.

    Attributes:
        name: Qualified name of the attention module (the one holding ``num_heads``-like attributes).
        head_dim: Channels per head.
        group_ids: ``int64`` tensor, the group id of each head.
    """

    name: str
    head_dim: int
    group_ids: torch.Tensor


@dataclass(frozen=True)
class CoupledGroups:
    """Coupled groups of a model (see :func:`coupled_groups`).

    Attributes:
        num_groups: Number of groups; ids run from 0 to ``num_groups - 1``.
        members: Every parameter dimension with a slice in some group. A parameter may appear with
            several dimensions (a convolution weight: dim 0 in its own output-channel groups, dim 1
            in the groups of its input).
        labels: A readable label per group id (``"layer1.0.conv1 out 5"``,
            ``"encoder.layer.0.attention.self head 3"``).
        blocked: Per group id, ``""`` for a removable group, else why removing it would change the
            outputs however zero it is (only with ``include_blocked=True``).
        families: Per group id, the index of its family: the groups traced together (all channels
            of one coupled set, or all heads of one attention layer).
        modules: The modules whose channels are sliced, for shrinking (attributes, buffers).
        attention: The attention modules whose heads are groups.
    """

    num_groups: int
    members: tuple[GroupMember, ...]
    labels: tuple[str, ...]
    blocked: tuple[str, ...]
    families: tuple[int, ...]
    modules: tuple[ModuleSlice, ...] = ()
    attention: tuple[AttentionHeads, ...] = ()

    def sizes(self, model: nn.Module) -> torch.Tensor:
        """Return the number of parameter entries in each group (``int64``, length ``num_groups``).

        An entry shared by two members of one group (a weight sliced along both dimensions by the
        same group) is counted twice.
        """
        params = dict(unwrap_model(model).named_parameters())
        sizes = torch.zeros(self.num_groups, dtype=torch.int64)
        for member in self.members:
            param = params[member.name]
            per_slice = param.numel() // param.shape[member.dim]
            valid = member.group_ids >= 0
            sizes.index_add_(0, member.group_ids[valid], torch.full((int(valid.sum()),), per_slice))
        return sizes


def check_example_input(example_input: Any, owner: str) -> None:
    """Raise ``TypeError`` unless ``example_input`` is a tensor, a tuple/list of them or a dict."""
    def ok(value: Any) -> bool:
        if isinstance(value, torch.Tensor):
            return True
        if isinstance(value, (tuple, list)):
            return all(ok(v) for v in value)
        if isinstance(value, dict):
            return all(isinstance(k, str) for k in value)
        return False

    if not ok(example_input):
        raise TypeError(
            f"The 'example_input' argument of {owner} must be a tensor (one batch of inputs), a tuple of "
            f"tensors (positional inputs) or a dict (keyword inputs); got {type(example_input).__name__}."
        )


def _member_slices(family: Family, params: dict[int, str]) -> list[tuple[str, int, list[int], list[int]]]:
    """(parameter name, dim, indices, units) for every parameter slice of the family."""
    found = []
    for member in family.members:
        if isinstance(member.module, nn.Parameter):
            pairs: list[tuple[object, int]] = [(member.module, member.dim)]
        else:
            pairs = [(getattr(member.module, attr, None), dim)
                     for attr, dim in slice_dims(member.module, member.direction)]  # fmt: skip
        for param, dim in pairs:
            if isinstance(param, nn.Parameter) and id(param) in params:
                found.append((params[id(param)], dim % param.ndim, member.index, member.unit))
    return found


def _block_conflicts(families: list[Family], params: dict[int, str]) -> None:
    """Block two families that claim the same slice of a parameter (they are coupled after all)."""
    claimed: dict[tuple[str, int, int], int] = {}
    for number, family in enumerate(families):
        for name, dim, index, _ in _member_slices(family, params):
            for i in index:
                other = claimed.setdefault((name, dim, i), number)
                if other != number:
                    reason = f"slice {i} of {name!r} (dim {dim}) is claimed by two traced groups"
                    family.blocked = family.blocked or reason
                    families[other].blocked = families[other].blocked or reason


def build_groups(model: nn.Module, families: list[Family], include_blocked: bool) -> CoupledGroups:
    """Number the units of ``families`` and collect them per parameter and per module."""
    named = dict(model.named_parameters())
    params = {id(p): n for n, p in named.items()}
    _block_conflicts(families, params)
    labels: list[str] = []
    blocked: list[str] = []
    family_of: list[int] = []
    ids: dict[tuple[str, int], torch.Tensor] = {}
    module_ids: dict[tuple[str, str], tuple[str, torch.Tensor]] = {}
    heads: list[AttentionHeads] = []
    kept = [f for f in families if include_blocked or not f.blocked]
    for number, family in enumerate(kept):
        order = sorted(range(family.units), key=lambda u: family.key[u] if family.key else u)
        base = len(labels)
        gid = {unit: base + rank for rank, unit in enumerate(order)}
        labels.extend(family.labels[u] for u in order)
        blocked.extend([family.blocked] * family.units)
        family_of.extend([number] * family.units)
        for name, dim, index, unit in _member_slices(family, params):
            tensor = ids.setdefault((name, dim), torch.full((named[name].shape[dim],), -1, dtype=torch.int64))
            tensor[torch.tensor(index, dtype=torch.int64)] = torch.tensor([gid[u] for u in unit])
        for member in family.members:
            if isinstance(member.module, nn.Parameter):
                continue
            size = member_size(member)
            size = size if size >= 0 else max(member.index) + 1
            _, tensor = module_ids.setdefault(
                (member.name, member.direction),
                (type(member.module).__name__, torch.full((size,), -1, dtype=torch.int64)),
            )
            where = torch.tensor(member.index, dtype=torch.int64)
            tensor[where] = torch.tensor([gid[u] for u in member.unit])
        if family.heads is not None:
            name, n_heads, head_dim = family.heads
            heads.append(AttentionHeads(name, head_dim, torch.tensor([gid[h] for h in range(n_heads)])))
    param_order = {name: i for i, name in enumerate(named)}
    module_order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    members = tuple(GroupMember(name, dim, ids[(name, dim)])
                    for name, dim in sorted(ids, key=lambda k: (param_order[k[0]], k[1])))  # fmt: skip
    module_keys = sorted(module_ids, key=lambda k: (module_order.get(k[0], -1), k[1] == "in"))
    modules = tuple(ModuleSlice(n, module_ids[(n, d)][0], d, module_ids[(n, d)][1]) for n, d in module_keys)
    return CoupledGroups(len(labels), members, tuple(labels), tuple(blocked), tuple(family_of), modules,
                         tuple(heads))  # fmt: skip


def coupled_groups(
    model: nn.Module,
    example_input: Any,
    *,
    ignored_layers: Iterable[nn.Module | str] | None = None,
    include_blocked: bool = False,
) -> CoupledGroups:
    """Trace ``model`` once and return its coupled groups: the slices that must be removed together.

    Needs Torch-Pruning (``pip install "regtorch[prune]"``). The model runs once on
    ``example_input`` in eval mode (training flags and ``requires_grad`` are restored afterwards).

    Args:
        model: The model (``torch.compile`` and DDP wrappers are looked through; names are the
            user's own).
        example_input: One batch of inputs: a tensor (``model(x)``), a tuple of positional inputs
            or a dict of keyword inputs (``model(**x)``, e.g. a tokenizer's output).
        ignored_layers: Modules (or their qualified names) whose output channels must never be
            groups; the model's output layers already are not.
        include_blocked: Also return groups whose removal would change the outputs however zero
            they are (hidden channels under a LayerNorm...), with the reason in ``blocked``.

    Returns:
        A :class:`CoupledGroups`; group ids are numbered layer by layer in the model's order.

    Raises:
        ImportError: If torch-pruning is not installed (the message names the extra).
        TypeError: If ``model`` is not a module or ``example_input`` not a tensor, tuple or dict.
        ValueError: If the model cannot run or be traced on ``example_input``, or an ignored
            layer is not part of the model.

    Examples:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> groups = coupled_groups(model, torch.randn(1, 4))
        >>> groups.num_groups, groups.labels[0]
        (8, '0 out 0')
        >>> [(m.name, m.dim) for m in groups.members]
        [('0.weight', 0), ('0.bias', 0), ('2.weight', 1)]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"The 'model' argument of coupled_groups must be an nn.Module; got {type(model).__name__}."
        )
    if not isinstance(include_blocked, bool):
        raise TypeError(
            f"The 'include_blocked' argument of coupled_groups must be a bool; got {include_blocked!r}."
        )
    check_example_input(example_input, "coupled_groups")
    model = unwrap_model(model)
    families = trace_families(model, example_input, ignored_layers, "coupled_groups")
    return build_groups(model, families, include_blocked)
