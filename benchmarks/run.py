"""regtorch's performance suite: one table per target of issue 5, ratios measured in one run.

Loss mode is timed twice: with ``.grad`` already holding a tensor (gradients accumulate into it) and
with ``.grad`` set to ``None`` before each call, as ``optimizer.zero_grad()`` leaves it by default.

Usage::

    python benchmarks/run.py [--device cpu|cuda] [--sizes 1M,10M,50M] [--repeats 7] [--json out.json]

Tables (each row a variant; times are medians of interleaved repeats):

1. grad and prox modes — ms per call, memory passes (ratio to one in-place pass ``w.mul_(1)`` over the
   regularized parameters), % of a forward+backward+Adam training step, extra peak memory
   (× parameter bytes, measured in a fresh subprocess per variant on CPU).
2. loss mode (value + backward) — vs the tutorial's ``torch.cat`` approach: speed-up and extra peak
   memory.
3. penalty value accuracy — relative error against a float64 reference at the largest size.
4. many small tensors — 96 tensors of 64K elements: no path slower than a per-tensor loop.

Absolute times mean something only on a quiet machine or a GPU; the ratios are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

import regtorch as rt
from regtorch import kernels

PENALTY = rt.ElasticNet(l1=1e-6, l2=1e-6)
L1 = rt.L1(1e-6)


def parse_size(text: str) -> int:
    """``"10M"`` -> 10_000_000."""
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * scale)


def make_model(numel: int, device: str, layers: int = 4) -> nn.Module:
    """An MLP of ``layers`` square Linear layers holding about ``numel`` weights."""
    width = max(8, int((numel / layers) ** 0.5))
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(width, width))
        if i < layers - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods).to(device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(
    variants: dict[str, Callable[[], object]], device: str, repeats: int
) -> dict[str, float]:
    """Median seconds per variant, repeats interleaved round-robin (the machine is noisy)."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm up (and compile)
        fn()
    sync(device)
    for _ in range(repeats):
        for name, fn in variants.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


# ---------------------------------------------------------------------------------------- variants
def tutorial_value(params: list[torch.Tensor]) -> torch.Tensor:
    """The tutorial: concatenate every parameter, then abs/pow/sum."""
    flat = torch.cat([p.view(-1) for p in params])
    return 1e-6 * flat.abs().sum() + 1e-6 * flat.pow(2).sum()


def grad_prox_variants(params: list[torch.Tensor]) -> dict[str, Callable[[], object]]:
    grads = [p.grad for p in params]
    ws = [p.detach() for p in params]
    return {
        "one pass (w.mul_(1))": lambda: [w.mul_(1.0) for w in ws],
        "grad: eager foreach (sign, add)": lambda: torch._foreach_add_(
            grads, torch._foreach_add(torch._foreach_sign(ws), ws, alpha=2.0), alpha=1e-6
        ),
        "grad: regtorch per-tensor": lambda: PENALTY.add_grad_(ws, grads, foreach=False, fused=False),
        "grad: regtorch foreach": lambda: PENALTY.add_grad_(ws, grads, foreach=True, fused=False),
        "grad: regtorch fused": lambda: PENALTY.add_grad_(ws, grads, fused=True),
        "grad: regtorch auto": lambda: PENALTY.add_grad_(ws, grads),
        "prox: eager foreach (clamp, sub)": lambda: rt.L1(1e-6).prox(ws, 1e-3, foreach=True, fused=False),
        "prox: regtorch per-tensor": lambda: PENALTY.prox(ws, 1e-3, foreach=False, fused=False),
        "prox: regtorch fused": lambda: PENALTY.prox(ws, 1e-3, fused=True),
        "prox: regtorch auto": lambda: PENALTY.prox(ws, 1e-3),
    }


GRADS = ("accumulate", "set_to_none")
"""How ``.grad`` is found by each backward: existing (accumulated into), or ``None`` as after
``optimizer.zero_grad()`` (its default ``set_to_none=True``: autograd takes the new tensor)."""


def loss_variants(params: list[torch.Tensor], grads: str = "accumulate") -> dict[str, Callable[[], object]]:
    def backward(value: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            if grads == "set_to_none":
                for p in params:
                    p.grad = None
            value().backward()

        return run

    return {
        "tutorial: torch.cat + abs/pow + backward": backward(lambda: tutorial_value(params)),
        "per-parameter abs().sum() + backward": backward(
            lambda: sum(1e-6 * p.abs().sum() + 1e-6 * p.pow(2).sum() for p in params)
        ),
        "regtorch loss mode (eager) + backward": backward(lambda: PENALTY.value(params, fused=False)),
        "regtorch loss mode (fused) + backward": backward(lambda: PENALTY.value(params, fused=True)),
    }


def training_step(model: nn.Module, device: str) -> Callable[[], object]:
    width = model[0].in_features
    x = torch.randn(32, width, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, foreach=device == "cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        model(x).square().mean().backward()
        opt.step()

    return step


# ---------------------------------------------------------------------------------------- memory
def peak_extra_memory(kind: str, variant: str, numel: int) -> float:
    """Run one variant in a fresh process; return its extra peak RSS in parameter-bytes units."""
    # Every allocation of 64 KiB or more is its own mapping, returned to the OS when freed, so the
    # peak resident size after resetting it measures exactly the variant's temporaries.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, __file__, "--_memory", kind, variant, str(numel)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _memory_child(kind: str, variant: str, numel: int) -> None:
    model = make_model(numel, "cpu")
    params = [p for n, p in model.named_parameters() if p.ndim >= 2]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    table = grad_prox_variants(params) if kind == "grad_prox" else loss_variants(params, "set_to_none")
    table[variant]()  # warm up first (compilation memory is not the kernel's)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak resident size (Linux)
    before = _status_kib("VmRSS")
    table[variant]()
    after = _status_kib("VmHWM")
    print(max(0, after - before) * 1024 / param_bytes)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


# ---------------------------------------------------------------------------------------- tables
def table_grad_prox(sizes: list[int], device: str, repeats: int, memory: bool) -> list[dict]:
    rows = []
    for numel in sizes:
        model = make_model(numel, device)
        params = [p for p in model.parameters() if p.ndim >= 2]
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        variants = grad_prox_variants(params)
        variants["training step (fwd+bwd+Adam)"] = training_step(model, device)
        times = time_interleaved(variants, device, repeats)
        one_pass = times["one pass (w.mul_(1))"]
        step = times.pop("training step (fwd+bwd+Adam)")
        for name, seconds in times.items():
            row = {
                "size": numel,
                "variant": name,
                "ms": 1e3 * seconds,
                "passes": seconds / one_pass,
                "pct_of_step": 100 * seconds / step,
            }
            if memory and device == "cpu" and not name.startswith("one pass"):
                row["extra_peak_x"] = peak_extra_memory("grad_prox", name, numel)
            rows.append(row)
        rows.append(
            {
                "size": numel,
                "variant": "training step (fwd+bwd+Adam)",
                "ms": 1e3 * step,
                "passes": step / one_pass,
                "pct_of_step": 100.0,
            }
        )
    return rows


def table_loss(sizes: list[int], device: str, repeats: int, memory: bool) -> list[dict]:
    rows = []
    for numel in sizes:
        model = make_model(numel, device)
        params = [p for p in model.parameters() if p.ndim >= 2]
        variants = {
            f"{name} [{grads}]": call for grads in GRADS for name, call in loss_variants(params, grads).items()
        }
        times = time_interleaved(variants, device, repeats)
        for grads in GRADS:
            tutorial = times[f"tutorial: torch.cat + abs/pow + backward [{grads}]"]
            for name in loss_variants(params, grads):
                seconds = times[f"{name} [{grads}]"]
                row = {
                    "size": numel,
                    "grads": grads,
                    "variant": name,
                    "ms": 1e3 * seconds,
                    "speedup_vs_tutorial": tutorial / seconds,
                }
                if memory and device == "cpu" and grads == "set_to_none":
                    row["extra_peak_x"] = peak_extra_memory("loss", name, numel)
                rows.append(row)
    return rows


def table_accuracy(numel: int, device: str) -> list[dict]:
    torch.manual_seed(0)
    w = torch.randn(numel, device=device)
    exact_l1 = w.double().abs().sum().item()
    exact_l2 = w.double().pow(2).sum().item()
    param = nn.Parameter(w)  # loss mode: the value and the gradient in one (compiled) pass
    candidates = {
        "L1: torch._foreach_norm(ord=1)": (torch._foreach_norm([w], 1)[0].item(), exact_l1),
        "L1: torch.linalg.vector_norm(ord=1)": (torch.linalg.vector_norm(w, 1).item(), exact_l1),
        "L1: w.abs().sum()": (w.abs().sum().item(), exact_l1),
        "L1: regtorch value": (rt.L1(1.0).value(w).item(), exact_l1),
        "L1: regtorch value, loss mode (fused)": (rt.L1(1.0).value(param, fused=True).item(), exact_l1),
        "L2: torch.linalg.vector_norm(ord=2)**2": ((torch.linalg.vector_norm(w) ** 2).item(), exact_l2),
        "L2: regtorch value": (rt.L2(1.0).value(w).item(), exact_l2),
        "L2: regtorch value, loss mode (fused)": (rt.L2(1.0).value(param, fused=True).item(), exact_l2),
    }
    return [
        {"size": numel, "variant": name, "relative_error": abs(got - exact) / exact}
        for name, (got, exact) in candidates.items()
    ]


def table_many_tensors(device: str, repeats: int, count: int = 96, numel: int = 1 << 16) -> list[dict]:
    ws = [torch.randn(numel, device=device) for _ in range(count)]
    gs = [torch.zeros_like(w) for w in ws]
    variants = {
        "grad: plain per-tensor loop (sign, add)": lambda: [
            g.add_(torch.sign(w), alpha=1e-6) for w, g in zip(ws, gs, strict=True)
        ],
        "grad: foreach": lambda: L1.add_grad_(ws, gs, alpha=1.0, foreach=True, fused=False),
        "grad: regtorch auto": lambda: L1.add_grad_(ws, gs),
        "prox: plain per-tensor loop (softshrink)": lambda: [
            w.copy_(torch.nn.functional.softshrink(w, 1e-9)) for w in ws
        ],
        "prox: foreach": lambda: L1.prox(ws, 1e-3, foreach=True, fused=False),
        "prox: regtorch auto": lambda: L1.prox(ws, 1e-3),
    }
    times = time_interleaved(variants, device, repeats)
    rows = []
    for name, seconds in times.items():
        base = times[
            "grad: plain per-tensor loop (sign, add)"
            if name.startswith("grad")
            else "prox: plain per-tensor loop (softshrink)"
        ]
        rows.append({"tensors": count, "variant": name, "ms": 1e3 * seconds, "ratio_to_loop": seconds / base})
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n## {title}\n")
    if not rows:
        return
    keys = list(rows[0].keys())
    for row in rows:
        keys += [k for k in row if k not in keys]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        cells = []
        for k in keys:
            v = row.get(k, "")
            if isinstance(v, float):
                v = f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
            elif isinstance(v, int) and k == "size":
                v = f"{v / 1e6:g}M"
            cells.append(str(v))
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", default="1M,10M,50M")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-memory", action="store_true", help="skip the subprocess memory columns")
    parser.add_argument("--json", help="also write the tables to this JSON file")
    parser.add_argument("--_memory", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._memory:
        _memory_child(args._memory[0], args._memory[1], int(args._memory[2]))
        return 0
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    memory = not args.no_memory
    machine = {
        "device": torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "compiled_available": kernels.compiled_available(args.device),
    }
    print(f"# regtorch benchmarks — {machine}")
    results = {
        "machine": machine,
        "grad_prox": table_grad_prox(sizes, args.device, args.repeats, memory),
        "loss": table_loss(sizes, args.device, args.repeats, memory),
        "accuracy": table_accuracy(max(sizes), args.device),
        "many_tensors": table_many_tensors(args.device, args.repeats),
    }
    print_table(
        "1. grad and prox modes (passes = ratio to one in-place pass over the parameters)",
        results["grad_prox"],
    )
    print_table("2. loss mode: value + backward", results["loss"])
    print_table("3. penalty value accuracy (float32 parameters, float64 reference)", results["accuracy"])
    print_table("4. many small tensors (96 × 64K elements)", results["many_tensors"])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
