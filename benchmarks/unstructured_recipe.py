"""The unstructured sparsity recipe the LeNet benchmarks share, and its command line.

Phases (every setting is a flag; each benchmark script sets its own defaults):

0. Teacher (``--teacher-epochs N > 0``, :mod:`recipe_common`): a dense network trained with the same
   shifts; its logits on each shifted batch are the distillation target of the fine-tuning (and,
   with ``--distill-sparse``, of the sparse phase).
1. Sparse phase: SGD (Nesterov, cosine learning rate) with one penalty rule per layer in
   ``Regularizer(mode="prox")`` (``--penalty l1``, ``mcp`` or ``scad``), the
   strength ramped up by ``schedule=`` after a warm-up (gradual sparsification).
2. Clean-up in ``--stages`` rounds: per layer, ``regtorch.freeze_zeros(..., fraction=f)`` with the
   layer's zero fraction for the round (magnitude pruning; each round removes the
   same share of the remaining weights, from what the sparse phase left to ``--prune-to``), then
   masked fine-tuning without the penalty (cosine learning rate to 0).
3. Export: ``torch.export.save``, loaded back; zeros and errors are measured on the loaded program.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import recipe_common
from mnist_tools import export_and_measure, ramp, sgd
from torch import nn

import regtorch

PENALTIES = ("l1", "mcp", "scad")


def make_penalty(kind: str, strength: float, shape: float) -> regtorch.Penalty:
    """``L1(strength)``, ``MCP(strength, gamma=shape)`` or ``SCAD(strength, a=shape)``."""
    if kind == "mcp":
        return regtorch.MCP(strength, gamma=shape)
    if kind == "scad":
        return regtorch.SCAD(strength, a=shape)
    return regtorch.L1(strength)


def stage_fraction(reached: float, target: float, progress: float) -> float:
    """Zero fraction after a share ``progress`` of the clean-up rounds: the kept fraction shrinks
    geometrically, ``1 − (1 − reached)·((1 − target)/(1 − reached))^progress`` (each round removes the
    same share of the remaining weights, as in iterative pruning)."""
    if reached >= 1.0 or target <= reached:
        return reached
    return 1.0 - (1.0 - reached) * ((1.0 - target) / (1.0 - reached)) ** progress


def add_arguments(parser: argparse.ArgumentParser, layers: int) -> None:
    """The sparse phase's and the clean-up's flags (per-layer ones take one value per layer)."""
    add = parser.add_argument
    add("--epochs", type=int, default=50, help="sparse-phase epochs")
    add("--lr", type=float, default=0.05, help="sparse-phase peak learning rate")
    add("--penalty", choices=PENALTIES, default="l1")
    add("--penalty-shape", type=float, default=3.0, help="MCP's gamma or SCAD's a")
    add("--strength", type=float, nargs=layers, default=None, help="per-layer penalty strength")
    add("--warmup-epochs", type=int, default=1, help="epochs at strength 0")
    add("--ramp-epochs", type=int, default=40, help="epochs of the strength ramp")
    add("--ramp-shape", choices=("geometric", "linear", "cubic"), default="geometric")
    add("--prune-to", type=float, nargs=layers, default=None, help="per-layer zero fraction at the end")
    add("--stages", type=int, default=1, help="clean-up rounds, each followed by masked fine-tuning")
    add("--stage-epochs", type=int, default=10, help="fine-tune epochs after each round but the last")
    add("--finetune-epochs", type=int, default=30, help="fine-tune epochs after the last round")
    add("--finetune-lr", type=float, default=0.05)


def run(setup: recipe_common.Setup, build_model: recipe_common.Builder, layers: tuple[str, ...]) -> dict[str, Any]:
    """Run phases 1-3 on ``build_model(normalizer)``; return the measurements of the exported file."""
    args = setup.args
    model = build_model(recipe_common.input_normalizer(args.input))
    weights = dict(model.named_parameters())

    def record(phase: str, **extra: Any) -> None:
        stats = regtorch.sparsity(model, params=list(layers))
        setup.phases.append({
            "phase": phase,
            "zero_fraction": stats.zero_fraction,
            "per_layer": [p.zero_fraction for p in stats.parameters],
            "val_error": setup.val_error(model),
            **extra,
        })  # fmt: skip
        setup.say(f"after {phase}: {setup.phases[-1]}")

    # 1. Sparse phase.
    t0 = time.perf_counter()
    optimizer = sgd(model, args.lr, args.momentum, args.weight_decay)
    rules = [
        (name, make_penalty(args.penalty, s, args.penalty_shape))
        for name, s in zip(layers, args.strength, strict=True)
        if s > 0
    ]
    if rules and args.epochs > 0:
        steps = setup.steps_per_epoch
        schedule = ramp(args.warmup_epochs * steps, args.ramp_epochs * steps, args.ramp_shape)
        regtorch.Regularizer(model, rules, mode="prox", schedule=schedule).attach(optimizer)

    def log_sparse(epoch: int, loss: float) -> None:
        stats = regtorch.sparsity(model, params=list(layers))
        per = " ".join(f"{p.zero_fraction:.3f}" for p in stats.parameters)
        setup.say(f"sparse epoch {epoch + 1:3d}  loss {loss:.4f}  zeros {stats.zero_fraction:.4f} ({per})")

    setup.train(model, optimizer, args.lr, args.epochs, "sparse", log_sparse, distill=args.distill_sparse)
    setup.timings["sparse"] = round(time.perf_counter() - t0, 2)
    record("sparse", alive_units=[int((weights[n] != 0).flatten(1).any(1).sum()) for n in layers])

    # 2. Clean-up rounds, each followed by masked fine-tuning.
    t0 = time.perf_counter()
    reached = setup.phases[-1]["per_layer"]
    targets = [max(t, r) for t, r in zip(args.prune_to, reached, strict=True)]
    for stage in range(args.stages):
        fractions = [stage_fraction(r, t, (stage + 1) / args.stages) for r, t in zip(reached, targets, strict=True)]
        optimizer = sgd(model, args.finetune_lr, args.momentum, args.weight_decay)
        frozen = [
            regtorch.freeze_zeros(model, optimizer, params=name, fraction=f)
            for name, f in zip(layers, fractions, strict=True)
        ]
        epochs = args.finetune_epochs if stage == args.stages - 1 else args.stage_epochs
        setup.train(model, optimizer, args.finetune_lr, epochs, f"round {stage + 1} fine-tune")
        for f in frozen:
            f.remove()
        record(f"clean-up + fine-tune {stage + 1}/{args.stages}")
    setup.timings["finetune"] = round(time.perf_counter() - t0, 2)

    # 3. Export, load back, measure the file.
    t0 = time.perf_counter()
    measured = export_and_measure(model, args.export, setup.splits, evaluate_test=not setup.tuning)
    setup.timings["export_and_measure"] = round(time.perf_counter() - t0, 2)
    return measured


def main(
    argv: list[str] | None,
    description: str,
    build_model: recipe_common.Builder,
    layers: tuple[str, ...],
    defaults: dict[str, Any],
    target: dict[str, float],
    teachers: dict[str, Callable[[nn.Module], nn.Module]],
) -> None:
    """Parse the flags, run, print the result (one JSON line last with ``--json``)."""
    parser = argparse.ArgumentParser(description=description)
    recipe_common.add_common_arguments(parser, tuple(teachers))
    add_arguments(parser, len(layers))
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    recipe_common.check_data_args(parser, args)
    setup = recipe_common.prepare(args, teachers)
    measured = run(setup, build_model, layers)
    result = recipe_common.finish(setup, measured, {}, target)
    result["meets_target"] = (
        None
        if result["test_error"] is None
        else result["zero_fraction"] >= target["zero_fraction_min"] and result["test_error"] <= target["test_error_max"]
    )
    recipe_common.print_result(args, result)
