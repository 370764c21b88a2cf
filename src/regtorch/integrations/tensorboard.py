"""TensorBoard helper: scalars and weight histograms through ``torch.utils.tensorboard``.

Requires the ``tensorboard`` package (``pip install tensorboard``, included in
``regtorch[cli]``/``regtorch[all]``); it is imported when a :class:`TensorBoardLogger` is created.

Examples:
    >>> from regtorch.integrations.tensorboard import TensorBoardLogger
    >>> with TensorBoardLogger("runs/exp1") as tb:  # doctest: +SKIP
    ...     tb.log_scalars(step, {"loss": loss, "penalty": reg.penalty()})
    ...     tb.log_weight_histograms(step, model)
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from typing import Any

import torch
from torch import nn

from regtorch import select_parameters
from regtorch.integrations._common import import_framework

__all__ = ["TensorBoardLogger"]


def _scalar(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"The value of {name!r} given to TensorBoardLogger.log_scalars must be a number or a "
                f"one-element tensor; got a tensor of shape {tuple(value.shape)}."
            )
        return float(value.detach())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"The value of {name!r} given to TensorBoardLogger.log_scalars must be a number or a "
            f"one-element tensor; got {type(value).__name__}."
        )
    return float(value)


class TensorBoardLogger:
    """Write scalars and weight histograms to a TensorBoard log directory.

    A thin wrapper of ``torch.utils.tensorboard.SummaryWriter`` for training loops that
    regularize: one call logs a dict of scalars (loss, penalty components, accuracy, sparsity),
    another the histogram of each selected weight tensor — where exact zeros from prox mode show
    as a spike at 0.

    Args:
        log_dir: Directory for the event files (created if missing).
        **writer_kwargs: Passed to ``SummaryWriter`` (e.g. ``flush_secs``).

    Raises:
        ImportError: If the ``tensorboard`` package is not installed.
    """

    def __init__(self, log_dir: str | PathLike[str], **writer_kwargs: Any) -> None:
        import_framework(
            "tensorboard", owner="regtorch.integrations.tensorboard", extra="cli", what="TensorBoard"
        )
        summary = import_framework(
            "torch.utils.tensorboard",
            owner="regtorch.integrations.tensorboard",
            extra="cli",
            what="TensorBoard",
        )
        self.log_dir = str(log_dir)
        self.writer = summary.SummaryWriter(log_dir=self.log_dir, **writer_kwargs)

    def log_scalars(self, step: int, values: Mapping[str, Any], *, prefix: str = "") -> None:
        """Write each ``name: value`` as a scalar at ``step`` (names may contain ``/`` for groups).

        Args:
            step: The global step.
            values: Numbers or one-element tensors; ``None`` values are skipped.
            prefix: Prepended to every name, e.g. ``"train/"``.

        Raises:
            TypeError: For a value that is not a number or a tensor.
            ValueError: For a tensor with more than one element.
        """
        for name, value in values.items():
            if value is None:
                continue
            self.writer.add_scalar(f"{prefix}{name}", _scalar(name, value), global_step=int(step))

    def log_weight_histograms(
        self, step: int, model: nn.Module, params: Any = "weights", *, prefix: str = "weights/"
    ) -> int:
        """Write a histogram of each selected parameter at ``step``.

        Args:
            step: The global step.
            model: The model.
            params: Which parameters (default ``"weights"``); see :func:`regtorch.select_parameters`.
            prefix: Prepended to each parameter name.

        Returns:
            The number of histograms written.
        """
        chosen = select_parameters(model, params, owner="TensorBoardLogger.log_weight_histograms")
        for name, param in chosen:
            values = param.detach().float().cpu()
            self.writer.add_histogram(f"{prefix}{name}", values, global_step=int(step))
        return len(chosen)

    def flush(self) -> None:
        """Write pending events to disk."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
