"""Command line and set-up shared by the MNIST sparsity benchmarks: data, teacher, result line.

Runs with ``--val-fraction > 0`` are tuning runs: they report the validation error and never
evaluate the test set (``test_error`` is ``null``). Final runs (``--val-fraction 0``) train on all
60,000 training images and report the test error of the exported program.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mnist_tools import (
    MNIST_MEAN,
    Normalize,
    Splits,
    TrainConfig,
    cosine,
    error_rate,
    load_pixels,
    sgd,
    train_epochs,
)
from torch import nn

import regtorch

Builder = Callable[[nn.Module], nn.Module]


def input_normalizer(kind: str) -> Normalize:
    """``x/0.3081`` (``"uncentered"``: blank pixels stay exactly 0) or ``(x − 0.1307)/0.3081``."""
    return Normalize(0.0 if kind == "uncentered" else MNIST_MEAN, 0.3081)


def add_common_arguments(parser: argparse.ArgumentParser, teachers: tuple[str, ...]) -> None:
    """Flags for data, output, training loss and the teacher."""
    add = parser.add_argument
    add("--data-dir", default=None, help="folder holding the four MNIST IDX files")
    add("--dataset", choices=("mnist", "digits"), default="mnist", help="digits: pipeline check only")
    add("--limit", type=int, default=None, help="keep the first N training and test images (smoke tests)")
    add("--json", action="store_true", help="print the result as one JSON line, last")
    add("--export", default=None, metavar="PATH", help="write the final model (torch.export.save)")
    add("--quiet", action="store_true", help="no per-epoch log")
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    add("--val-fraction", type=float, default=0.0, help="> 0: a tuning run on a validation split, no test error")
    add("--input", choices=("uncentered", "standard"), default="uncentered")
    add("--batch-size", type=int, default=128)
    add("--momentum", type=float, default=0.9)
    add("--weight-decay", type=float, default=5e-4, help="coupled weight decay, every phase")
    add("--shift", type=int, default=0, help="random translations of up to this many pixels")
    add("--label-smoothing", type=float, default=0.0)
    add("--teacher-epochs", type=int, default=0, help="0: no teacher, no distillation")
    add("--teacher-arch", choices=teachers, default=teachers[0], help="the teacher's architecture")
    add("--teacher-lr", type=float, default=0.05)
    add("--distill-alpha", type=float, default=0.0, help="weight of the distillation term")
    add("--temperature", type=float, default=4.0)
    add("--distill-sparse", action="store_true", help="distill in the penalized phase too (default: fine-tuning only)")


@dataclass
class Setup:
    """What every recipe starts from."""

    args: argparse.Namespace
    splits: Splits
    generator: torch.Generator
    config: TrainConfig
    steps_per_epoch: int
    start: float
    teacher: nn.Module | None = None
    timings: dict[str, float] = field(default_factory=dict)
    phases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tuning(self) -> bool:
        """Whether this is a tuning run (a validation split; the test set is not evaluated)."""
        return self.splits.x_val is not None

    def say(self, text: str) -> None:
        """Print a progress line (to stderr with ``--json``), unless ``--quiet``."""
        if not self.args.quiet:
            print(text, file=sys.stderr if self.args.json else sys.stdout, flush=True)

    def val_error(self, model: nn.Module) -> float | None:
        """The model's validation error (``None`` without a validation split)."""
        return error_rate(model, self.splits.x_val, self.splits.y_val)

    def train(self, model: nn.Module, optimizer: torch.optim.Optimizer, lr: float, epochs: int, label: str,
              log: Callable[[int, float], None] | None = None, distill: bool = True) -> None:  # fmt: skip
        """``epochs`` epochs with a cosine learning rate from ``lr`` to 0, distilling from the teacher
        (if there is one and ``distill``)."""
        lr_at = cosine(lr, 0.0, epochs * self.steps_per_epoch)
        log = log or (lambda e, loss: self.say(f"{label} epoch {e + 1:3d}  loss {loss:.4f}"))
        x, y = self.splits.x_train, self.splits.y_train
        teacher = self.teacher if distill else None
        train_epochs(model, optimizer, lr_at, epochs, x, y, self.config, self.generator, teacher, log)


def prepare(args: argparse.Namespace, teachers: dict[str, Builder]) -> Setup:
    """Load the data, seed everything and train the teacher (``--teacher-epochs > 0``)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    splits = load_pixels(args.dataset, args.data_dir, args.val_fraction, args.seed, args.limit)
    torch.manual_seed(args.seed)
    setup = Setup(
        args=args,
        splits=splits,
        generator=torch.Generator().manual_seed(args.seed),
        config=TrainConfig(args.batch_size, args.shift, args.label_smoothing, 0.0, args.temperature),
        steps_per_epoch=math.ceil(len(splits.x_train) / args.batch_size),
        start=start,
    )
    setup.timings["load"] = round(time.perf_counter() - start, 2)
    if args.teacher_epochs > 0:
        t0 = time.perf_counter()
        teacher = teachers[args.teacher_arch](input_normalizer(args.input))
        optimizer = sgd(teacher, args.teacher_lr, args.momentum, args.weight_decay)
        setup.train(teacher, optimizer, args.teacher_lr, args.teacher_epochs, "teacher")
        teacher.eval()
        setup.teacher = teacher
        setup.config.distill_alpha = args.distill_alpha
        setup.timings["teacher"] = round(time.perf_counter() - t0, 2)
        setup.phases.append({"phase": "teacher", "val_error": setup.val_error(teacher)})
        setup.say(f"teacher: {setup.phases[-1]}")
    return setup


def finish(setup: Setup, measured: dict[str, Any], extra: dict[str, Any], target: dict[str, float]) -> dict[str, Any]:
    """The result object: the measured numbers first, then phases, settings and timings."""
    setup.timings["total"] = round(time.perf_counter() - setup.start, 2)
    args = setup.args
    result = {
        "zero_fraction": measured["zero_fraction"],
        "test_error": measured["test_error"],
        "val_error": measured["val_error"],
        **extra,
        "weights": measured["weights"],
        "nonzero_weights": measured["nonzero_weights"],
        "zeros": measured["zeros"],
        "per_layer": measured["per_layer"],
        "export_max_abs_diff": measured["export_max_abs_diff"],
        "export_path": measured["export_path"],
        "tuning_run": setup.tuning,
        "phases": setup.phases,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "quiet", "data_dir", "export")},
        "dataset": setup.splits.dataset,
        "n_train": len(setup.splits.x_train),
        "n_val": 0 if setup.splits.x_val is None else len(setup.splits.x_val),
        "n_test": len(setup.splits.x_test),
        "timings_s": setup.timings,
        "torch_threads": torch.get_num_threads(),
        "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "target": target,
    }
    return result


def source_version() -> str | None:
    """``git describe --always --dirty`` of the checkout the benchmark runs from, if it is one."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=10, check=False,
        )  # fmt: skip
    except OSError:
        return None
    return done.stdout.strip() or None


def machine() -> dict[str, Any]:
    """CPU model, cores, torch and regtorch versions (with the checkout's commit) and the
    1/5/15-minute load averages at the end of the run (a load above the threads used means other
    work shared the cores)."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "regtorch": regtorch.__version__,
        "regtorch_source": source_version(),
        "regtorch_path": str(Path(regtorch.__file__).parent),
        "load_average": load,
    }


def print_result(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Print the result: one JSON line with ``--json`` (the last line of stdout), else indented."""
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


def check_data_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--data-dir`` is required for MNIST."""
    if args.dataset == "mnist" and args.data_dir is None:
        parser.error("--data-dir is required for --dataset mnist")
