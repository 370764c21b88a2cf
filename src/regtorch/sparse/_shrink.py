"""Structured shrinking: remove dead neurons and filters after sparse training.

:func:`shrink_report` analyses a model and :func:`shrink` applies the very same analysis
(:mod:`regtorch.sparse._shrink_plan`, which documents exactly what is removed and why outputs stay the
same) to a copy of the model, or to the model itself.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from regtorch._validation import Interval, check_real
from regtorch.regularizer._selection import unwrap_model
from regtorch.sparse._shrink_chain import LINEAR, display_name, extract_steps, infer_shapes
from regtorch.sparse._shrink_plan import Layer, bn_keeps, new_tensors, plan_layers, units

__all__ = ["LayerShrink", "ShrinkReport", "shrink", "shrink_report"]


@dataclass(frozen=True)
class LayerShrink:
    """What shrinking does to one layer.

    Attributes:
        name: Qualified module name (``""`` for a model that is a single layer).
        type: Module type name (``"Linear"``, ``"Conv2d"``, ``"BatchNorm1d"``...).
        unit: What a unit is: ``"neurons"`` (Linear), ``"filters"`` (convolutions),
            ``"channels"`` or ``"features"`` (BatchNorm before or after a ``Flatten``).
        units_before: Output units before shrinking.
        units_after: Output units after shrinking.
        removed: Indices (in the original layer) of the removed output units.
        folded: The removed units whose constant output was added to the next layer's bias.
        inputs_before: Input units (features / channels) before shrinking.
        inputs_after: Input units after shrinking.
        params_before: Parameters of this layer before shrinking.
        params_after: Parameters of this layer after shrinking.
    """

    name: str
    type: str
    unit: str
    units_before: int
    units_after: int
    removed: tuple[int, ...]
    folded: tuple[int, ...]
    inputs_before: int
    inputs_after: int
    params_before: int
    params_after: int


@dataclass
class ShrinkReport:
    """What :func:`shrink` removes from a model (see :func:`shrink_report`).

    Attributes:
        layers: One entry per weight layer of the analysed chain and per BatchNorm between two
            of them, in forward order.
        params_before: Parameters of the whole model (shared ones once).
        params_after: Parameters after shrinking.
        bytes_before: Bytes of all parameters and buffers stored densely.
        bytes_after: The same after shrinking.
        skipped: What could not be shrunk, and why; those parts are left unchanged.
        notes: Other remarks (a unit kept so that a layer is not empty, a bias added to hold
            folded constants).
    """

    layers: list[LayerShrink] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def removed_units(self) -> int:
        """Output units removed from the weight layers (BatchNorm entries not counted)."""
        return sum(len(x.removed) for x in self.layers if x.unit in ("neurons", "filters"))

    def format(self, max_indices: int = 8) -> str:
        """Return a readable text table.

        Args:
            max_indices: How many removed indices to print per layer before ``+N more``.
        """
        rows = [("layer", "type", "units", "removed", "inputs", "params")]
        for x in self.layers:
            shown = ", ".join(str(i) for i in x.removed[:max_indices])
            extra = len(x.removed) - max_indices
            removed = f"[{shown}{f', +{extra} more' if extra > 0 else ''}]" if x.removed else "-"
            rows.append((
                x.name or "(model)", x.type, f"{x.unit} {x.units_before} -> {x.units_after}",
                removed, f"{x.inputs_before} -> {x.inputs_after}",
                f"{x.params_before:,} -> {x.params_after:,}",
            ))  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        saved = 1 - self.params_after / self.params_before if self.params_before else 0.0
        lines.append(
            f"total: params {self.params_before:,} -> {self.params_after:,} ({saved:.1%} fewer), "
            f"bytes {self.bytes_before:,} -> {self.bytes_after:,}"
        )
        for title, items in (("skipped", self.skipped), ("notes", self.notes)):
            if items:
                lines.append(f"{title}:")
                lines.extend(f"  - {item}" for item in items)
        return "\n".join(lines)


def _numel(tensors: dict[str, torch.Tensor | None]) -> int:
    return sum(t.numel() for t in tensors.values() if t is not None)


def _make_report(model: nn.Module, layers: list[Layer], report: ShrinkReport) -> None:
    new: dict[tuple[int, str], torch.Size] = {}
    added = 0
    for layer in layers:
        module, tensors = layer.module, new_tensors(layer)
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
            units(module)[1], tensors["weight"].shape[1], _numel(old), _numel(tensors),
        ))  # fmt: skip
        for step, keep, features in bn_keeps(layer):
            bn, kept = step.module, int(keep.sum())
            for attr in ("weight", "bias", "running_mean", "running_var"):
                if getattr(bn, attr) is not None:
                    new[(id(bn), attr)] = torch.Size([kept])
            before = sum(p.numel() for p in bn.parameters(recurse=False))
            report.layers.append(LayerShrink(
                step.name, step.label, "features" if features else "channels",
                bn.num_features, kept, tuple(int(i) for i in (~keep).nonzero().flatten()), (),
                bn.num_features, kept, before, 2 * kept if bn.affine else 0,
            ))  # fmt: skip
    seen: set[int] = set()
    for module in model.modules():
        for group in (module._parameters, module._buffers):
            for attr, tensor in group.items():
                if tensor is None or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                numel = new.get((id(module), attr), tensor.shape).numel()
                report.bytes_before += tensor.numel() * tensor.element_size()
                report.bytes_after += numel * tensor.element_size()
                if group is module._parameters:
                    report.params_before += tensor.numel()
                    report.params_after += numel
    report.bytes_after += added


def _check_args(model: Any, atol: Any, example_input: Any, owner: str) -> float:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"The 'model' argument of {owner} must be an nn.Module; got {type(model).__name__}."
        )
    atol = check_real(owner, "atol", atol, Interval(low=0))
    if example_input is not None and not isinstance(example_input, torch.Tensor):
        raise TypeError(
            f"The 'example_input' argument of {owner} must be a tensor (one batch of inputs) or "
            f"None; got {type(example_input).__name__}."
        )
    return atol


@dataclass
class _Plan:
    layers: list[Layer]
    report: ShrinkReport


def _analyze(model: nn.Module, atol: float, example_input: Any, owner: str) -> _Plan:
    steps = extract_steps(model)
    shapes: list[Any] = [None] * len(steps)
    if example_input is not None:
        shapes = infer_shapes(model, steps, example_input, owner)
    report = ShrinkReport()
    layers = plan_layers(steps, shapes, atol, owner, report.skipped, report.notes)
    with torch.no_grad():
        _make_report(model, layers, report)
    return _Plan(layers, report)


def shrink_report(
    model: nn.Module, *, atol: float = 0.0, example_input: torch.Tensor | None = None
) -> ShrinkReport:
    """Report which neurons and filters :func:`shrink` would remove, without changing the model.

    Args:
        model: The model to analyse.
        atol: Weights with ``|w| <= atol`` count as zero.
        example_input: One batch of inputs, as for :func:`shrink`: required when a ``Flatten``
            follows a convolution, optional otherwise (it then checks the layouts the analysis
            assumes).

    Returns:
        A :class:`ShrinkReport`; ``report.format()`` prints it as a table.

    Raises:
        TypeError: If ``model`` is not a module or ``example_input`` not a tensor.
        ValueError: If ``atol`` is negative or not finite, or ``example_input`` is needed but
            missing, or the model cannot run it.
    """
    atol = _check_args(model, atol, example_input, "shrink_report")
    return _analyze(unwrap_model(model), atol, example_input, "shrink_report").report


def _apply(plan: _Plan) -> None:
    updates = [(layer, new_tensors(layer), bn_keeps(layer)) for layer in plan.layers]
    for layer, tensors, norms in updates:
        module = layer.module
        requires_grad = module.weight.requires_grad
        module.weight = nn.Parameter(tensors["weight"].clone(), requires_grad=requires_grad)
        if tensors["bias"] is not None:
            module.bias = nn.Parameter(tensors["bias"].clone(), requires_grad=requires_grad)
        n_out, n_in = tensors["weight"].shape[:2]
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = n_out, n_in
        else:
            module.out_channels, module.in_channels = n_out, n_in
        for step, keep, _ in norms:
            bn = step.module
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


def shrink(
    model: nn.Module,
    *,
    inplace: bool = False,
    atol: float = 0.0,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """Remove dead neurons and filters; the smaller model computes the same outputs.

    Walks the model's chain of layers (``nn.Sequential``, nested too, or a module that
    ``torch.fx`` traces into a simple chain) and, between two consecutive weight layers ``P``
    and ``Q`` (``nn.Linear`` or ``nn.Conv1d/2d/3d`` with ``groups=1``), removes output unit ``j``
    of ``P`` (a row of a Linear weight, a filter of a convolution, with its bias entry), the
    inputs of ``Q`` it feeds (column ``j``, input channel ``j``, or the block of features a
    ``Flatten`` makes of channel ``j``) and its entries in any BatchNorm in between, when:

    * **the unit is constant** — all its weights on non-constant inputs are zero (``|w| <=
      atol``), so its output is its bias plus what constant inputs give it, whatever the input.
      Activations and BatchNorm (running statistics) map that constant to another constant
      ``v``, and ``Q`` then always receives ``W_Q[:, j] · v`` (summed over the kernel for a
      convolution), which is added to ``Q``'s bias (a bias is created if ``Q`` has none). A
      zero-padded convolution ``Q`` sees ``0`` at its borders instead of ``v``, so there only
      constants with ``v == 0`` are removed. An all-zero unit is the special case ``v = act(0)``.
    * **the unit is unused** — ``Q``'s weights on it are zero in every kept output of ``Q``,
      so nothing it computes reaches the next layer.

    The outputs are therefore unchanged (exactly, up to floating-point rounding of the folded
    bias, when ``atol == 0``; when ``atol > 0`` weights below it are dropped). The last layer's
    outputs, the first layer's inputs and the units next to anything that is not looked through
    (residual connections, grouped convolutions, unknown layers...) are kept; those parts are
    listed in :func:`shrink_report`'s ``skipped``. Outputs are preserved in eval mode
    (BatchNorm with running statistics, dropout as identity); training flags are not changed.
    Parameters are replaced by new, smaller ``nn.Parameter`` objects, so create the optimizer
    after shrinking.

    Args:
        model: The model to shrink.
        inplace: Modify ``model`` itself instead of a deep copy.
        atol: Weights with ``|w| <= atol`` count as zero.
        example_input: One batch of inputs, run once through the model in eval mode to learn
            the tensor shapes. Required when a ``Flatten`` follows a convolution (to know which
            block of features each filter becomes). Without it, a Linear followed by a
            BatchNorm or ``Flatten`` is assumed to produce 2-D ``(batch, features)`` outputs;
            pass it to have that checked.

    Returns:
        The shrunk model (``model`` itself when ``inplace``).

    Raises:
        TypeError: If ``model`` is not a module, ``inplace`` not a bool or ``example_input``
            not a tensor.
        ValueError: If ``atol`` is negative or not finite, or ``example_input`` is needed but
            missing, or the model cannot run it.
        RuntimeError: If ``inplace=False`` and the model cannot be deep-copied.

    Examples:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> with torch.no_grad():
        ...     model[0].weight[:5] = 0
        ...     model[0].bias[:5] = 0
        >>> shrink(model)[0].out_features
        3
    """
    if not isinstance(inplace, bool):
        raise TypeError(
            f"The 'inplace' argument of shrink must be a bool; got {inplace!r} of type "
            f"{type(inplace).__name__}."
        )
    atol = _check_args(model, atol, example_input, "shrink")
    target = unwrap_model(model)
    if not inplace:
        try:
            target = copy.deepcopy(target)
        except RuntimeError as error:
            raise RuntimeError(
                f"shrink could not deep-copy the model ({error}); pass inplace=True to shrink the "
                "model itself."
            ) from error
    _apply(_analyze(target, atol, example_input, "shrink"))
    return model if inplace else target
