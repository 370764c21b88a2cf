"""The data of a traced family of coupled channels, and the attention-head rules applied to it.

A *family* is one Torch-Pruning group: the slices of every module and free parameter that a set of
coupled channels spans (see :mod:`regtorch.sparse._dependency_trace`). Its *units* are the minimal
removable groups. In attention layers the channels of the query/key/value projections and the
output projection's inputs are merged by head (:func:`merge_heads`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "CONVS",
    "HEAD_COUNT_ATTRIBUTES",
    "PER_CHANNEL_NORMS",
    "Family",
    "Member",
    "attention_modules",
    "is_hf_conv1d",
    "member_size",
    "merge_heads",
    "slice_dims",
]

HEAD_COUNT_ATTRIBUTES = ("num_heads", "num_attention_heads", "n_head", "n_heads")
_HEAD_DIM = ("head_dim", "attention_head_size", "head_size")
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
PER_CHANNEL_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass
class Member:
    """Slices of one module (or one free parameter) taking part in a family.

    Attributes:
        name: Qualified module name, or qualified parameter name when ``module`` is a parameter.
        module: The module, or the ``nn.Parameter`` for a parameter outside a known layer.
        direction: ``"out"`` (output channels; also the single channel dimension of BatchNorm,
            Embedding, PReLU and free parameters) or ``"in"`` (input channels).
        index: Sliced indices along that dimension.
        unit: The unit (within the family) of each index.
        dim: For a free parameter, the sliced dimension.
    """

    name: str
    module: Any
    direction: str
    index: list[int]
    unit: list[int]
    dim: int = -1


@dataclass
class Family:
    """A set of coupled channels: ``units`` minimal removable groups.

    Attributes:
        members: The sliced modules and parameters.
        units: Number of units.
        labels: A readable label per unit (``"layer1.0.conv1 out 5"``, ``"encoder.attn head 3"``).
        blocked: Why no unit of the family can be removed without changing the outputs, or ``""``.
        heads: For attention heads: ``(attention module name, number of heads, head dimension)``.
    """

    members: list[Member]
    units: int
    labels: list[str]
    blocked: str = ""
    heads: tuple[str, int, int] | None = None
    key: list[int] = field(default_factory=list)  # unit -> sort key (index in the label module)


def slice_dims(module: Any, direction: str) -> list[tuple[str, int]]:
    """Return the ``(parameter attribute, dimension)`` pairs that one channel of ``module`` spans.

    An empty list means regtorch does not know how to slice this module type. For a free
    parameter, the attribute is ``""``.
    """
    if isinstance(module, nn.Parameter):
        raise TypeError("free parameters carry their dimension in the traced graph")
    if isinstance(module, nn.Linear):
        return [("weight", 0), ("bias", 0)] if direction == "out" else [("weight", 1)]
    if isinstance(module, CONVS):
        transposed = isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
        if module.groups > 1:
            if module.groups == module.in_channels == module.out_channels and not transposed:
                return [("weight", 0), ("bias", 0)]
            return []
        out_dim, in_dim = (1, 0) if transposed else (0, 1)
        return [("weight", out_dim), ("bias", 0)] if direction == "out" else [("weight", in_dim)]
    if isinstance(module, (*PER_CHANNEL_NORMS, nn.GroupNorm)):
        return [("weight", 0), ("bias", 0)]
    if isinstance(module, nn.LayerNorm):
        return [("weight", -1), ("bias", -1)]
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return [("weight", 1)]
    if isinstance(module, nn.PReLU):
        return [("weight", 0)] if module.num_parameters > 1 else []
    if is_hf_conv1d(module):
        return [("weight", 1), ("bias", 0)] if direction == "out" else [("weight", 0)]
    return []


def is_hf_conv1d(module: Any) -> bool:
    kind = type(module)
    return kind.__name__ == "Conv1D" and kind.__module__.startswith("transformers")


def member_size(member: Member) -> int:
    """Number of channels of the member's sliced dimension (-1 if unknown)."""
    if isinstance(member.module, nn.Parameter):
        return member.module.shape[member.dim]
    for attr, dim in slice_dims(member.module, member.direction):
        tensor = getattr(member.module, attr, None)
        if isinstance(tensor, torch.Tensor):
            return tensor.shape[dim]
    return -1


def _int_attribute(module: nn.Module, names: tuple[str, ...]) -> int:
    """The first of ``names`` that is an int attribute of ``module``, else 0."""
    return next((v for v in (getattr(module, a, None) for a in names) if isinstance(v, int)), 0)


def attention_modules(model: nn.Module) -> dict[str, tuple[int, int, int | None]]:
    """Modules that look like multi-head attention: name -> (heads, head dim, key/value heads)."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            continue
        heads = _int_attribute(module, HEAD_COUNT_ATTRIBUTES)
        if heads <= 0:
            continue
        dim = _int_attribute(module, _HEAD_DIM)
        embed = getattr(module, "embed_dim", None)
        if dim <= 0 and isinstance(embed, int) and embed % heads == 0:
            dim = embed // heads
        if dim > 0:
            kv = getattr(module, "num_key_value_heads", None)
            found[name] = (heads, dim, kv if isinstance(kv, int) else None)
    return found


def _within(name: str, prefix: str) -> bool:
    return prefix == "" or name.startswith(prefix + ".")


def merge_heads(family: Family, attention: dict[str, tuple[int, int, int | None]]) -> None:
    """Regroup the channels of attention projections by head (in place)."""
    outs = [m for m in family.members if m.direction == "out" and not isinstance(m.module, nn.Parameter)
            and (isinstance(m.module, nn.Linear) or is_hf_conv1d(m.module))]  # fmt: skip
    if not outs:
        return
    owners = [a for a in attention if all(_within(m.name, a) for m in outs)]
    if not owners:
        return
    owner = max(owners, key=len)
    heads, dim, kv = attention[owner]
    width = heads * dim
    if kv is not None and kv != heads:
        family.blocked = (
            f"grouped-query attention {owner!r} ({heads} query heads, {kv} key/value heads): its heads are "
            "not removed by shrink"
        )
        return
    sizes = {member_size(m) for m in outs}
    if sizes == {width}:
        head_of_unit: dict[int, int] = {}
        for member in outs:
            for index, unit in zip(member.index, member.unit, strict=True):
                if head_of_unit.setdefault(unit, index // dim) != index // dim:
                    family.blocked = f"the projections of attention {owner!r} do not share one head layout"
                    return
        for member in family.members:
            member.unit = [head_of_unit[u] for u in member.unit]
    elif len(outs) == 1 and sizes in ({2 * width}, {3 * width}):
        fused = outs[0]  # query, key and value side by side (GPT-2's c_attn)
        ins = [m for m in family.members if m.direction == "in"]
        if len(family.members) != 1 + len(ins) or not ins or any(member_size(m) != width for m in ins):
            family.blocked = f"the fused projection {fused.name!r} of attention {owner!r} could not be mapped"
            return
        fused.index = list(range(member_size(fused)))
        fused.unit = [(i % width) // dim for i in fused.index]
        for member in ins:
            member.index = list(range(width))
            member.unit = [i // dim for i in member.index]
    else:
        return
    family.units = heads
    family.labels = [f"{owner} head {h}" for h in range(heads)]
    family.key = list(range(heads))
    family.heads = (owner, heads, dim)
