"""The dependency-graph path of :func:`regtorch.shrink`: remove all-zero coupled groups of any model.

The model is traced once (:func:`regtorch.sparse._dependency.coupled_groups`, with the blocked
groups). A group is *zero* when every one of its parameter slices has ``|w| <= atol``; zero groups
that are not blocked are sliced out of a deep copy: parameters (``index_select`` along the group's
dimension, new ``nn.Parameter`` objects with the same ``requires_grad``, tied ones stay tied), the
modules' size attributes (``out_features``, ``in_channels``, ``num_features``...), BatchNorm running
statistics, and the head counts of attention modules.

The copy then runs ``example_input`` in eval mode. Its outputs must equal the original's (with
``atol > 0``: the original's with the removed slices set to zero) within ``tol·max(1, max|y|)``,
``tol`` = 1e-10 for float64 outputs, 1e-4 for float32, ``8·eps`` for half precision. If they do
not, the families of groups (the channels of one coupled set, the heads of one attention layer)
are tried one at a time, and a family whose removal changes the outputs is kept, with the
measured difference as its reason.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from regtorch.sparse._dependency import CoupledGroups, build_groups
from regtorch.sparse._dependency_family import CONVS, HEAD_COUNT_ATTRIBUTES, PER_CHANNEL_NORMS
from regtorch.sparse._dependency_trace import (
    output_tensors,
    run_model,
    trace_families,
    without_cache,
)
from regtorch.sparse._shrink_report import GroupShrink, LayerShrink, ShrinkReport

__all__ = ["GraphPlan", "apply_plan", "copy_model", "plan_graph"]

_HEAD_WIDTH = ("all_head_size", "split_size")


def _keep(ids: torch.Tensor, remove: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(ids.numel(), dtype=torch.bool)
    valid = ids >= 0
    keep[valid] = ~remove[ids[valid]]
    return keep


def _io_sizes(module: nn.Module) -> tuple[int, int]:
    """(output units, input units) of a sliceable layer."""
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, CONVS):
        return module.out_channels, module.in_channels
    if isinstance(module, PER_CHANNEL_NORMS):
        return module.num_features, module.num_features
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1], module.normalized_shape[-1]
    if isinstance(module, nn.GroupNorm):
        return module.num_channels, module.num_channels
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return module.embedding_dim, module.num_embeddings
    if isinstance(module, nn.PReLU):
        return module.num_parameters, module.num_parameters
    if isinstance(weight, torch.Tensor) and weight.ndim == 2:  # Hugging Face Conv1D: (in, out)
        return weight.shape[1], weight.shape[0]
    return 0, 0


def _resync(module: nn.Module, kept: int) -> None:
    """Update a module's size attributes after its parameters were sliced."""
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, CONVS):
        transposed = isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
        if module.groups > 1:  # depthwise: one channel per group
            module.groups = module.in_channels = module.out_channels = module.weight.shape[0]
        elif transposed:
            module.in_channels, module.out_channels = module.weight.shape[:2]
        else:
            module.out_channels, module.in_channels = module.weight.shape[:2]
    elif isinstance(module, PER_CHANNEL_NORMS):
        module.num_features = kept
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = (*module.normalized_shape[:-1], kept)
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = kept
    elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        module.embedding_dim = module.weight.shape[1]
    elif isinstance(module, nn.PReLU):
        module.num_parameters = kept
    elif isinstance(weight, torch.Tensor) and hasattr(module, "nf") and hasattr(module, "nx"):
        conv1d: Any = module  # a Hugging Face Conv1D (transformers is optional): nx, nf are plain ints
        conv1d.nx, conv1d.nf = weight.shape


def remove_groups_(model: nn.Module, groups: CoupledGroups, remove: torch.Tensor) -> None:
    """Slice the groups flagged in ``remove`` out of ``model`` (traced as ``groups``), in place."""
    params = dict(model.named_parameters())
    cuts: dict[str, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for member in groups.members:
        keep = _keep(member.group_ids, remove)
        if not keep.all():
            cuts[member.name].append((member.dim, keep))
    owners: dict[int, list[tuple[nn.Module, str]]] = defaultdict(list)
    for module in model.modules():
        for attr, param in module.named_parameters(recurse=False):
            owners[id(param)].append((module, attr))
    with torch.no_grad():
        for name, dims in cuts.items():
            old = params[name]
            tensor = old.detach()
            for dim, keep in dims:
                tensor = tensor.index_select(dim, keep.nonzero().flatten().to(tensor.device))
            new = nn.Parameter(tensor.clone(), requires_grad=old.requires_grad)
            for module, attr in owners[id(old)]:
                setattr(module, attr, new)
        for piece in groups.modules:
            keep = _keep(piece.group_ids, remove)
            if keep.all():
                continue
            module = model.get_submodule(piece.name)
            if isinstance(module, PER_CHANNEL_NORMS):
                for attr in ("running_mean", "running_var"):
                    buffer = getattr(module, attr, None)
                    if isinstance(buffer, torch.Tensor):
                        setattr(module, attr, buffer[keep.to(buffer.device)].clone())
            _resync(module, int(keep.sum()))
        for heads in groups.attention:
            keep = _keep(heads.group_ids, remove)
            if keep.all():
                continue
            module, total, kept = model.get_submodule(heads.name), keep.numel(), int(keep.sum())
            for attr in HEAD_COUNT_ATTRIBUTES:
                if getattr(module, attr, None) == total:
                    setattr(module, attr, kept)
            for attr in _HEAD_WIDTH:
                if getattr(module, attr, None) == total * heads.head_dim:
                    setattr(module, attr, kept * heads.head_dim)


def zero_groups_(model: nn.Module, groups: CoupledGroups, remove: torch.Tensor) -> None:
    """Set every slice of the flagged groups to zero, in place (the reference when ``atol > 0``)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for member in groups.members:
            drop = ~_keep(member.group_ids, remove)
            if drop.any():
                param = params[member.name]
                param.index_fill_(member.dim, drop.nonzero().flatten().to(param.device), 0)


def _zero_flags(groups: CoupledGroups, model: nn.Module, atol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(all slices zero, some weight slice zero but not all) per group."""
    params = dict(model.named_parameters())
    nonzero = torch.zeros(groups.num_groups, dtype=torch.int64)
    zero_weight = torch.zeros(groups.num_groups, dtype=torch.int64)
    with torch.no_grad():
        for member in groups.members:
            param = params[member.name].detach()
            flags = (param.abs() > atol).movedim(member.dim, 0)
            flags = flags.reshape(flags.shape[0], -1).any(1).cpu()
            valid = member.group_ids >= 0
            nonzero.index_add_(0, member.group_ids[valid], flags[valid].long())
            if param.ndim >= 2:
                zero_weight.index_add_(0, member.group_ids[valid], (~flags[valid]).long())
    zero = nonzero == 0
    return zero, (zero_weight > 0) & ~zero


def eval_outputs(model: nn.Module, example_input: Any) -> list[torch.Tensor]:
    """The floating-point output tensors of one eval-mode forward pass (training flags restored)."""
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), without_cache(model):
            return [t.detach().clone() for t in output_tensors(run_model(model, example_input))]
    finally:
        for module, flag in flags.items():
            module.training = flag


def _difference(expected: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    if len(expected) != len(got) or any(a.shape != b.shape for a, b in zip(expected, got, strict=True)):
        return math.inf
    worst = 0.0
    for a, b in zip(expected, got, strict=True):
        if not torch.equal(a.isnan(), b.isnan()):
            return math.inf
        finite = ~a.isnan()
        if finite.any():
            worst = max(worst, float((a[finite].double() - b[finite].double()).abs().max()))
    return worst


def _tolerance(expected: list[torch.Tensor]) -> float:
    if not expected:
        return 0.0
    dtype = expected[0].dtype
    relative = 1e-10 if dtype == torch.float64 else max(1e-4, 8 * torch.finfo(dtype).eps)
    scale = max([1.0, *(float(t.abs().nan_to_num(0.0).max()) for t in expected if t.numel())])
    return relative * scale


def copy_model(model: nn.Module, why: str) -> nn.Module:
    """``copy.deepcopy(model)``, or a ``RuntimeError`` saying why shrink needs the copy."""
    try:
        return copy.deepcopy(model)
    except RuntimeError as error:
        raise RuntimeError(f"shrink could not deep-copy the model ({error}); {why}") from error


def _trial(
    model: nn.Module, groups: CoupledGroups, remove: torch.Tensor, example_input: Any, atol: float,
    base: list[torch.Tensor],
) -> tuple[nn.Module | None, str]:
    """Remove ``remove`` from a copy; return the copy, or None and why the outputs changed."""
    work = copy_model(model, "the dependency-graph path checks each removal on a copy")
    reference = base
    if atol > 0:
        zero_groups_(work, groups, remove)
        reference = eval_outputs(work, example_input)
    try:
        remove_groups_(work, groups, remove)
        got = eval_outputs(work, example_input)
    except Exception as error:  # a layer that cannot run with fewer channels
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return None, f"removing it breaks the forward pass ({type(error).__name__}: {first})"
    difference, tolerance = _difference(reference, got), _tolerance(reference)
    if difference > tolerance:
        return None, f"removing it changed the outputs by {difference:.3g} (tolerance {tolerance:.3g})"
    return work, ""


@dataclass
class GraphPlan:
    """The outcome of :func:`plan_graph`."""

    groups: CoupledGroups
    remove: torch.Tensor  # bool per group: removed
    shrunk: nn.Module | None  # a copy with those groups removed (None if none)
    report: ShrinkReport


def _layer_rows(
    before: nn.Module, after: nn.Module, groups: CoupledGroups, remove: torch.Tensor
) -> list[LayerShrink]:
    removed_out = {
        p.name: tuple(int(i) for i in (~_keep(p.group_ids, remove)).nonzero().flatten())
        for p in groups.modules if p.direction == "out"
    }  # fmt: skip
    rows = []
    for name in dict.fromkeys(p.name for p in groups.modules):
        old, new = before.get_submodule(name), after.get_submodule(name)
        count_old = sum(p.numel() for p in old.parameters(recurse=False))
        count_new = sum(p.numel() for p in new.parameters(recurse=False))
        (out_old, in_old), (out_new, in_new) = _io_sizes(old), _io_sizes(new)
        if (count_old, out_old, in_old) == (count_new, out_new, in_new):
            continue
        unit = "filters" if isinstance(old, CONVS) else "channels" if isinstance(
            old, (*PER_CHANNEL_NORMS, nn.LayerNorm, nn.GroupNorm, nn.PReLU)) else "features" if isinstance(
            old, (nn.Embedding, nn.EmbeddingBag)) else "neurons"  # fmt: skip
        rows.append(LayerShrink(name, type(old).__name__, unit, out_old, out_new, removed_out.get(name, ()),
                                (), in_old, in_new, count_old, count_new))  # fmt: skip
    return rows


def _totals(model: nn.Module) -> tuple[int, int]:
    params = sum(p.numel() for p in model.parameters())
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return params, sum(t.numel() * t.element_size() for t in tensors.values())


def _keep_one_per_empty_family(
    groups: CoupledGroups, candidates: torch.Tensor, reasons: dict[int, str]
) -> None:
    """Where every group of a family is zero, keep its first one: a layer needs one channel or head.

    The kept group is zero, so the outputs stay the same; ``candidates`` is updated in place.
    """
    families = torch.tensor(groups.families, dtype=torch.int64)
    for family in families[candidates].unique().tolist():
        members = families == family
        if bool(candidates[members].all()):
            first = int(members.nonzero()[0])
            candidates[first] = False
            reasons[first] = "kept so that its layers keep one channel (every group of its family is zero)"


def plan_graph(model: nn.Module, example_input: Any, atol: float, owner: str) -> GraphPlan:
    """Trace ``model``, find its all-zero coupled groups and remove them from a checked copy."""
    groups = build_groups(model, trace_families(model, example_input, None, owner), include_blocked=True)
    zero, partial = _zero_flags(groups, model, atol)
    blocked = torch.tensor([bool(b) for b in groups.blocked], dtype=torch.bool)
    candidates = zero & ~blocked
    reasons = {int(g): groups.blocked[int(g)] for g in (zero & blocked).nonzero().flatten()}
    _keep_one_per_empty_family(groups, candidates, reasons)
    base = eval_outputs(model, example_input)
    remove = torch.zeros(groups.num_groups, dtype=torch.bool)
    shrunk = None
    if candidates.any():
        shrunk, reason = _trial(model, groups, candidates, example_input, atol, base)
        if shrunk is not None:
            remove = candidates
        else:
            families = torch.tensor(groups.families, dtype=torch.int64)
            for family in families[candidates].unique().tolist():
                trial = remove | (candidates & (families == family))
                work, reason = _trial(model, groups, trial, example_input, atol, base)
                if work is not None:
                    remove, shrunk = trial, work
                else:
                    failed = (candidates & (families == family)).nonzero().flatten().tolist()
                    reasons.update(dict.fromkeys(failed, reason))
    after = shrunk if shrunk is not None else model
    report = ShrinkReport(method="graph")
    report.params_before, report.bytes_before = _totals(model)
    report.params_after, report.bytes_after = _totals(after)
    report.layers = _layer_rows(model, after, groups, remove) if shrunk is not None else []
    sizes = groups.sizes(model)
    report.groups = [
        GroupShrink(groups.labels[g], int(sizes[g]), bool(remove[g]), reasons.get(g, ""))
        for g in zero.nonzero().flatten().tolist()
    ]  # fmt: skip
    report.max_abs_diff = _difference(base, eval_outputs(after, example_input))
    if partial.any():
        labels = [groups.labels[g] for g in partial.nonzero().flatten().tolist()]
        shown = ", ".join(labels[:5]) + (f", +{len(labels) - 5} more" if len(labels) > 5 else "")
        report.notes.append(
            f"{len(labels)} coupled group{'s are' if len(labels) > 1 else ' is'} zero only in part (some "
            "weight slices zero, other slices not: "
            f"BatchNorm entries, the other layers of a residual stream, consumers' inputs), so they stay: "
            f"{shown}. A group lasso over whole coupled groups zeroes them together."
        )
    return GraphPlan(groups, remove, shrunk, report)


def apply_plan(model: nn.Module, plan: GraphPlan, atol: float) -> None:
    """Apply a plan made on ``model`` to ``model`` itself (``inplace=True``)."""
    if plan.remove.any():
        if atol > 0:
            zero_groups_(model, plan.groups, plan.remove)
        remove_groups_(model, plan.groups, plan.remove)
