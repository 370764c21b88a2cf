"""The argument parser of the ``regtorch`` command.

Every option that configures a run is stored only when given (``default=SUPPRESS``), so a
command knows which options the user chose: defaults live in :class:`TrainConfig` and the
commands, and ``--resume`` can tell a changed option from an unchanged default.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

import regtorch
from regtorch.cli._values import (
    at_least_one,
    count,
    count0,
    fraction,
    layer_l1,
    non_negative,
    penalty_names,
    penalty_spec,
    positive,
    sizes,
    unit,
)
from regtorch.training._config import (
    GROUPINGS,
    MODELS,
    MODES,
    OPTIMIZERS,
    PROX_METRICS,
    SCHEDULES,
)
from regtorch.training._errors import UsageError

__all__ = ["CONFIG_OPTIONS", "build_parser"]

S = argparse.SUPPRESS

#: argparse destinations that are :class:`TrainConfig` fields.
CONFIG_OPTIONS = (
    "dataset", "data_dir", "download", "target", "val_fraction", "limit",
    "model", "hidden",
    "optimizer", "lr", "momentum", "weight_decay", "batch_size", "epochs", "schedule",
    "step_size", "gamma", "seed",
    "penalty", "l1", "l2", "alpha", "l1_ratio", "p", "strength", "groups", "params", "mode",
    "step_factor", "layer_l1", "prox_metric", "finetune_epochs",
    "log_every", "threads", "device", "fused", "compile", "flush_denormal",
)  # fmt: skip


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (a :class:`UsageError`), not usage + exit."""

    def error(self, message: str) -> NoReturn:
        exc = UsageError(f"{message} (see '{self.prog} --help')")
        exc.prog = self.prog  # type: ignore[attr-defined]
        raise exc


def _data_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default=S,
        metavar="NAME",
        help="digits (default, bundled with scikit-learn), mnist, fashion-mnist, "
        "cifar10, npz:PATH or csv:PATH",
    )
    g.add_argument(
        "--data-dir",
        default=S,
        metavar="DIR",
        help="where mnist/fashion-mnist/cifar10 files are (default $REGTORCH_DATA or ~/.cache/regtorch)",
    )
    g.add_argument(
        "--download", action="store_true", default=S, help="download missing files (checksums verified)"
    )
    g.add_argument("--target", default=S, metavar="COLUMN", help="label column of a csv: data set")
    g.add_argument(
        "--val-fraction",
        type=fraction,
        default=S,
        metavar="F",
        help="share of the training set held out for validation (default 0.1)",
    )
    g.add_argument(
        "--limit",
        type=count,
        default=S,
        metavar="N",
        help="keep only the first N training and N test examples",
    )


def _model_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        choices=MODELS,
        default=S,
        help="mlp: Flatten-Linear(in,64)-ReLU-Linear(64,32)-ReLU-Linear(32,classes) "
        "(default); cnn: two conv layers then a linear head, for images",
    )
    g.add_argument(
        "--hidden",
        type=sizes,
        default=S,
        metavar="SIZES",
        help="hidden layer sizes, e.g. 256,128 (default 64,32; cnn head 64)",
    )


def _optim_options(parser: argparse.ArgumentParser, defaults: str) -> None:
    g = parser.add_argument_group("optimization", defaults or None)
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=S, help="(default adam)")
    g.add_argument("--lr", type=positive, default=S, help="learning rate (default 1e-3; sgd 0.05)")
    g.add_argument("--momentum", type=unit, default=S, help="sgd momentum (default 0.9)")
    g.add_argument(
        "--weight-decay",
        type=non_negative,
        default=S,
        metavar="WD",
        help="the optimizer's own weight decay (default 0; adamw 0.01)",
    )
    g.add_argument("--batch-size", type=count, default=S, metavar="N", help="(default 32)")
    g.add_argument("--epochs", type=count, default=S, metavar="N", help="(default 10)")
    g.add_argument(
        "--schedule", choices=SCHEDULES, default=S, help="learning-rate schedule per epoch (default none)"
    )
    g.add_argument(
        "--step-size",
        type=count,
        default=S,
        metavar="EPOCHS",
        help="step schedule: epochs between decays (default epochs/3)",
    )
    g.add_argument("--gamma", type=positive, default=S, help="step schedule factor (default 0.1)")
    g.add_argument("--seed", type=count0, default=S, help="random seed (default 0)")


def _reg_options(parser: argparse.ArgumentParser, with_penalty: bool, with_rules: bool = False) -> None:
    g = parser.add_argument_group(
        "regularization",
        "Penalties are sums over the regularized weights added to the mean cross-entropy: "
        "l1*sum|w| + l2*sum(w^2) (no 1/2).",
    )
    if with_penalty:
        g.add_argument(
            "--penalty",
            type=penalty_spec,
            default=S,
            metavar="SPEC",
            help="none (default), a registered penalty (" + ", ".join(penalty_names()) + ") or a "
            "shorthand (group = grouplasso, sparse-group = l1 + grouplasso), optionally with its "
            "arguments: NAME:KEY=VALUE,... e.g. mcp:strength=3e-3,gamma=3",
        )
        g.add_argument(
            "--mode",
            choices=MODES,
            default=S,
            help="loss: add the penalty to the loss; grad: add its gradient; prox: "
            "proximal step after each optimizer step (exact zeros)",
        )
    g.add_argument("--l1", type=non_negative, default=S, help="L1 strength (default 1e-3)")
    g.add_argument("--l2", type=non_negative, default=S, help="L2 strength (default 1e-3)")
    g.add_argument(
        "--alpha",
        type=non_negative,
        default=S,
        help="elastic net as in scikit-learn: l1=alpha*l1_ratio, l2=alpha*(1-l1_ratio)/2",
    )
    g.add_argument("--l1-ratio", type=unit, default=S, help="with --alpha (default 0.5)")
    g.add_argument(
        "--p", type=lambda t: at_least_one(t), default=S, help="exponent of --penalty lp (default 1.5)"
    )
    g.add_argument(
        "--strength", type=non_negative, default=S, help="strength of --penalty lp and group (default 1e-2)"
    )
    g.add_argument(
        "--groups",
        choices=GROUPINGS,
        default=S,
        help="group lasso groups: rows = output neurons (default), columns = inputs",
    )
    g.add_argument(
        "--params",
        default=S,
        metavar="WHICH",
        help="weights (default: matrices and filters), all, or a name pattern like 'fc1.*'",
    )
    g.add_argument(
        "--step-factor",
        type=non_negative,
        default=S,
        help="prox mode: the prox step is lr times this (default 1)",
    )
    if not with_rules:
        return
    g.add_argument(
        "--layer-l1",
        type=layer_l1,
        default=S,
        metavar="RULES",
        help="per-layer L1 strengths: PATTERN=STRENGTH,... over parameter names, e.g. "
        "'fc1.*=1e-3,fc3.*=1e-5' (other weights get --penalty, if any)",
    )
    g.add_argument(
        "--prox-metric",
        choices=PROX_METRICS,
        default=S,
        help="prox mode: euclidean (default) or adam (threshold lr*l1/(sqrt(v)+eps) per weight; "
        "Adam-family optimizers, element-wise penalties)",
    )


def _output_options(parser: argparse.ArgumentParser, resumable: bool = True) -> None:
    g = parser.add_argument_group("output and execution")
    g.add_argument(
        "--out", default=None, metavar="DIR", help="run folder (default: a new folder under runs/)"
    )
    if resumable:
        g.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
        g.add_argument("--overwrite", action="store_true", help="replace the regtorch run in --out")
    g.add_argument(
        "--log-every",
        type=count0,
        default=S,
        metavar="N",
        help="print the loss line every N mini-batches (default: about 4 per epoch; 0: never)",
    )
    g.add_argument("--quiet", action="store_true", help="print only the result")
    g.add_argument(
        "--json", action="store_true", help="print a JSON summary on stdout (other lines go to stderr)"
    )
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    g.add_argument(
        "--threads", type=count, default=S, help="CPU threads (default: 1 for small models, else all cores)"
    )
    g.add_argument("--device", choices=("cpu", "cuda", "auto"), default=S, help="(default cpu)")
    g.add_argument(
        "--compile",
        action="store_true",
        default=S,
        help="torch.compile the model's training forward and backward (slower for the small "
        "models here; try it on large ones)",
    )
    g.add_argument(
        "--no-fused",
        dest="fused",
        action="store_false",
        default=S,
        help="do not use the fused Adam/AdamW/SGD kernels",
    )
    g.add_argument(
        "--keep-denormals",
        dest="flush_denormal",
        action="store_false",
        default=S,
        help="compute with denormal floats (default: flush them to zero while training, which "
        "keeps Adam fast once gradients vanish)",
    )


def build_parser() -> Parser:
    """Return the ``regtorch`` parser with its four subcommands."""
    parser = Parser(
        prog="regtorch",
        description="Train classifiers with L1, L2, elastic-net, Lp and group-lasso "
        "regularization; compare regularizers; trace regularization paths.",
    )
    parser.add_argument("--version", action="version", version=f"regtorch {regtorch.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    train = commands.add_parser(
        "train", help="train one configuration", description="Train one configuration into a run folder."
    )
    _data_options(train)
    _model_options(train)
    _optim_options(train, "")
    _reg_options(train, with_penalty=True, with_rules=True)
    g = train.add_argument_group("sparse models")
    g.add_argument(
        "--finetune-epochs",
        type=count0,
        default=S,
        metavar="N",
        help="after training, freeze the zero weights and train N more epochs without the penalty",
    )
    g.add_argument(
        "--shrink",
        action="store_true",
        help="after training, remove dead neurons and report parameters, file size, test "
        "accuracy and CPU inference time before and after",
    )
    g.add_argument(
        "--tensorboard", action="store_true", help="write TensorBoard logs into RUN_DIR/tensorboard"
    )
    _output_options(train)
    g = train.add_argument_group(
        "multi-process (torchrun)",
        "Under 'torchrun --nproc-per-node N -m regtorch train ...' each process trains on its "
        "share of every global batch (--batch-size is the global batch: divisible by the "
        "number of processes); DDP by default.",
    )
    g.add_argument(
        "--fsdp",
        action="store_true",
        help="shard the model with FSDP2 (fully_shard each Linear/Conv) instead of DDP",
    )

    compare = commands.add_parser(
        "compare",
        help="train several configurations and compare them",
        description="Train several configurations on the same data, split and seed and print "
        "one table. Defaults differ from train's so that a strength means the same "
        "in loss and prox modes: plain SGD (lr 0.1, momentum 0), 30 epochs, "
        "--l1 2e-3, --l2 3e-3, --strength 0.02.",
    )
    compare.add_argument(
        "configs",
        nargs="*",
        metavar="CONFIG",
        help="PENALTY[:MODE][,KEY=VALUE...], e.g. l1, l1:prox, elasticnet:prox,l1=1e-3, "
        "group:prox,strength=0.05,label=gl (default: none l1 l2 elasticnet "
        "elasticnet:prox group:prox)",
    )
    _data_options(compare)
    _model_options(compare)
    _optim_options(compare, "")
    _reg_options(compare, with_penalty=False)
    _output_options(compare)

    path = commands.add_parser(
        "path",
        help="trace a regularization path",
        description="Train with strengths log-spaced from --max down to --min, each stage "
        "warm-started from the previous weights; record accuracy and sparsity.",
    )
    g = path.add_argument_group("path")
    g.add_argument("--steps", type=count, default=S, metavar="K", help="strengths (default 8)")
    g.add_argument(
        "--max",
        type=positive,
        default=S,
        dest="max_strength",
        help="largest strength (default: estimated so almost every weight is zero)",
    )
    g.add_argument(
        "--min", type=positive, default=S, dest="min_strength", help="smallest strength (default max/1000)"
    )
    _data_options(path)
    _model_options(path)
    _optim_options(path, "")
    _reg_options(path, with_penalty=True)
    _output_options(path)

    report = commands.add_parser(
        "report",
        help="redraw the plots and summary of a run",
        description="Re-draw the plots and print the summary of a finished train, compare or path folder.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--quiet", action="store_true", help="print only the result")
    report.add_argument("--json", action="store_true", help="print the summary JSON on stdout")
    report.add_argument("--no-plots", action="store_true", help="do not redraw the plots")
    report.add_argument(
        "--plots-dir",
        metavar="DIR",
        help="draw the plots into DIR instead of RUN_DIR (for a run folder you cannot write to)",
    )
    return parser
