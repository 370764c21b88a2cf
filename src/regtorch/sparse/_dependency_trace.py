"""Trace a model with Torch-Pruning's ``DependencyGraph`` and read its coupled channels as plain data.

Torch-Pruning (``pip install "regtorch[prune]"``) follows the autograd graph of one forward pass and
groups the slices that must be removed together: a layer's output channels, the BatchNorm entries
and consumers' input slices they feed, every layer adding into the same residual stream. One of
its groups, here a *family*, covers all channels of such a coupled set; each channel of it (a
*unit*) is a minimal removable group. This module turns each family into a
:class:`~regtorch.sparse._dependency_family.Family` of plain lists and applies regtorch's own rules
on top:

* families that reach the model's outputs (the classifier, the LM head), or whose output layer is
  in ``ignored_layers``, are dropped: a model's outputs are never groups;
* in attention layers (a module with ``num_heads`` / ``num_attention_heads`` / ``n_head`` and
  ``head_dim`` / ``attention_head_size``), the channels of the query/key/value projections and the
  output projection's inputs are merged by head: one unit per head;
* a family whose removal would change the outputs however zero its slices are is *blocked*, with the
  reason: a LayerNorm, GroupNorm or RMSNorm normalises over it (the hidden size of transformers), a
  grouped convolution, a layer type regtorch does not slice, or indices Torch-Pruning could not map.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from regtorch.regularizer._selection import NORM_LAYER_TYPES
from regtorch.sparse._dependency_family import (
    CONVS,
    PER_CHANNEL_NORMS,
    Family,
    Member,
    attention_modules,
    is_hf_conv1d,
    member_size,
    merge_heads,
    slice_dims,
)

__all__ = ["import_torch_pruning", "output_tensors", "run_model", "trace_families", "without_cache"]


def import_torch_pruning(owner: str) -> Any:
    """Import ``torch_pruning`` or raise an ``ImportError`` naming the extra to install."""
    try:
        return importlib.import_module("torch_pruning")
    except ImportError as error:
        raise ImportError(
            f"{owner} needs torch-pruning to trace the model's coupled channels, and importing it failed "
            f"({error}). Install it with: pip install \"regtorch[prune]\""
        ) from error


def run_model(model: nn.Module, example_input: Any) -> Any:
    """Call ``model`` on a tensor, a tuple of positional inputs or a dict of keyword inputs."""
    if isinstance(example_input, dict):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


@contextlib.contextmanager
def without_cache(model: nn.Module) -> Iterator[None]:
    """Switch off a Hugging Face model's key/value cache (``config.use_cache``) for a while.

    The cache is state for generation, not an output to preserve, and tracing it (a concatenation of
    past and new keys) gives Torch-Pruning nothing to map.
    """
    config: Any = getattr(model, "config", None)  # a Hugging Face PretrainedConfig, or None
    flag = getattr(config, "use_cache", None)
    if not isinstance(flag, bool) or not flag:
        yield
        return
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = flag


def output_tensors(outputs: Any) -> list[torch.Tensor]:
    """Every floating-point tensor in a model's outputs (tensors, tuples, lists, dicts, ``ModelOutput``)."""
    found: list[torch.Tensor] = []
    stack = [outputs]
    while stack:
        item = stack.pop(0)
        if isinstance(item, torch.Tensor):
            if item.is_floating_point() or item.is_complex():
                found.append(item)
        elif isinstance(item, dict):
            stack[:0] = list(item.values())
        elif isinstance(item, (tuple, list)):
            stack[:0] = list(item)
    return found


def _conv1d_pruner(tp: Any, kind: type) -> Any:
    """A Torch-Pruning pruner for Hugging Face's ``Conv1D`` (a Linear with a transposed weight)."""

    class _Conv1DPruner(tp.pruner.BasePruningFunc):
        TARGET_MODULES = (kind,)

        def prune_out_channels(self, layer: Any, idxs: Sequence[int]) -> Any:
            raise NotImplementedError("regtorch slices the model itself")

        def prune_in_channels(self, layer: Any, idxs: Sequence[int]) -> Any:
            raise NotImplementedError("regtorch slices the model itself")

        def get_out_channels(self, layer: Any) -> int:
            return layer.weight.shape[1]

        def get_in_channels(self, layer: Any) -> int:
            return layer.weight.shape[0]

    return _Conv1DPruner()


def _blocked_reason(member: Member, owners: dict[int, tuple[str, nn.Module]]) -> str:
    module = member.module
    if isinstance(module, nn.Parameter):
        owner_name, owner = owners.get(id(module), ("", None))
        if owner is not None and (
            isinstance(owner, NORM_LAYER_TYPES) or "Norm" in type(owner).__name__
        ) and not isinstance(owner, PER_CHANNEL_NORMS):
            return f"a {type(owner).__name__} normalises over it ({owner_name!r})"
        return ""
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or (
        isinstance(module, NORM_LAYER_TYPES) and not isinstance(module, PER_CHANNEL_NORMS)
    ):
        return f"a {type(module).__name__} normalises over it ({member.name!r})"
    if isinstance(module, CONVS) and not slice_dims(module, member.direction):
        return f"grouped convolution {member.name!r} (groups={module.groups}) is not sliced"
    if not slice_dims(module, member.direction):
        return f"{member.name!r} ({type(module).__name__}) is a layer type shrink does not slice"
    return ""


def _read_family(group: Any, dg: Any, names: dict[int, str], params: dict[int, str]) -> tuple[Family, bool]:
    """Convert one Torch-Pruning group; return it and whether it reaches the model's outputs."""
    members: dict[tuple[int, str], Member] = {}
    reaches_output = False
    n_units = 0
    for item in group:
        dep = item.dep
        node, target = dep.target, dep.target.module
        out = dg.is_out_channel_pruning_fn(dep.handler)
        root = list(item.root_idxs)
        n_units = max([n_units, *(r + 1 for r in root)])
        if not node.outputs and (out or id(target) not in names):
            reaches_output = True
        if isinstance(target, nn.Parameter) and id(target) in params:
            name, direction = params[id(target)], "out"
        elif id(target) in names:
            name = names[id(target)]
            single = isinstance(target, (*PER_CHANNEL_NORMS, nn.LayerNorm, nn.GroupNorm, nn.Embedding,
                                         nn.EmbeddingBag, nn.PReLU))  # fmt: skip
            depthwise = isinstance(target, CONVS) and 1 < target.groups == target.out_channels
            direction = "out" if out or single or depthwise else "in"
        else:
            continue  # an operation without parameters (add, reshape, concat...)
        key = (id(target), direction)
        dim = node.pruning_dim if isinstance(target, nn.Parameter) else -1
        member = members.setdefault(key, Member(name, target, direction, [], [], dim))
        seen = set(member.index)
        for index, unit in zip(item.idxs, root, strict=True):
            if int(index) not in seen:
                member.index.append(int(index))
                member.unit.append(int(unit))
                seen.add(int(index))
    family = Family(list(members.values()), n_units, [])
    return family, reaches_output


def _label(family: Family, order: dict[str, int]) -> None:
    outs = [m for m in family.members if m.direction == "out"]
    if not outs:
        family.labels = [f"{family.members[0].name} unit {u}" for u in range(family.units)]
        family.key = list(range(family.units))
        return
    first = min(outs, key=lambda m: order.get(m.name, len(order)))
    index_of = dict(zip(first.unit, first.index, strict=True))
    family.key = [index_of.get(u, u) for u in range(family.units)]
    family.labels = [f"{first.name} out {index_of.get(u, u)}" for u in range(family.units)]


def _check_indices(family: Family) -> None:
    for member in family.members:
        size = member_size(member)
        if size >= 0 and any(not 0 <= i < size for i in member.index):
            family.blocked = (
                f"the traced slices of {member.name!r} fall outside its {size} channels (an operation "
                "Torch-Pruning could not map)"
            )
            return


def _resolve_ignored(model: nn.Module, ignored: Iterable[Any] | None, owner: str) -> set[int]:
    modules = dict(model.named_modules())
    ids = {id(m) for m in modules.values()}
    found: set[int] = set()
    for item in ignored or ():
        if isinstance(item, str):
            if item not in modules:
                raise ValueError(
                    f"The 'ignored_layers' argument of {owner} must hold submodules of the model or their "
                    f"qualified names; got {item!r}, which is not a module name of the model."
                )
            found.add(id(modules[item]))
        elif isinstance(item, nn.Module) and id(item) in ids:
            found.add(id(item))
        else:
            raise ValueError(
                f"The 'ignored_layers' argument of {owner} must hold submodules of the model or their "
                f"qualified names; got {item!r}."
            )
    return found


def trace_families(
    model: nn.Module, example_input: Any, ignored_layers: Iterable[Any] | None, owner: str
) -> list[Family]:
    """Trace ``model`` once on ``example_input`` (eval mode) and return its families of coupled channels.

    Families that reach the model's outputs or the outputs of an ignored layer are left out; blocked
    families are included with their reason. Training flags and ``requires_grad`` are restored.
    """
    tp = import_torch_pruning(owner)
    ignored = _resolve_ignored(model, ignored_layers, owner)
    names = {id(m): n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    params = {id(p): n for n, p in model.named_parameters()}
    owners = {id(p): (n, m) for n, m in model.named_modules() for p in m.parameters(recurse=False)}
    roots: list[type] = [*CONVS, nn.Linear, nn.Embedding]
    custom = {}
    for module in model.modules():
        if is_hf_conv1d(module) and type(module) not in custom:
            custom[type(module)] = _conv1d_pruner(tp, type(module))
            roots.append(type(module))
    flags = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    try:
        for param in grads:
            if param.is_floating_point():
                param.requires_grad_(True)  # autograd records every layer, frozen ones too
        with torch.enable_grad(), without_cache(model):
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, forward_fn=run_model, verbose=False,
                output_transform=lambda out: [t for t in output_tensors(out) if t.grad_fn is not None],
                customized_pruners=custom or None,
            )  # fmt: skip
        groups = list(dg.get_all_groups(root_module_types=tuple(roots)))
    except Exception as error:
        raise ValueError(
            f"The 'example_input' argument of {owner} must be a batch the model accepts and traces; "
            f"tracing it with torch-pruning failed with {type(error).__name__}: {error}"
        ) from error
    finally:
        for param, flag in grads.items():
            param.requires_grad_(flag)
        for module, flag in flags.items():
            module.training = flag
    attention = attention_modules(model)
    families = []
    for group in groups:
        family, reaches_output = _read_family(group, dg, names, params)
        if reaches_output or not family.members or family.units == 0:
            continue
        if any(m.direction == "out" and id(m.module) in ignored for m in family.members):
            continue
        family.members.sort(key=lambda m: order.get(m.name, len(order)))
        _label(family, order)
        merge_heads(family, attention)
        if not family.blocked:
            _check_indices(family)
        for member in family.members:
            if family.blocked:
                break
            family.blocked = _blocked_reason(member, owners)
        families.append(family)
    families.sort(key=lambda f: min(order.get(m.name, len(order)) for m in f.members if m.direction == "out")
                  if any(m.direction == "out" for m in f.members) else len(order))  # fmt: skip
    return families
