"""One rank of the distributed tests: ``python _dist_worker.py {ddp,fsdp} RANK PORT OUT``.

Runs every case of :mod:`_dist_cases` (gloo, CPU), saves ``OUT/rank{RANK}.pt`` and exits. The FSDP2
run ends by letting rank 1 die and timing how long rank 0 takes to get an error from
``Regularizer.penalty()``'s all-reduce.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from _dist_cases import (
    CASES,
    LAYOUTS,
    PENALTIES,
    SINGLE,
    WORLD,
    global_batch,
    make_model,
    single,
    train,
    weight,
)
from torch import nn

import regtorch as rt

TIMEOUT_S = 30


def _ddp(model: nn.Module) -> nn.Module:
    return nn.parallel.DistributedDataParallel(model)


def _fsdp(model: nn.Module) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _sharded_weight(layout: str) -> torch.Tensor:
    """``weight(layout)`` as FSDP2 shards it: the ``weight`` of a fully_shard-ed Linear."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    rows, cols, dim = LAYOUTS[layout]
    layer = nn.Linear(cols, rows).to(torch.float64)
    with torch.no_grad():
        layer.weight.copy_(weight(layout))
    mesh = init_device_mesh("cpu", (WORLD,))
    fully_shard(layer, mesh=mesh, shard_placement_fn=lambda p: Shard(dim if p.ndim == 2 else 0))
    return layer.weight


class _Count:
    """Count the all-reduces and the DTensor gathers (``full_tensor``) made inside the block."""

    def __enter__(self) -> _Count:
        from torch.distributed.tensor import DTensor

        self.all_reduce = self.gathers = 0
        self._saved = dist.all_reduce, DTensor.full_tensor

        def all_reduce(*args: Any, **kwargs: Any) -> Any:
            self.all_reduce += 1
            return self._saved[0](*args, **kwargs)

        def full_tensor(*args: Any, **kwargs: Any) -> Any:
            self.gathers += 1
            return self._saved[1](*args, **kwargs)

        dist.all_reduce, DTensor.full_tensor = all_reduce, full_tensor
        return self

    def __exit__(self, *exc: object) -> None:
        from torch.distributed.tensor import DTensor

        dist.all_reduce, DTensor.full_tensor = self._saved

    def counts(self) -> tuple[int, int]:
        return self.all_reduce, self.gathers


def _communication(name: str) -> dict[str, tuple[int, int]]:
    """(all-reduces, gathers) of penalty(), its backward, and the grad- and prox-mode hooks."""
    make, params = PENALTIES[name]
    out = {}
    model = _fsdp(make_model())
    reg = rt.Regularizer(model, make(), params=params)
    with _Count() as count:
        penalty = reg.penalty()
    out["penalty"] = count.counts()
    with _Count() as count:
        penalty.backward()
    out["backward"] = count.counts()
    for mode in ("grad", "prox"):
        model = _fsdp(make_model())
        reg = rt.Regularizer(model, make(), params=params, mode=mode)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        reg.attach(optimizer)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        with _Count() as count:
            optimizer.step()
        out[mode] = count.counts()
    return out


def _built_before_fully_shard() -> str:
    model = make_model()
    reg = rt.Regularizer(model, rt.L1(0.1))
    _fsdp(model)
    try:
        reg.penalty()
    except ValueError as error:
        return str(error)
    return "no error"


def _guarded(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except Exception:
        return {"error": traceback.format_exc()}


def main(kind: str, rank: int, port: int, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    wrap = _ddp if kind == "ddp" else _fsdp
    x, y = global_batch()
    x, y = x[rank::WORLD], y[rank::WORLD]
    started = time.monotonic()
    results: dict[str, Any] = {"cases": {}, "single": {}}
    for case in CASES:
        results["cases"][case] = _guarded(lambda c=case: train(wrap(make_model()), c, x, y))
    if kind == "fsdp":
        for layout in LAYOUTS:
            for name in SINGLE:
                results["single"][layout, name] = _guarded(
                    lambda la=layout, n=name: single(_sharded_weight(la), n)
                )
        results["stale"] = _guarded(_built_before_fully_shard)
        results["communication"] = {n: _guarded(_communication, n) for n in PENALTIES}
        model = _fsdp(make_model())
        results["layouts"] = {
            n: (tuple(p.placements), tuple(p.to_local().shape)) for n, p in model.named_parameters()
        }
        reg = rt.Regularizer(model, rt.GroupLasso(0.1, "columns"))
    results["seconds"] = time.monotonic() - started
    torch.save(results, out / f"rank{rank}.pt.tmp")
    os.replace(out / f"rank{rank}.pt.tmp", out / f"rank{rank}.pt")
    dist.barrier()
    if kind != "fsdp":
        dist.destroy_process_group()
        return
    # A rank dies: the other must get an error from regtorch's all-reduce, not hang.
    if rank == 1:
        time.sleep(0.5)
        os._exit(0)
    started = time.monotonic()
    try:
        reg.penalty()
        outcome = "no error"
    except Exception as error:  # what a trainer would see
        outcome = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    results["dead_rank"] = {"outcome": outcome, "seconds": time.monotonic() - started}
    torch.save(results, out / f"rank{rank}.pt.tmp")
    os.replace(out / f"rank{rank}.pt.tmp", out / f"rank{rank}.pt")
    sys.stdout.flush()
    os._exit(0)  # the process group is broken: skip its teardown


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
