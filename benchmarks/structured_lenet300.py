"""Structured LeNet-300-100 on MNIST: group lasso on pixels and neurons, shrink to a small dense network.

Target: a dense network with at most 26,642 weights (the size of L0 regularization's 266-88-33-10,
Louizos et al. 2018) at no more than 1.70% final test error; then as far toward VIB's 97-71-33
(9,560 weights) as possible. Weights are the entries of the Linear weights (biases not counted);
``architecture`` is ``[kept input pixels, h1 units, h2 units]``.

The recipe (every setting is a flag, see ``--help``):

0. Teacher (``--teacher-epochs``): a dense network trained with random shifts; its logits on each
   shifted batch are the distillation target of the fine-tuning phases (``--distill-alpha``; with
   ``--distill-sparse`` of the group-sparse phase too).
1. Group-sparse phase on the full LeNet-300-100: SGD (Nesterov, cosine learning rate) with
   ``Regularizer(mode="prox")`` and one ``GroupLasso(..., groups="columns")`` rule per Linear layer:
   the columns of the first layer are the input pixels, those of the second and third the h1 and h2
   units (a unit whose outgoing weights are all zero is removable). The strengths ramp up after a
   warm-up.
2. Clean-up in ``--stages`` rounds: ``regtorch.freeze_zeros(..., groups="columns", fraction=...)``
   sets the columns with the smallest norms to zero until each layer keeps the round's count (from
   what the group lasso left down to ``--keep``, the same share fewer each round) and keeps them
   zero during ``--stage-epochs`` of masked fine-tuning.
3. ``regtorch.shrink(model, remove_inputs=True)`` removes the dead units and puts an index selection
   of the pixels still read in front of the first Linear (outputs unchanged). The result is a small
   dense network.
4. Dense fine-tuning of the small network (``--finetune-epochs``, all its weights free), or with
   ``--reinit`` training it from a fresh initialization (the from-scratch baseline, same pixels and
   sizes).
5. Export: ``torch.export.save``, loaded back; weights and errors are measured on the loaded program.

Usage:
    python benchmarks/structured_lenet300.py --data-dir /path/to/mnist --json --export small.pt2
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import recipe_common
import torch
from mnist_tools import export_and_measure, lenet5, lenet_300_100, ramp, sgd
from torch import nn

import regtorch

LAYERS = ("2.weight", "4.weight", "6.weight")
TARGET = {"weights_max": 26642, "test_error_max": 0.0170}
TEACHERS = {"lenet300": lenet_300_100, "lenet5": lenet5}


def column_norms(weight: torch.Tensor) -> torch.Tensor:
    """The Euclidean norm of each column of a Linear weight."""
    return weight.detach().norm(dim=0)


def clean_up(model: nn.Sequential, optimizer: torch.optim.Optimizer, counts: list[int]) -> list[Any]:
    """Keep ``counts`` (pixels, h1, h2) columns and freeze the rest at zero.

    From the last layer back: ``freeze_zeros(..., groups="columns", fraction=...)`` zeroes the
    columns with the smallest norms, then the incoming rows of the units that just lost their
    outgoing column are zeroed (they are dead), so that the next layer's column norms are taken
    over live units only. Returns the :class:`regtorch.FrozenZeros` of the three layers.
    """
    frozen = []
    for layer in (2, 1, 0):
        weight = model.get_parameter(LAYERS[layer])
        share = (weight.shape[1] - counts[layer]) / weight.shape[1]
        frozen.append(
            regtorch.freeze_zeros(model, optimizer, params=LAYERS[layer], fraction=share, groups="columns")
        )
        if layer > 0:
            dead = column_norms(weight) == 0
            with torch.no_grad():
                model.get_parameter(LAYERS[layer - 1])[dead] = 0.0
    return frozen


def alive_columns(model: nn.Sequential) -> list[int]:
    """Nonzero columns of each Linear weight: kept pixels, live h1 units, live h2 units."""
    return [int((column_norms(model.get_parameter(n)) > 0).sum()) for n in LAYERS]


def to_small_network(model: nn.Sequential) -> nn.Sequential:
    """Shrink ``model`` to a dense network with the same outputs (eval mode).

    :func:`regtorch.shrink` removes the hidden units whose outgoing weights are zero and, with
    ``remove_inputs=True``, puts a :class:`regtorch.SelectFeatures` in front of the first Linear
    that keeps only the pixels some unit still reads.
    """
    return regtorch.shrink(model.eval(), remove_inputs=True)


def architecture(small: nn.Sequential) -> list[int]:
    """``[inputs of the first Linear, hidden sizes...]``."""
    linears = [m for m in small.modules() if isinstance(m, nn.Linear)]
    return [linears[0].in_features] + [m.out_features for m in linears[:-1]]


def reinitialize(small: nn.Sequential) -> None:
    """Give every Linear of ``small`` a fresh default initialization."""
    for module in small.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()


def run(setup: recipe_common.Setup) -> dict[str, Any]:
    """Phases 1-5 (see the module docstring); returns the measurements of the exported file."""
    args = setup.args
    model = lenet_300_100(recipe_common.input_normalizer(args.input))

    def record(phase: str, net: nn.Module, **extra: Any) -> None:
        setup.phases.append({"phase": phase, "val_error": setup.val_error(net), **extra})
        setup.say(f"after {phase}: {setup.phases[-1]}")

    # 1. Group-sparse phase.
    t0 = time.perf_counter()
    optimizer = sgd(model, args.lr, args.momentum, args.weight_decay)
    rules = [(n, regtorch.GroupLasso(s, groups="columns")) for n, s in zip(LAYERS, args.strength, strict=True) if s > 0]
    if rules and args.epochs > 0:
        steps = setup.steps_per_epoch
        schedule = ramp(args.warmup_epochs * steps, args.ramp_epochs * steps, args.ramp_shape)
        regtorch.Regularizer(model, rules, mode="prox", schedule=schedule).attach(optimizer)

    def log_sparse(epoch: int, loss: float) -> None:
        setup.say(f"group-sparse epoch {epoch + 1:3d}  loss {loss:.4f}  alive columns {alive_columns(model)}")

    setup.train(model, optimizer, args.lr, args.epochs, "group-sparse", log_sparse, distill=args.distill_sparse)
    setup.timings["group_sparse"] = round(time.perf_counter() - t0, 2)
    record("group-sparse", model, alive=alive_columns(model))

    # 2. Clean-up rounds with masked fine-tuning.
    t0 = time.perf_counter()
    reached = alive_columns(model)
    targets = [min(k, r) if k > 0 else r for k, r in zip(args.keep, reached, strict=True)]
    for stage in range(args.stages):
        counts = [round(r * (t / r) ** ((stage + 1) / args.stages)) for r, t in zip(reached, targets, strict=True)]
        optimizer = sgd(model, args.finetune_lr, args.momentum, args.weight_decay)
        frozen = clean_up(model, optimizer, counts)
        setup.train(model, optimizer, args.finetune_lr, args.stage_epochs, f"round {stage + 1} masked")
        for layer in frozen:
            layer.remove()
        record(f"clean-up {stage + 1}/{args.stages}", model, alive=alive_columns(model))
    setup.timings["clean_up"] = round(time.perf_counter() - t0, 2)

    # 3. Shrink to a small dense network.
    small = to_small_network(model)
    record("shrink", small, architecture=architecture(small))

    # 4. Dense fine-tuning (or training from scratch) of the small network.
    t0 = time.perf_counter()
    if args.reinit:
        reinitialize(small)
    small.train()
    optimizer = sgd(small, args.finetune_lr, args.momentum, args.weight_decay)
    setup.train(small, optimizer, args.finetune_lr, args.finetune_epochs, "small dense")
    setup.timings["finetune"] = round(time.perf_counter() - t0, 2)
    record("small dense", small)

    # 5. Export, load back, measure the file.
    t0 = time.perf_counter()
    measured = export_and_measure(small, args.export, setup.splits, evaluate_test=not setup.tuning)
    setup.timings["export_and_measure"] = round(time.perf_counter() - t0, 2)
    measured["architecture"] = architecture(small)
    return measured


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line (the defaults are the recipe)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    recipe_common.add_common_arguments(parser, tuple(TEACHERS))
    add = parser.add_argument
    add("--epochs", type=int, default=40, help="group-sparse phase epochs")
    add("--lr", type=float, default=0.05)
    add("--strength", type=float, nargs=3, default=[1e-2, 5e-3, 2e-3], metavar=("PIXELS", "H1", "H2"))
    add("--warmup-epochs", type=int, default=1)
    add("--ramp-epochs", type=int, default=30)
    add("--ramp-shape", choices=("geometric", "linear", "cubic"), default="geometric")
    add("--keep", type=int, nargs=3, default=[250, 80, 30], metavar=("PIXELS", "H1", "H2"),
        help="columns kept per layer after the clean-up (0: what the group lasso left)")  # fmt: skip
    add("--stages", type=int, default=6, help="clean-up rounds")
    add("--stage-epochs", type=int, default=5, help="masked fine-tuning epochs per round")
    add("--finetune-epochs", type=int, default=40, help="dense fine-tuning epochs of the small network")
    add("--finetune-lr", type=float, default=0.05)
    add("--reinit", action="store_true", help="train the small network from a fresh initialization")
    parser.set_defaults(shift=2, teacher_arch="lenet5", teacher_epochs=12, distill_alpha=0.5, temperature=2.0)
    args = parser.parse_args(argv)
    recipe_common.check_data_args(parser, args)
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(argv)
    setup = recipe_common.prepare(args, TEACHERS)
    measured = run(setup)
    result = recipe_common.finish(setup, measured, {"architecture": measured["architecture"]}, TARGET)
    result["meets_target"] = (
        None
        if result["test_error"] is None
        else result["weights"] <= TARGET["weights_max"] and result["test_error"] <= TARGET["test_error_max"]
    )
    recipe_common.print_result(args, result)


if __name__ == "__main__":
    main(sys.argv[1:])
