"""Samples per second: the tutorial's training loop against ``regtorch train``'s loop.

The tutorial loop is the classic one: a ``DataLoader`` over a ``TensorDataset`` (shuffled),
``nn.CrossEntropyLoss``, ``torch.optim.Adam`` with its default implementation, ``loss.item()``
every step, torch's default thread count. ``regtorch train``'s loop is the real
:class:`regtorch.training.Trainer` (in-memory index batches, fused Adam, losses read only at log
steps, the thread count ``regtorch train`` picks), without regularization and with an elastic
net in each mode (loss, grad, prox).

Every measurement runs a fixed number of optimizer steps after a warm-up; rounds are
interleaved (tutorial, none, loss, grad, prox, tutorial, …) so that load from other processes
hits all loops alike, and the median over rounds is reported.

Usage::

    python benchmarks/train_throughput.py                 # MNIST if found, else synthetic
    python benchmarks/train_throughput.py --rounds 7 --batch-sizes 10,128 --data synthetic
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

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


def run_tutorial(data: Dataset, batch_size: int, warmup: int, steps: int, threads: int) -> float:
    """The tutorial loop; returns samples per second over ``steps`` steps."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = tutorial_model()
    loss_function = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=batch_size, shuffle=True)
    current_loss = 0.0
    started = 0.0
    for i, (inputs, targets) in enumerate(loader):
        if i == warmup:
            started = time.perf_counter()
        if i == warmup + steps:
            break
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = loss_function(outputs, targets)
        loss.backward()
        optimizer.step()
        current_loss += loss.item()
    return steps * batch_size / (time.perf_counter() - started)


class _Clock(Callback):
    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.started = self.seconds = 0.0

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if trainer.state.step == self.warmup:
            self.started = time.perf_counter()
        elif trainer.state.step == self.warmup + self.steps:
            float(loss)  # wait for the device
            self.seconds = time.perf_counter() - self.started
            trainer.should_stop = True


def run_regtorch(
    data: Dataset, batch_size: int, mode: str, warmup: int, steps: int, threads: int | None
) -> tuple[float, int]:
    """``regtorch train``'s loop; returns (samples per second, threads used)."""
    penalty = "none" if mode == "none" else "elasticnet"
    cfg = TrainConfig(
        dataset=data.name,
        batch_size=batch_size,
        epochs=1,
        penalty=penalty,
        mode="loss" if mode == "none" else mode,
        l1=1e-5,
        l2=1e-4,
        threads=threads,
        lr=1e-4,
        val_fraction=0.0,
    ).resolved()
    session = build_session(cfg, data)
    clock = _Clock(warmup, steps)
    Trainer(
        session.model,
        session.optimizer,
        data.x_train,
        data.y_train,
        regularizer=session.regularizer,
        epochs=1,
        batch_size=batch_size,
        generator=session.generator,
        log_every=0,
        callbacks=[clock],
    ).fit()
    return steps * batch_size / clock.seconds, session.threads


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
        f"torch {torch.__version__}; default threads {default_threads}"
    )
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        # About args.seconds of the tutorial loop per measurement (at ~600 µs/step for bs 10).
        steps = max(50, int(args.seconds / (6e-4 + 2.5e-5 * batch_size)))
        warmup = 20
        results: dict[str, list[float]] = {loop: [] for loop in LOOPS}
        used = None
        for _ in range(args.rounds):
            results["tutorial"].append(run_tutorial(data, batch_size, warmup, steps, default_threads))
            for mode in LOOPS[1:]:
                rate, used = run_regtorch(data, batch_size, mode, warmup, steps, args.threads)
                results[mode].append(rate)
        med = {loop: statistics.median(values) for loop, values in results.items()}
        print(
            f"\nbatch size {batch_size}: {steps} steps per measurement, median of "
            f"{args.rounds} interleaved rounds; tutorial on {default_threads} thread(s), "
            f"regtorch on {used}"
        )
        print(f"{'loop':<28} {'samples/s':>11} {'vs tutorial':>12} {'vs no reg':>10}")
        names = {
            "tutorial": "tutorial (DataLoader, Adam)",
            "none": "regtorch, no penalty",
            "loss": "regtorch, EN loss mode",
            "grad": "regtorch, EN grad mode",
            "prox": "regtorch, EN prox mode",
        }
        for loop in LOOPS:
            vs_none = "" if loop in ("tutorial", "none") else f"{med[loop] / med['none']:.2f}x"
            print(
                f"{names[loop]:<28} {med[loop]:>11,.0f} {med[loop] / med['tutorial']:>11.2f}x {vs_none:>10}"
            )


if __name__ == "__main__":
    main()
