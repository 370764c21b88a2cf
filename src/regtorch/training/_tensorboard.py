"""``regtorch train --tensorboard``: scalars and weight histograms in ``RUN_DIR/tensorboard``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from regtorch.training._errors import UsageError
from regtorch.training._loop import Callback, Trainer

__all__ = ["TensorBoardCallback"]

_SKIP = {"kind", "epoch", "batch", "step"}


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if k not in _SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class TensorBoardCallback(Callback):
    """Logs each step row under ``step/``, each epoch row under ``epoch/`` (loss, penalty parts,
    accuracy, sparsity, lr) and a histogram of every weight matrix at each epoch's end.

    Args:
        log_dir: The event-file folder (``RUN_DIR/tensorboard``).
        histograms: Write weight histograms (off under FSDP2, where parameters are shards).

    Raises:
        UsageError: If the ``tensorboard`` package is not installed, or ``log_dir`` is a link.
    """

    def __init__(self, log_dir: Path, *, histograms: bool = True) -> None:
        if Path(log_dir).is_symlink():
            raise UsageError(
                f"'{log_dir}' is a symbolic link; regtorch never writes a run's files through links: "
                "remove it"
            )
        try:
            from regtorch.integrations.tensorboard import TensorBoardLogger

            self.logger = TensorBoardLogger(log_dir)
        except ImportError as exc:
            raise UsageError(
                f"--tensorboard needs the tensorboard package: pip install tensorboard ({exc})"
            ) from exc
        self.histograms = histograms

    def on_log(self, trainer: Trainer, row: dict[str, Any]) -> None:
        self.logger.log_scalars(row["step"], _numbers(row), prefix="step/")

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        self.logger.log_scalars(row["step"], _numbers(row), prefix="epoch/")
        if self.histograms:
            self.logger.log_weight_histograms(row["step"], trainer.model)
        self.logger.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        self.logger.close()
