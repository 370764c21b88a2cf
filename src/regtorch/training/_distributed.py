"""``regtorch train`` under ``torchrun``: process group, DDP / FSDP2 wrapping, sharded batches.

``torchrun --nproc-per-node N -m regtorch train ...`` starts N copies of the command, each with
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in its environment. Every rank loads the whole data
set, draws the same seeded permutation each epoch and trains on its share
``batch[rank::world]`` of each global batch (``--batch-size`` is the global batch). The data
loss of a rank is ``sum of its cross-entropies · world / len(global batch)``, so DDP's
gradient average is exactly the gradient of the global batch's mean loss (the last, smaller
batch of an epoch included), as in a single process. The penalty is added to each rank's loss
as it is (not divided): every rank gets the same penalty gradient and the average keeps it.

Only rank 0 prints, logs, plots and writes files; statistics and evaluations run on every rank
(they are collectives under FSDP2). Collectives time out after :data:`TIMEOUT_S` seconds, so a
rank that dies ends the others with an error instead of a hang.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from regtorch.training._errors import UsageError
from regtorch.training._loop import Trainer
from regtorch.training._progress import Reporter

__all__ = ["TIMEOUT_S", "DistContext", "DistTrainer", "init_distributed", "launched_by_torchrun"]

#: Seconds a collective waits for the other ranks before it fails.
TIMEOUT_S = 60


def launched_by_torchrun() -> bool:
    """Return whether this process is one rank of a ``torchrun`` launch (``WORLD_SIZE`` set)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


@dataclass
class DistContext:
    """Where this process stands in the process group."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that prints and writes)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank."""
        dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Return rank 0's ``value`` on every rank (pickled)."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: nn.Module) -> nn.Module:
        """Wrap ``model`` in DDP, or shard it with FSDP2 (each Linear/Conv, then the model)."""
        if self.fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device.type, (self.world,))
            for module in model.modules():
                if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    fully_shard(module, mesh=mesh)
            fully_shard(model, mesh=mesh)
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def close(self) -> None:
        """Destroy the process group."""
        if dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device_name: str, fsdp: bool) -> DistContext:
    """Join the process group ``torchrun`` describes (gloo on CPU, nccl on CUDA).

    Raises:
        UsageError: If the environment is incomplete or asks for CUDA without one.
    """
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as exc:
        raise UsageError(f"bad torchrun environment (WORLD_SIZE/RANK/LOCAL_RANK): {exc}") from exc
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was given but no CUDA device is available; use --device cpu")
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_S))
        except (ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(
                f"WORLD_SIZE and RANK are set, so this runs as one process of a torchrun launch, but "
                f"the process group does not start ({first}); launch with 'torchrun --nproc-per-node "
                "N -m regtorch train ...', or unset WORLD_SIZE and RANK"
            ) from exc
    global _joined
    _joined = True
    return DistContext(rank, world, local_rank, device, fsdp)


_joined = False


def joined_process_group() -> bool:
    """Whether this process joined a ``torchrun`` process group (see :func:`end_rank`)."""
    return _joined


def end_rank(status: int) -> NoReturn:
    """End this ``torchrun`` rank now with ``status``, without the interpreter's shutdown.

    Everything is written and the process group destroyed by then; what is skipped is Python's
    finalization and the C++ static destructors, where gloo's and c10d's background threads can
    abort the process ("terminate called without an active exception": one FSDP2 launch in 52
    here, after every file was written), which torchrun reports as a failed run.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


class SilentReporter(Reporter):
    """The reporter of ranks other than 0: prints nothing, warnings included."""

    def __init__(self) -> None:
        super().__init__(open(os.devnull, "w"), silent=True, progress=False)  # noqa: SIM115

    def warn(self, text: str) -> None:
        """Say nothing (rank 0 warns)."""


class DistTrainer(Trainer):
    """A :class:`Trainer` whose ranks share each global batch (see the module docstring)."""

    def __init__(self, *args: Any, dist_ctx: DistContext, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ctx = dist_ctx
        if self.step_fn == self.train_step:  # bound methods compare equal, not identical
            self.step_fn = self.dist_step
        self._global_n = 1

    def _batches(self):
        rank, world = self.ctx.rank, self.ctx.world
        for xb, yb in super()._batches():
            self._global_n = int(xb.shape[0])
            yield xb[rank::world], yb[rank::world]

    def dist_step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One optimizer step on this rank's share; return the global batch's mean data loss."""
        scale = self.ctx.world / self._global_n
        loss = F.cross_entropy(self.forward(xb), yb, reduction="sum") * scale
        total = self._with_penalty(loss)
        self.optimizer.zero_grad()
        total.backward()
        self.optimizer.step()
        value = loss.detach() / self.ctx.world
        dist.all_reduce(value)  # the global mean, for the log lines and the NaN check
        return value
