"""Samples per second: the tutorial's training loop against ``regtorch train``'s loop.

The tutorial loop is the classic one: a ``DataLoader`` over a ``TensorDataset`` (shuffled),
``nn.CrossEntropyLoss``, ``torch.optim.Adam`` with its default implementation, ``loss.item()``
every step, torch's default thread count. ``regtorch train``'s loop is the real
:class:`regtorch.training.Trainer` (in-memory index batches, fused Adam, losses read only at log
steps, the thread count ``regtorch train`` picks), without regularization and with an elastic
net in each mode (loss, grad, prox). The tutorial loop is also run with regtorch's elastic net
added in each mode, as a user of the library would add it to their own loop. "vs no penalty"
compares each regularized loop with the same loop without a penalty.

Every measurement is one whole epoch over the first ``steps × batch size`` training examples:
for ``regtorch`` from the start of training (its shuffle and the one gather of the epoch's
order included) to the end of the last optimizer step, for the tutorial from the creation of
the DataLoader iterator to the end of its last step; nothing else (loading, evaluation) is
timed. Rounds are interleaved (tutorial, none, loss, grad, prox, tutorial, …) so that load from
other processes hits all loops alike, each round starting one loop later than the one before (so no
loop always runs right after the same other one), with garbage collected before each measurement;
the median over rounds is reported.

Usage::

    python benchmarks/train_throughput.py                 # MNIST if found, else synthetic
    python benchmarks/train_throughput.py --rounds 7 --batch-sizes 10,128 --data synthetic
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import regtorch as rt
from regtorch.data import Dataset, load_dataset
from regtorch.training import Callback, TrainConfig, Trainer, build_session

MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mnist"
LOOPS = ("tutorial", "none", "loss", "grad", "prox")


def load(kind: str) -> Dataset:
    """MNIST from ../shared when present (or asked for), else random data of MNIST's shape."""
    if kind == "mnist" or (kind == "auto" and MNIST.exists()):
        return load_dataset("mnist", data_dir=MNIST)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60000, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (60000,), generator=g)
    return Dataset("synthetic", x, y, x[:1000], y[:1000], 10, (1, 28, 28))


def tutorial_model() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def subset(data: Dataset, n: int) -> Dataset:
    """The first ``n`` training examples (one epoch of the measurement)."""
    return Dataset(data.name, data.x_train[:n], data.y_train[:n], data.x_test, data.y_test,
                   data.num_classes, data.input_shape)  # fmt: skip


def run_tutorial(data: Dataset, batch_size: int, threads: int, mode: str | None = None) -> float:
    """The tutorial loop over one epoch of ``data``; returns samples per second.

    With ``mode`` (``"loss"``, ``"grad"`` or ``"prox"``) the loop is the same with regtorch's
    elastic net added the way the README shows: ``reg.penalty()`` added to the loss in loss mode,
    ``reg.attach(optimizer)`` in the other two.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = tutorial_model()
    loss_function = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    reg = None
    if mode is not None:
        reg = rt.Regularizer(model, rt.ElasticNet(l1=1e-5, l2=1e-4), mode=mode)
        reg.attach(optimizer)
    add_penalty = mode == "loss"
    dataset = TensorDataset(data.x_train, data.y_train)
    started = time.perf_counter()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    current_loss = 0.0
    for inputs, targets in loader:
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = loss_function(outputs, targets)
        if add_penalty:
            loss = loss + reg.penalty()
        loss.backward()
        optimizer.step()
        current_loss += loss.item()
    return data.n_train / (time.perf_counter() - started)


class _Clock(Callback):
    """Times from the start of training to the end of the last step of the epoch."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.started = self.seconds = 0.0

    def on_train_start(self, trainer: Trainer) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if trainer.state.step == self.steps:
            float(loss)  # wait for the device
            self.seconds = time.perf_counter() - self.started


def run_regtorch(data: Dataset, batch_size: int, mode: str, threads: int | None) -> tuple[float, int]:
    """``regtorch train``'s loop over one epoch; returns (samples per second, threads used)."""
    penalty = "none" if mode == "none" else "elasticnet"
    cfg = TrainConfig(
        dataset=data.name, batch_size=batch_size, epochs=1, penalty=penalty,
        mode="loss" if mode == "none" else mode, l1=1e-5, l2=1e-4, threads=threads,
        lr=1e-4, val_fraction=0.0,
    ).resolved()  # fmt: skip
    session = build_session(cfg, data)
    steps = -(-data.n_train // batch_size)
    clock = _Clock(steps)
    Trainer(
        session.model, session.optimizer, data.x_train, data.y_train,
        regularizer=session.regularizer, epochs=1, batch_size=batch_size,
        generator=session.generator, log_every=0, callbacks=[clock],
    ).fit()  # fmt: skip
    return data.n_train / clock.seconds, session.threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="10,128")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--seconds",
        type=float,
        default=0.6,
        help="approximate duration of one measurement of the tutorial loop",
    )
    parser.add_argument("--data", choices=("auto", "mnist", "synthetic"), default="auto")
    parser.add_argument(
        "--threads", type=int, default=None, help="threads for regtorch's loop (default: its own choice)"
    )
    args = parser.parse_args()

    default_threads = torch.get_num_threads()
    data = load(args.data)
    print(
        f"data: {data.name}, {data.n_train} examples of shape {data.input_shape}; "
        f"torch {torch.__version__}; default threads {default_threads}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    names = {
        "tutorial": f"tutorial, {default_threads} thread(s)",
        "tutorial-1": "tutorial, 1 thread",
        "tutorial-loss": "tutorial + EN loss mode",
        "tutorial-grad": "tutorial + EN grad mode",
        "tutorial-prox": "tutorial + EN prox mode",
        "none": "regtorch, no penalty",
        "loss": "regtorch, EN loss mode",
        "grad": "regtorch, EN grad mode",
        "prox": "regtorch, EN prox mode",
    }
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        # About args.seconds of the tutorial loop per measurement (at ~600 µs/step for bs 10).
        steps = max(50, int(args.seconds / (6e-4 + 2.5e-5 * batch_size)))
        part = subset(data, min(steps * batch_size, data.n_train))
        results: dict[str, list[float]] = {loop: [] for loop in names}
        used = None
        for round_ in range(args.rounds):
            # each round starts one loop later: no loop always runs right after the same other one
            start = round_ % len(names)
            for loop in [*names][start:] + [*names][:start]:
                gc.collect()  # the previous loop's garbage is not collected on this loop's clock
                if loop == "tutorial-1":
                    results[loop].append(run_tutorial(part, batch_size, 1))
                elif loop.startswith("tutorial"):
                    mode = loop.partition("-")[2] or None
                    results[loop].append(run_tutorial(part, batch_size, default_threads, mode))
                else:
                    rate, used = run_regtorch(part, batch_size, loop, args.threads)
                    results[loop].append(rate)
        med = {loop: statistics.median(values) for loop, values in results.items()}
        best = max(med["tutorial"], med["tutorial-1"])
        print(
            f"\nbatch size {batch_size}: one epoch of {part.n_train} examples per measurement, "
            f"median of {args.rounds} interleaved rounds; regtorch on {used} thread(s); "
            f"load average now {os.getloadavg()[0]:.2f}"
        )
        header = ["loop", "samples/s", "vs tutorial", "vs best tutorial", "vs no penalty"]
        print(f"{header[0]:<26} {header[1]:>10} {header[2]:>12} {header[3]:>17} {header[4]:>14}")
        for loop, name in names.items():
            base = "tutorial" if loop.startswith("tutorial-") else "none"
            vs_none = f"{med[loop] / med[base]:.2f}x" if loop.endswith(("loss", "grad", "prox")) else ""
            print(
                f"{name:<26} {med[loop]:>10,.0f} {med[loop] / med['tutorial']:>11.2f}x "
                f"{med[loop] / best:>16.2f}x {vs_none:>14}"
            )


if __name__ == "__main__":
    main()
