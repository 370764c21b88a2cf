"""Per-call cost of regtorch's penalty operations on a small model, per implementation.

The model is the tutorial's MNIST MLP (784-64-32-10: 52,544 weights in three matrices) with an
elastic net on its weights. Each operation is timed through the public API with the automatic
choice (:func:`regtorch.kernels.choose`), the reference kernels (``foreach=False``) and the
multi-tensor ones (``foreach=True``), and, for scale, the tutorial's ``torch.cat`` loss term.
At this size a call costs microseconds of dispatch, not arithmetic. Variants are interleaved over
rounds; the table shows medians in microseconds per call and the ratio to the automatic choice.

Usage::

    python benchmarks/small_model.py [--rounds 9] [--calls 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import regtorch as rt
from regtorch import kernels


def weights(dtype: torch.dtype) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    params = [m.weight for m in model if isinstance(m, nn.Linear)]
    for p in params:
        p.data = p.data.to(dtype)
        p.grad = torch.zeros_like(p)
    return params


def operations(params: list[torch.Tensor]) -> dict[str, dict[str, Callable[[], object]]]:
    """``{operation: {variant: call}}``; every call leaves the tensors as it found them, roughly."""
    penalty = rt.ElasticNet(l1=1e-5, l2=1e-4)
    grads = [p.grad for p in params]

    def value_backward(**kwargs: object) -> None:
        penalty.value(params, **kwargs).backward()

    def tutorial_backward() -> None:
        flat = torch.cat([p.view(-1) for p in params])
        (1e-5 * flat.abs().sum() + 1e-4 * flat.pow(2).sum()).backward()

    return {
        "prox (in place)": {
            "auto": lambda: penalty.prox(params, 1e-3),
            "reference": lambda: penalty.prox(params, 1e-3, foreach=False),
            "foreach": lambda: penalty.prox(params, 1e-3, foreach=True),
        },
        "add_grad_": {
            "auto": lambda: penalty.add_grad_(params, grads),
            "reference": lambda: penalty.add_grad_(params, grads, foreach=False),
            "foreach": lambda: penalty.add_grad_(params, grads, foreach=True),
        },
        "value (no grad)": {
            "auto": lambda: penalty.value([p.detach() for p in params]),
            "reference": lambda: penalty.value([p.detach() for p in params], foreach=False),
            "foreach": lambda: penalty.value([p.detach() for p in params], foreach=True),
        },
        "value + backward": {
            "auto": value_backward,
            "reference": lambda: value_backward(foreach=False),
            "foreach": lambda: value_backward(foreach=True),
            "tutorial torch.cat": tutorial_backward,
        },
    }


def time_call(call: Callable[[], object], calls: int) -> float:
    for _ in range(max(1, calls // 10)):
        call()
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = weights(getattr(torch, args.dtype))
    ops = operations(params)
    print(
        f"MNIST MLP weights ({sum(p.numel() for p in params):,} {args.dtype}), elastic net; "
        f"torch {torch.__version__}, {args.threads} thread(s); automatic choice: "
        f"{kernels.choose(params, None, None)}; "
        f"medians of {args.rounds} interleaved rounds of {args.calls} calls"
    )
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for op, variants in ops.items():
            for variant, call in variants.items():
                times.setdefault((op, variant), []).append(time_call(call, args.calls))
    print(f"{'operation':20s} {'variant':20s} {'µs/call':>9s} {'vs auto':>8s}")
    for op, variants in ops.items():
        auto = statistics.median(times[op, "auto"])
        for variant in variants:
            median = statistics.median(times[op, variant])
            print(f"{op:20s} {variant:20s} {median:9.1f} {median / auto:7.2f}x")


if __name__ == "__main__":
    main()
