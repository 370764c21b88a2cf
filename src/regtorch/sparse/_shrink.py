"""Structured shrinking: remove dead neurons, filters, channels and heads after sparse training.

One entry point, two analyses:

* the **chain** path (:mod:`regtorch.sparse._shrink_plan`, which documents exactly what is removed
  and why outputs stay the same) reads a model as a chain of layers and also folds constant units
  into the next layer's bias;
* the **graph** path (:mod:`regtorch.sparse._shrink_graph`) traces any model with Torch-Pruning and
  removes its all-zero coupled groups, checking the outputs on ``example_input``.

:func:`shrink_report` analyses a model and :func:`shrink` applies the very same analysis to a copy
of the model, or to the model itself.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from regtorch._validation import Interval, check_real
from regtorch.regularizer._selection import unwrap_model
from regtorch.sparse import _shrink_chain_apply as _chain_apply
from regtorch.sparse._dependency import check_example_input
from regtorch.sparse._dependency_trace import import_torch_pruning
from regtorch.sparse._shrink_chain import (
    BARRIER,
    Step,
    display_name,
    extract_steps,
)
from regtorch.sparse._shrink_graph import apply_plan, copy_model, plan_graph
from regtorch.sparse._shrink_report import ShrinkReport

__all__ = ["shrink", "shrink_report"]

METHODS = ("auto", "chain", "graph")
_INPLACE_HINT = "pass inplace=True to shrink the model itself"


def _check_args(model: Any, atol: Any, example_input: Any, owner: str) -> float:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"The 'model' argument of {owner} must be an nn.Module; got {type(model).__name__}."
        )
    atol = check_real(owner, "atol", atol, Interval(low=0))
    if example_input is not None:
        check_example_input(example_input, owner)
    return atol


def _check_flag(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(
            f"The {name!r} argument of {owner} must be a bool; got {value!r} of type {type(value).__name__}."
        )
    return value


def _choose(
    model: nn.Module, example_input: Any, method: Any, owner: str
) -> tuple[str, list[Step], list[str]]:
    """Pick the path (see :func:`shrink`); return it, the chain's steps and notes for the report."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"The 'method' argument of {owner} must be one of {METHODS}; got {method!r}.")
    is_tensor = example_input is None or isinstance(example_input, torch.Tensor)
    if method == "graph" or (method == "auto" and not is_tensor):
        if example_input is None:
            raise ValueError(
                f"The 'example_input' argument of {owner} is required with method='graph': the model is "
                "traced on one batch of inputs; got None."
            )
        import_torch_pruning(owner)
        return "graph", [], []
    if not is_tensor:
        raise TypeError(
            f"The 'example_input' argument of {owner} must be a tensor with method='chain'; got "
            f"{type(example_input).__name__}."
        )
    steps = extract_steps(model)
    structural = [s for s in steps if s.kind == BARRIER and s.structural]
    if method == "chain" or not structural:
        return "chain", steps, []
    where = ", ".join(display_name(s.name) for s in structural[:3])
    if example_input is None:
        return "chain", steps, [
            f"{where}: pass example_input (one batch of inputs) to shrink across residual connections and "
            "branches with the dependency graph (needs torch-pruning: pip install \"regtorch[prune]\")"
        ]
    try:
        import_torch_pruning(owner)
    except ImportError as error:
        message = (
            f"{owner}: {where} is not a chain of layers (a residual connection or branch), which only the "
            f"dependency-graph path shrinks, and torch-pruning is missing ({error}); only the chain "
            "parts around it are shrunk."
        )
        warnings.warn(message, UserWarning, stacklevel=3)
        return "chain", steps, [message]
    return "graph", steps, []


def shrink_report(
    model: nn.Module,
    *,
    atol: float = 0.0,
    example_input: Any = None,
    method: str = "auto",
    remove_inputs: bool = False,
) -> ShrinkReport:
    """Report what :func:`shrink` would remove, and what it keeps and why, without changing the model.

    Args:
        model: The model to analyse.
        atol: Weights with ``|w| <= atol`` count as zero.
        example_input: One batch of inputs, as for :func:`shrink`.
        method: ``"auto"``, ``"chain"`` or ``"graph"``, as for :func:`shrink`.
        remove_inputs: As for :func:`shrink`.

    Returns:
        A :class:`ShrinkReport`; ``report.format()`` prints it as a table.

    Raises:
        TypeError: If ``model`` is not a module or ``example_input`` not a tensor (tuple, dict).
        ValueError: If ``atol`` is negative or not finite, ``method`` unknown, or ``example_input``
            is needed but missing, or the model cannot run it.
        ImportError: If ``method="graph"`` and torch-pruning is missing.
    """
    atol = _check_args(model, atol, example_input, "shrink_report")
    remove_inputs = _check_flag("shrink_report", "remove_inputs", remove_inputs)
    target = unwrap_model(model)
    method, steps, notes = _choose(target, example_input, method, "shrink_report")
    if method == "graph":
        report = plan_graph(target, example_input, atol, "shrink_report").report
    else:
        plan = _chain_apply.analyze(target, steps, atol, example_input, "shrink_report", remove_inputs)
        report = plan.report
    report.notes.extend(notes)
    return report


def _kept_warning(report: ShrinkReport) -> None:
    kept = report.kept_groups
    if kept:
        example = kept[0]
        warnings.warn(
            f"shrink kept {len(kept)} all-zero coupled group(s), e.g. {example.label!r}: {example.reason}. "
            "shrink_report(...).format() (or shrink(..., return_report=True)) lists them all.",
            UserWarning,
            stacklevel=3,
        )


def shrink(
    model: nn.Module,
    *,
    inplace: bool = False,
    atol: float = 0.0,
    example_input: Any = None,
    method: str = "auto",
    remove_inputs: bool = False,
    return_report: bool = False,
) -> Any:
    """Remove dead neurons, filters, channels and attention heads; the smaller model gives the same outputs.

    **Which path runs.** With ``method="auto"`` (default) the model is first read as a chain of
    layers (``nn.Sequential``, nested too, or a module that ``torch.fx`` traces into a simple chain).
    The *graph* path runs when ``example_input`` is given and some module is not such a chain (a
    residual connection, a branch, several inputs, or a module ``torch.fx`` cannot trace, e.g.
    Hugging Face models), or when ``example_input`` is a tuple or dict; otherwise the *chain* path
    runs. ``method="chain"`` / ``"graph"`` force one; the report's ``method`` says which ran.

    **Chain path.** Between two consecutive weight layers ``P`` and ``Q`` (``nn.Linear`` or
    ``nn.Conv1d/2d/3d`` with ``groups=1``), output unit ``j`` of ``P`` (a row of a Linear weight, a
    filter of a convolution, with its bias entry), the inputs of ``Q`` it feeds (column ``j``, input
    channel ``j``, or the block of features a ``Flatten`` makes of channel ``j``) and its entries in
    any BatchNorm in between are removed when:

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
    outputs, the first layer's inputs (unless ``remove_inputs``) and the units next to anything
    that is not looked through (residual connections, grouped convolutions, unknown layers...)
    are kept; those parts are listed in the report's ``skipped``.

    **Graph path** (needs ``pip install "regtorch[prune]"``). The model is traced once on
    ``example_input`` with Torch-Pruning's dependency graph into coupled groups: a channel with
    every layer writing into it (all the convolutions adding into one residual stream, their
    BatchNorms) and every layer reading it, an MLP hidden unit, an attention head. Every group whose
    slices are all zero (``|w| <= atol``) is removed, except those that cannot go without changing
    the outputs: a LayerNorm normalises over it (the hidden size of a transformer), a grouped
    convolution, a layer type shrink does not slice. The shrunk copy then runs ``example_input`` in
    eval mode and must give the original outputs within ``tol·max(1, max|y|)`` (``tol`` = 1e-10 for
    float64, 1e-4 for float32); if not, the groups are tried family by family (one coupled set, or
    the heads of one attention layer) and a family that changes the outputs is kept, with the
    difference as its reason. Kept zero groups are listed in the report (and a warning says so);
    groups that are zero only in part (a zero filter whose BatchNorm entries or residual partners
    are not) are counted in its notes. The model's outputs and inputs are never removed; constants
    are not folded (only the chain path does that). Attention modules get their head counts
    (``num_heads``, ``num_attention_heads``, ``all_head_size``, ``split_size``) updated; a Hugging
    Face model's ``config`` is left as it was, so save a shrunk model with ``torch.save`` or its
    ``state_dict`` (not ``save_pretrained``).

    Both paths preserve outputs in eval mode (BatchNorm with running statistics, dropout as
    identity); training flags are not changed. Parameters are replaced by new, smaller
    ``nn.Parameter`` objects (same ``requires_grad``; tied parameters stay tied), so create the
    optimizer after shrinking.

    Args:
        model: The model to shrink.
        inplace: Modify ``model`` itself instead of a deep copy (the graph path still checks each
            removal on a copy first). With ``remove_inputs``, a model that is itself the Linear to
            wrap is returned wrapped, not modified.
        atol: Weights with ``|w| <= atol`` count as zero.
        example_input: One batch of inputs, run once through the model in eval mode: a tensor, or
            (graph path) a tuple of positional inputs or a dict of keyword inputs. The chain path
            uses it to learn tensor shapes: required when a ``Flatten`` follows a convolution;
            without it, a Linear followed by a BatchNorm or ``Flatten`` is assumed to produce 2-D
            ``(batch, features)`` outputs.
        method: ``"auto"``, ``"chain"`` or ``"graph"`` (see above).
        remove_inputs: Chain path: also remove the input features of the first Linear layer (and
            of any Linear right after a part shrink does not look through) whose columns are all
            zero, placing a :class:`regtorch.SelectFeatures` in front of it, so the model still
            takes the same inputs (an MNIST image through ``Flatten``). This changes the model's
            structure: the Linear at ``name`` becomes ``nn.Sequential(SelectFeatures, Linear)``,
            so its parameters move from ``name.weight`` to ``name.1.weight`` and the index is
            ``name.0.index``. Off by default so that ``state_dict`` keys never change silently.
        return_report: Return ``(model, report)``: the :class:`ShrinkReport` of what was done
            (the graph path then traces the model only once).

    Returns:
        The shrunk model (``model`` itself when ``inplace``), or ``(model, report)``.

    Raises:
        TypeError: If ``model`` is not a module, a flag not a bool or ``example_input`` of the
            wrong type.
        ValueError: If ``atol`` is negative or not finite, ``method`` unknown, or
            ``example_input`` is needed but missing, or the model cannot run it.
        ImportError: If ``method="graph"`` and torch-pruning is missing.
        RuntimeError: If the model cannot be deep-copied (pass ``inplace=True`` on the chain
            path).

    Examples:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> with torch.no_grad():
        ...     model[0].weight[:5] = 0
        ...     model[0].bias[:5] = 0
        >>> shrink(model)[0].out_features
        3
    """
    inplace = _check_flag("shrink", "inplace", inplace)
    remove_inputs = _check_flag("shrink", "remove_inputs", remove_inputs)
    return_report = _check_flag("shrink", "return_report", return_report)
    atol = _check_args(model, atol, example_input, "shrink")
    original = unwrap_model(model)
    method, steps, notes = _choose(original, example_input, method, "shrink")
    if method == "graph":
        plan = plan_graph(original, example_input, atol, "shrink")
        if remove_inputs:
            notes.append("remove_inputs applies to the chain path only; no input feature was removed")
        if inplace:
            apply_plan(original, plan, atol)
            result = model
        else:
            result = plan.shrunk if plan.shrunk is not None else copy_model(original, _INPLACE_HINT)
        report = plan.report
        _kept_warning(report)
    else:
        target = original if inplace else copy_model(original, _INPLACE_HINT)
        if not inplace:
            steps = extract_steps(target)
        chain = _chain_apply.analyze(target, steps, atol, example_input, "shrink", remove_inputs)
        root = _chain_apply.apply(target, chain)
        result = model if inplace and root is target else root
        report = chain.report
    report.notes.extend(notes)
    return (result, report) if return_report else result

