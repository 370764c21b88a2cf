"""The analysis behind :func:`regtorch.shrink`: which units of a chain of layers can go.

The model is read as a chain of layers (see :mod:`regtorch.sparse._shrink_chain`); between two
consecutive weight layers *P* (``nn.Linear`` / ``nn.ConvNd``) and *Q* only channel-wise
operations may occur (BatchNorm, element-wise activations, dropout, max/average pooling,
``Flatten``), so output unit ``j`` of *P* reaches *Q* only through *Q*'s inputs for ``j`` (its
column ``j``, its input channel ``j``, or the block of features ``Flatten`` makes of channel
``j``).

Unit ``j`` of *P* is removed, together with *Q*'s inputs for it and its entries in the
BatchNorm layers in between, when

* it is **constant**: its weights on every non-constant input are zero (``|w| <= atol``), so it
  outputs the same value ``c`` for every input (its bias plus what constant inputs contribute).
  The operations in between map ``c`` to a known constant ``v`` (computed by running them on
  ``c``), and *Q*'s output gains exactly ``W_Q[:, j] · v`` (summed over the kernel for a
  convolution), which is added to *Q*'s bias. A zero-padded convolution *Q* sees zeros at its
  borders instead of ``v``, so there only constants with ``v == 0`` are removed; or
* it is **unused**: *Q*'s weights on it are zero in every output of *Q* that is kept.

Removing a unit can make units of neighbouring layers constant or unused; one forward pass
(constants) and one backward pass (unused units) find them all. Outputs of the last layer (the
model's outputs), inputs of the first layer and anything next to an unsupported operation are
never removed. Outputs are preserved in eval mode (BatchNorm uses its running statistics, dropout
is the identity).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regtorch.sparse._shrink_chain import (
    BARRIER,
    BATCHNORM,
    CONV,
    DROPOUT,
    ELEMENTWISE,
    FLATTEN,
    LINEAR,
    POOL,
    Step,
    batch_norm_of,
    display_name,
)

__all__ = ["Layer", "Link", "bn_keeps", "new_tensors", "plan_layers", "units"]


@dataclass
class Layer:
    """A weight layer of the chain and what the analysis found (masks and values on the CPU)."""

    step: Step
    module: Any  # nn.Linear or a convolution
    in_link: Link | None = None
    out_link: Link | None = None
    out_const: torch.Tensor | None = None  # bool per output unit
    out_vals: torch.Tensor | None = None  # float64 constant value per output unit
    keep: torch.Tensor | None = None  # bool per output unit
    keep_in: torch.Tensor | None = None  # bool per input feature, when unused inputs are selected away


@dataclass
class Link:
    """Two consecutive weight layers and the channel-wise operations between them."""

    src: Layer
    dst: Layer
    ops: list[tuple[Step, tuple[int, ...], torch.Tensor | None]]  # step, view, unit->channel
    unit_channel: torch.Tensor | None
    foldable: torch.Tensor | None = None  # bool per channel of src
    unit_vals: torch.Tensor | None = None  # float64 per input unit of dst


@dataclass
class _Open:
    """The operations seen so far after the last weight layer."""

    src: Layer
    layout: str  # "flat" (2-D), "last" (features last, N-D), "channels" (conv), "unknown"
    units: int
    ops: list[tuple[Step, tuple[int, ...], torch.Tensor | None]] = field(default_factory=list)
    unit_channel: torch.Tensor | None = None

    def view(self) -> tuple[int, ...]:
        dims = self.src.step.dims if self.layout == "channels" else 0
        return (1, self.units) + (1,) * dims


def units(module: Any) -> tuple[int, int]:
    """Return ``(outputs, inputs)`` of a Linear (features) or a convolution (channels)."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    return module.out_channels, module.in_channels


def _zero_padded(conv: Any) -> bool:
    if conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(k > 1 for k in conv.kernel_size)
    return any(p > 0 for p in conv.padding)


def _open(layer: Layer, shape: torch.Size | None) -> _Open:
    n_out = units(layer.module)[0]
    if layer.step.kind == LINEAR:
        layout = "flat" if shape is None or len(shape) == 2 else "last"
    else:
        layout = "channels" if shape is None or len(shape) == layer.step.dims + 2 else "unknown"
    return _Open(layer, layout, n_out)


def _add_op(seg: _Open, step: Step, in_shape: torch.Size | None, owner: str) -> str:
    """Record a channel-wise op in the open segment; return why it breaks the chain, or ''."""
    src = display_name(seg.src.step.name)
    where = f"{display_name(step.name)} ({step.label})"
    if step.kind in (ELEMENTWISE, DROPOUT):
        seg.ops.append((step, seg.view(), None))
    elif step.kind == BATCHNORM:
        if seg.layout not in ("flat", "channels") or batch_norm_of(step).num_features != seg.units:
            return f"{where} does not normalize the units of {src}; they are kept"
        seg.ops.append((step, seg.view(), seg.unit_channel))
    elif step.kind == POOL:
        if seg.layout != "channels" or step.dims != seg.src.step.dims:
            return f"{where} does not pool the channels of {src} one by one; they are kept"
        seg.ops.append((step, seg.view(), None))
    elif step.kind == FLATTEN and seg.layout != "flat":
        if seg.layout == "unknown":
            return f"{where}: the layout of the output of {src} is unknown; its units are kept"
        if in_shape is None:
            raise ValueError(
                f"The 'example_input' argument of {owner} is required for this model: {where} "
                f"follows {src} ({seg.src.step.label}), and the size of the flattened output is "
                "needed to map its units to the features of the next layer; pass one batch of "
                "inputs, e.g. example_input=torch.randn(1, ...); got None."
            )
        per_sample = in_shape[1:]
        axis = 0 if seg.layout == "channels" else len(per_sample) - 1
        ids = torch.arange(per_sample[axis]).view([-1 if d == axis else 1 for d in
                                                    range(len(per_sample))])  # fmt: skip
        seg.unit_channel = ids.expand(per_sample).reshape(-1)
        seg.layout, seg.units = "flat", seg.unit_channel.numel()
        seg.ops.append((step, seg.view(), seg.unit_channel))
    return ""


def _link(seg: _Open, layer: Layer) -> str:
    """Link the open segment to the next weight layer; return why it cannot be, or ''."""
    n_in = units(layer.module)[1]
    if layer.step.kind == LINEAR:
        ok = seg.layout in ("flat", "last")
    else:
        ok = seg.layout == "channels" and seg.src.step.dims == layer.step.dims
    if not ok or n_in != seg.units:
        return (
            f"{display_name(layer.step.name)} ({layer.step.label}) does not take the units of "
            f"{display_name(seg.src.step.name)} ({seg.src.step.label}) as its inputs; they are kept"
        )
    link = Link(seg.src, layer, seg.ops, seg.unit_channel)
    seg.src.out_link = layer.in_link = link
    return ""


def _build(steps: list[Step], shapes: list[Any], owner: str, skipped: list[str]) -> list[Layer]:
    layers: list[Layer] = []
    seg: _Open | None = None
    for index, step in enumerate(steps):
        if step.kind == BARRIER:
            skipped.append(step.reason)
            seg = None
        elif step.kind in (LINEAR, CONV):
            layer = Layer(step, step.module)
            if seg is not None and (reason := _link(seg, layer)):
                skipped.append(reason)
            layers.append(layer)
            seg = _open(layer, shapes[index])
        elif seg is not None:
            in_shape = shapes[index - 1] if index > 0 else None
            if reason := _add_op(seg, step, in_shape, owner):
                skipped.append(reason)
                seg = None
    return layers


def _flat_weight(module: Any) -> torch.Tensor:
    """The weight on the CPU as (outputs, inputs, kernel elements)."""
    weight = module.weight.detach().cpu()
    return weight.reshape(weight.shape[0], weight.shape[1], -1)


def _per_channel(unit_flags: torch.Tensor, link: Link, n_channels: int) -> torch.Tensor:
    """A channel is flagged when all its units are."""
    if link.unit_channel is None:
        return unit_flags
    flags = torch.ones(n_channels, dtype=torch.bool)
    flags[link.unit_channel[~unit_flags]] = False
    return flags


def _per_unit(channel_flags: torch.Tensor, link: Link | None) -> torch.Tensor:
    if link is None or link.unit_channel is None:
        return channel_flags
    return channel_flags[link.unit_channel]


def _propagate(link: Link, atol: float) -> None:
    """Carry the constant outputs of ``link.src`` through the ops to the inputs of ``link.dst``."""
    src = link.src
    assert src.out_const is not None and src.out_vals is not None  # _forward reached src first
    const = src.out_const.clone()
    vals = torch.where(const, src.out_vals, 0.0).to(src.module.weight.dtype)
    for step, view, unit_channel in link.ops:
        if step.kind == FLATTEN:
            const, vals = const[unit_channel], vals[unit_channel]
        elif step.kind == BATCHNORM:
            bn = batch_norm_of(step)
            if bn.running_mean is None:
                const = torch.zeros_like(const)
                continue
            x = vals.reshape(view).to(bn.running_mean)
            vals = F.batch_norm(
                x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            ).reshape(-1).cpu()
        elif step.kind == POOL and not step.keeps_constants:
            const = const & (vals == 0)
        elif step.kind == ELEMENTWISE:
            param = next(step.module.parameters(), None) if step.module is not None else None
            x = vals.reshape(view).clone() if param is None else vals.reshape(view).to(param)
            vals = step.fn(x).reshape(-1).cpu()
    n_channels = units(src.module)[0]
    const_ch = _per_channel(const, link, n_channels)
    if link.dst.step.kind == CONV and _zero_padded(link.dst.module):
        const_ch = const_ch & _per_channel(vals.abs() <= atol, link, n_channels)
    link.foldable = const_ch
    link.unit_vals = vals.detach().to(torch.float64)


def _fold(layer: Layer, units: torch.Tensor) -> torch.Tensor:
    """What the constant input ``units`` add to each output of ``layer`` (float64)."""
    weight = _flat_weight(layer.module).to(torch.float64)[:, units].sum(dim=2)
    assert layer.in_link is not None and layer.in_link.unit_vals is not None
    return weight @ layer.in_link.unit_vals[units]


def _forward(layers: list[Layer], atol: float) -> None:
    for layer in layers:
        n_out, n_in = units(layer.module)
        const_units = torch.zeros(n_in, dtype=torch.bool)
        if layer.in_link is not None:
            _propagate(layer.in_link, atol)
            assert layer.in_link.foldable is not None  # set by _propagate
            const_units = _per_unit(layer.in_link.foldable, layer.in_link)
        zero = _flat_weight(layer.module).abs() <= atol
        layer.out_const = zero[:, ~const_units].flatten(1).all(dim=1)
        bias = layer.module.bias
        vals = torch.zeros(n_out, dtype=torch.float64)
        if bias is not None:
            vals = vals + bias.detach().cpu().to(torch.float64)
        if const_units.any():
            vals = vals + _fold(layer, const_units)
        layer.out_vals = vals


def _backward(layers: list[Layer], atol: float, notes: list[str]) -> None:
    for layer in reversed(layers):
        n_out = units(layer.module)[0]
        link = layer.out_link
        if link is None:
            layer.keep = torch.ones(n_out, dtype=torch.bool)
            continue
        dst = link.dst
        assert dst.keep is not None and link.foldable is not None  # dst came first here; _forward ran
        zero = _flat_weight(dst.module)[dst.keep].abs() <= atol
        unused = _per_channel(zero.all(dim=2).all(dim=0), link, n_out)
        layer.keep = ~(unused | link.foldable)
        if not layer.keep.any():
            layer.keep[0] = True
            notes.append(
                f"{display_name(layer.step.name)}: every unit is removable; unit 0 is kept so "
                "that the layer is not empty"
            )


def _select_inputs(layers: list[Layer], atol: float, notes: list[str]) -> None:
    """Mark the unused input features of Linear layers whose inputs are not otherwise shrunk."""
    for layer in layers:
        if layer.step.kind != LINEAR or layer.in_link is not None:
            continue
        used = (_flat_weight(layer.module)[layer.keep].abs() > atol).flatten(2).any(dim=2).any(dim=0)
        if used.all():
            continue
        if not used.any():
            used[0] = True
            notes.append(
                f"{display_name(layer.step.name)}: every input feature is unused; feature 0 is kept so "
                "that the layer is not empty"
            )
        layer.keep_in = used


def new_tensors(layer: Layer) -> dict[str, torch.Tensor | None]:
    """The layer's new weight and bias."""
    module, link = layer.module, layer.in_link
    assert layer.keep is not None  # set on every layer by plan_layers
    n_in = units(module)[1]
    keep_in = torch.ones(n_in, dtype=torch.bool) if layer.keep_in is None else layer.keep_in
    fold_in = torch.zeros(n_in, dtype=torch.bool)
    if link is not None:
        assert link.src.keep is not None and link.foldable is not None  # set by plan_layers
        keep_in = _per_unit(link.src.keep, link)
        fold_in = _per_unit(link.foldable & ~link.src.keep, link)
    device = module.weight.device
    keep = layer.keep.to(device)
    weight = module.weight.detach()[keep][:, keep_in.to(device)]
    bias = None if module.bias is None else module.bias.detach()[keep]
    if fold_in.any():
        fold = _fold(layer, fold_in)[layer.keep].to(device)
        if bias is not None:
            bias = (bias.to(torch.float64) + fold).to(module.bias.dtype)
        elif bool((fold != 0).any()):
            bias = fold.to(module.weight.dtype)
    return {"weight": weight, "bias": bias}


def bn_keeps(layer: Layer) -> list[tuple[Step, torch.Tensor, bool]]:
    """Each BatchNorm after ``layer``: which of its units stay, and whether they are features."""
    link = layer.out_link
    if link is None:
        return []
    assert layer.keep is not None  # set on every layer by plan_layers
    return [
        (step, layer.keep if unit_channel is None else layer.keep[unit_channel],
         unit_channel is not None)
        for step, _, unit_channel in link.ops
        if step.kind == BATCHNORM
    ]  # fmt: skip


def plan_layers(
    steps: list[Step], shapes: list[Any], atol: float, owner: str, skipped: list[str],
    notes: list[str], remove_inputs: bool = False,
) -> list[Layer]:
    """Link the weight layers of the chain and decide which units of each stay.

    Args:
        steps: The chain (see :func:`regtorch.sparse._shrink_chain.extract_steps`).
        shapes: The output shape of each step, or ``None`` entries when unknown.
        atol: Weights with ``|w| <= atol`` count as zero.
        owner: The public function, for messages.
        skipped: Receives what is not shrunk, and why.
        notes: Receives other remarks.
        remove_inputs: Also mark the all-zero input columns of Linear layers whose inputs are
            not linked to a previous layer (the model's first Linear, or one after a barrier).

    Returns:
        The weight layers in forward order, each with its ``keep`` mask of output units.
    """
    with torch.no_grad():
        layers = _build(steps, shapes, owner, skipped)
        _forward(layers, atol)
        _backward(layers, atol, notes)
        if remove_inputs:
            _select_inputs(layers, atol, notes)
    return layers
