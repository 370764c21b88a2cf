"""The chain path of :func:`regtorch.shrink`, applied: the report of what goes and the new tensors.

:mod:`regtorch.sparse._shrink_plan` decides which units of a chain of layers go; this module counts
what that removes (:func:`analyze`) and slices the layers (:func:`apply`), putting a
:class:`~regtorch.SelectFeatures` in front of a first Linear whose unused inputs go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from regtorch.sparse._select_features import SelectFeatures
from regtorch.sparse._shrink_chain import LINEAR, Step, batch_norm_of, display_name, infer_shapes
from regtorch.sparse._shrink_plan import Layer, bn_keeps, new_tensors, plan_layers, units
from regtorch.sparse._shrink_report import LayerShrink, ShrinkReport

__all__ = ["ChainPlan", "analyze", "apply"]


def _numel(tensors: dict[str, torch.Tensor | None]) -> int:
    return sum(t.numel() for t in tensors.values() if t is not None)


def _make_report(model: nn.Module, layers: list[Layer], report: ShrinkReport) -> None:
    new: dict[tuple[int, str], torch.Size] = {}
    added = 0
    for layer in layers:
        module, tensors = layer.module, new_tensors(layer)
        new_weight = tensors["weight"]
        assert layer.keep is not None and new_weight is not None  # plan_layers / new_tensors set them
        for attr, tensor in tensors.items():
            if tensor is not None:
                if getattr(module, attr) is None:
                    added += tensor.numel() * tensor.element_size()
                    report.params_after += tensor.numel()
                    report.notes.append(
                        f"{display_name(layer.step.name)}: a bias is added to hold folded constants"
                    )
                new[(id(module), attr)] = tensor.shape
        removed = tuple(int(i) for i in (~layer.keep).nonzero().flatten())
        foldable = layer.out_link.foldable if layer.out_link is not None else None
        folded = tuple(i for i in removed if foldable is not None and bool(foldable[i]))
        old = {"weight": module.weight, "bias": module.bias}
        report.layers.append(LayerShrink(
            layer.step.name, layer.step.label,
            "neurons" if layer.step.kind == LINEAR else "filters",
            units(module)[0], int(layer.keep.sum()), removed, folded,
            units(module)[1], new_weight.shape[1], _numel(old), _numel(tensors),
        ))  # fmt: skip
        for step, keep, features in bn_keeps(layer):
            bn, kept = batch_norm_of(step), int(keep.sum())
            for attr in ("weight", "bias", "running_mean", "running_var"):
                if getattr(bn, attr) is not None:
                    new[(id(bn), attr)] = torch.Size([kept])
            before = sum(p.numel() for p in bn.parameters(recurse=False))
            report.layers.append(LayerShrink(
                step.name, step.label, "features" if features else "channels",
                bn.num_features, kept, tuple(int(i) for i in (~keep).nonzero().flatten()), (),
                bn.num_features, kept, before, 2 * kept if bn.affine else 0,
            ))  # fmt: skip
        if layer.keep_in is not None:
            kept, prefix = int(layer.keep_in.sum()), f"{layer.step.name}." if layer.step.name else ""
            added += kept * 8  # the int64 index of the SelectFeatures placed in front
            report.notes.append(
                f"{display_name(layer.step.name)}: {len(layer.keep_in) - kept} of its "
                f"{len(layer.keep_in)} input features are unused; a SelectFeatures in front keeps the "
                f"other {kept} (the layer moves to '{prefix}1', the index is '{prefix}0.index')"
            )
    seen: set[int] = set()
    for module in model.modules():
        for is_param, named in ((True, module.named_parameters(recurse=False)),
                                (False, module.named_buffers(recurse=False))):  # fmt: skip
            for attr, tensor in named:
                if id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                numel = new.get((id(module), attr), tensor.shape).numel()
                report.bytes_before += tensor.numel() * tensor.element_size()
                report.bytes_after += numel * tensor.element_size()
                if is_param:
                    report.params_before += tensor.numel()
                    report.params_after += numel
    report.bytes_after += added



@dataclass
class ChainPlan:
    """The layers the chain analysis planned, and its report."""

    layers: list[Layer]
    report: ShrinkReport


def analyze(
    model: nn.Module, steps: list[Step], atol: float, example_input: Any, owner: str, remove_inputs: bool
) -> ChainPlan:
    """Plan the chain's removals (shapes from ``example_input`` when given) and count them."""
    shapes: list[Any] = [None] * len(steps)
    if example_input is not None:
        shapes = infer_shapes(model, steps, example_input, owner)
    report = ShrinkReport()
    layers = plan_layers(steps, shapes, atol, owner, report.skipped, report.notes, remove_inputs)
    with torch.no_grad():
        _make_report(model, layers, report)
    return ChainPlan(layers, report)


def _wrap_inputs(model: nn.Module, layer: Layer) -> nn.Module | None:
    """Put a SelectFeatures in front of ``layer``; return the new root if the layer is the model."""
    assert layer.keep_in is not None
    index = layer.keep_in.nonzero().flatten().to(layer.module.weight.device)
    wrapped = nn.Sequential(SelectFeatures(index, in_features=len(layer.keep_in)), layer.module)
    if not layer.step.name:
        return wrapped
    parent_name, _, child = layer.step.name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, wrapped)
    return None


def apply(model: nn.Module, plan: ChainPlan) -> nn.Module:
    """Slice the planned layers of ``model`` in place; return the new root (the model, or a
    ``Sequential`` wrapping it when the model itself gets a :class:`SelectFeatures`)."""
    updates = [(layer, new_tensors(layer), bn_keeps(layer)) for layer in plan.layers]
    root = model
    for layer, tensors, norms in updates:
        module, weight = layer.module, tensors["weight"]
        assert weight is not None  # new_tensors always gives the new weight
        requires_grad = module.weight.requires_grad
        module.weight = nn.Parameter(weight.clone(), requires_grad=requires_grad)
        if tensors["bias"] is not None:
            module.bias = nn.Parameter(tensors["bias"].clone(), requires_grad=requires_grad)
        n_out, n_in = weight.shape[:2]
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = n_out, n_in
        else:
            module.out_channels, module.in_channels = n_out, n_in
        for step, keep, _ in norms:
            bn = batch_norm_of(step)
            for attr in ("weight", "bias"):
                param = getattr(bn, attr)
                if param is not None:
                    setattr(bn, attr, nn.Parameter(param.detach()[keep.to(param.device)].clone(),
                                                   requires_grad=param.requires_grad))  # fmt: skip
            for attr in ("running_mean", "running_var"):
                buffer = getattr(bn, attr)
                if buffer is not None:
                    setattr(bn, attr, buffer[keep.to(buffer.device)].clone())
            bn.num_features = int(keep.sum())
    for layer in plan.layers:
        if layer.keep_in is not None:
            root = _wrap_inputs(model, layer) or root
    return root
