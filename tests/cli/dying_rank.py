"""``regtorch train`` as a torchrun rank, one of which dies abruptly (for the dead-rank test).

Usage: ``torchrun ... dying_rank.py DEAD_RANK STEPS STATUS_DIR train ARGS...``. Rank ``DEAD_RANK``
calls ``os._exit(1)`` after ``STEPS`` optimizer steps, as a process killed by the system would
end; every rank that reaches the end of ``regtorch.cli.main`` writes its exit status into
``STATUS_DIR/rank<R>``. Only this script patches the trainer, by ordinary monkeypatching.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from regtorch.cli import main
from regtorch.training import _distributed

dead_rank, steps, status_dir = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
rank = int(os.environ["RANK"])
step = _distributed.DistTrainer.dist_step
end_rank = _distributed.end_rank


def dying_step(self, xb, yb):
    loss = step(self, xb, yb)
    if rank == dead_rank and self.state.step + 1 >= steps:
        os._exit(1)
    return loss


def recording_end_rank(status):
    (status_dir / f"rank{rank}").write_text(str(status))
    end_rank(status)


_distributed.DistTrainer.dist_step = dying_step
_distributed.end_rank = recording_end_rank
sys.exit(main(sys.argv[4:]))
