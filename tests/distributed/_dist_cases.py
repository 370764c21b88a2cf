"""What the distributed tests run, shared by the pytest side (single-process reference) and the workers.

Each test module starts its two worker processes once (:func:`launch`); the workers run every case
and save their results, and the tests compare them with a single process training the same global
batch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import regtorch as rt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the registry examples
from registry_examples import registry_examples

WORLD = 2
STEPS = 4
DT = torch.float64
BATCH = 16
WORKER = Path(__file__).with_name("_dist_worker.py")


def _rules() -> list[tuple[str, rt.Penalty]]:
    """Per-layer rules: columns spanning ranks, an element-wise penalty, biases split by rows."""
    return [("0.weight", rt.GroupLasso(0.2, "columns")), ("2.weight", rt.L1(0.01)), ("*.bias", rt.L2(0.05))]


# name: (penalty or rules, selection); "Half-" runs at Regularizer.scale = 0.5
PENALTIES: dict[str, tuple[Callable[[], Any], str | None]] = {
    "L1": (lambda: rt.L1(0.01), "all"),
    "L2": (lambda: rt.L2(0.05), "all"),
    "ElasticNet": (lambda: rt.ElasticNet(l1=0.01, l2=0.05), "weights"),
    "GroupLasso-rows": (lambda: rt.GroupLasso(0.2, 0), "all"),  # dim 0: rows, and each bias entry
    "GroupLasso-columns": (lambda: rt.GroupLasso(0.2, "columns"), "weights"),
    "SparseGroupLasso": (lambda: rt.L1(0.01) + rt.GroupLasso(0.2, "columns"), "weights"),
    "Half-SparseGroupLasso": (lambda: rt.L1(0.01) + rt.GroupLasso(0.2, "columns"), "weights"),
    "Rules": (_rules, None),
}
MODES = ("loss", "grad", "prox")
OPTIMIZERS = ("SGD", "Adam")
CASES = [f"{p}/{m}/{o}" for p in PENALTIES for m in MODES for o in OPTIMIZERS]
CASES += ["L1/prox-adam/Adam", "ElasticNet/prox-adam/Adam"]  # the prox in Adam's metric

# Penalties checked one by one on a sharded weight (value, gradient, prox, group norms)
SINGLE: dict[str, Callable[[], rt.Penalty]] = {
    "L1": lambda: rt.L1(0.3),
    "L2": lambda: rt.L2(0.3),
    "ElasticNet": lambda: rt.ElasticNet(l1=0.2, l2=0.3),
    "GroupLasso-rows": lambda: rt.GroupLasso(0.4, "rows"),
    "GroupLasso-columns": lambda: rt.GroupLasso(0.4, "columns"),
    "GroupLasso-tensor": lambda: rt.GroupLasso(0.4, "tensor"),
    "SparseGroupLasso": lambda: rt.L1(0.1) + rt.GroupLasso(0.4, "columns"),
    "Lp2-root": lambda: rt.Lp(2, 0.4, root=True),
    "Lp3": lambda: rt.Lp(3, 0.3),
    "Lp1.5-root": lambda: rt.Lp(1.5, 0.3, root=True),
}
for _example in registry_examples():  # every registered penalty, on sharded weights too
    SINGLE.setdefault(repr(_example), lambda p=_example: p)
PROX_STEP = 0.5
# (out_features, in_features, placement of the weight): rows split unevenly 3/2 (columns span the
# ranks), columns split 3/3 (rows span the ranks), and one row on two ranks (rank 1 holds nothing)
LAYOUTS = {"rows-3-2": (5, 6, 0), "columns-3-3": (5, 6, 1), "one-row": (1, 4, 0)}


def make_model(seed: int = 0) -> nn.Module:
    """The model every case trains: Linear(6→5) has 5 rows, split 3/2 by FSDP2 on two ranks."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch; rank ``r`` of ``WORLD`` trains on rows ``r::WORLD``."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 6, generator=g, dtype=DT), torch.randn(BATCH, 3, generator=g, dtype=DT)


def make_optimizer(name: str, params: Any) -> torch.optim.Optimizer:
    if name == "SGD":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    return torch.optim.Adam(params, lr=0.05)


def weight(layout: str) -> torch.Tensor:
    """A weight with one small row and one small column, so that a group prox zeroes them."""
    rows, cols, _ = LAYOUTS[layout]
    g = torch.Generator().manual_seed(2)
    w = torch.randn(rows, cols, generator=g, dtype=DT)
    w[:, min(2, cols - 1)] *= 0.01
    if rows > 1:
        w[1, :] *= 0.01
    return w


def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter as a full tensor (a collective for sharded ones: call it on every rank)."""
    out = {}
    for name, p in model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = full.detach().clone()
    return out


def train(model: nn.Module, case: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Train ``model`` (plain, DDP or FSDP2) on ``(x, y)`` for ``STEPS`` steps of ``case``."""
    penalty_name, mode, optimizer_name = case.split("/")
    make_penalty, params = PENALTIES[penalty_name]
    metric = "adam" if mode == "prox-adam" else "euclidean"
    mode = mode.removesuffix("-adam")
    reg = rt.Regularizer(model, make_penalty(), params=params, mode=mode, prox_metric=metric)
    if penalty_name.startswith("Half-"):
        reg.scale = 0.5
    optimizer = make_optimizer(optimizer_name, model.parameters())
    if mode != "loss":
        reg.attach(optimizer)
    values = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        penalty = reg.penalty()
        values.append(penalty.item())
        if mode == "loss":
            loss = loss + penalty
        loss.backward()
        optimizer.step()
    inner = getattr(model, "module", model)  # DDP
    return {
        "penalties": values,
        "final_penalty": reg.penalty().item(),
        "stats": reg.stats().to_dict(),
        "sparsity": rt.sparsity(inner, "all").to_dict(),
        "params": full_params(inner),
    }


def single(layout_weight: torch.Tensor, name: str) -> dict[str, Any]:
    """Value, gradient, prox and group norms of ``SINGLE[name]`` on a weight (plain or sharded).

    For a sharded weight the gradient and the prox are gathered, to compare them.
    """
    penalty = SINGLE[name]()
    out: dict[str, Any] = {"value": float(penalty.value(layout_weight))}
    (grad,) = penalty.grad([layout_weight])
    out["grad"] = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
    if penalty.supports_prox:
        w = layout_weight.detach().clone()
        penalty.prox([w], PROX_STEP)
        out["prox"] = w.full_tensor() if hasattr(w, "full_tensor") else w
    for term in penalty.terms():
        if isinstance(term, rt.GroupLasso):
            out["norms"] = term.norms(layout_weight)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(kind: str, out: Path, timeout: float) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the ``kind`` worker on ``WORLD`` processes; return each rank's results and log.

    Raises:
        TimeoutError: If the workers are not done within ``timeout`` seconds (they are killed).
        RuntimeError: If a worker fails.
    """
    port = free_port()
    path = [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(path)}
    logs = [out / f"rank{r}.log" for r in range(WORLD)]
    procs = []
    for rank in range(WORLD):
        with open(logs[rank], "w") as log:
            command = [sys.executable, str(WORKER), kind, str(rank), str(port), str(out)]
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        text = "\n".join(f"--- rank {r}\n{logs[r].read_text()[-3000:]}" for r in range(WORLD))
        raise TimeoutError(f"{kind} workers still running after {timeout:.0f} s; killed.\n{text}") from None
    texts = [log.read_text() for log in logs]
    if any(proc.returncode != 0 for proc in procs):
        codes = [proc.returncode for proc in procs]
        raise RuntimeError(f"{kind} workers exited with {codes}:\n" + "\n".join(t[-3000:] for t in texts))
    results = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return results, texts
