"""The training program behind ``regtorch train``, ``compare``, ``path`` and ``report``.

Data stay in memory as tensors (:mod:`regtorch.data`), batches are index slices, and the
regularization goes through :class:`regtorch.Regularizer` in ``loss``, ``grad`` or ``prox``
mode. Each piece is built by its own function (:func:`build_model`, :func:`build_optimizer`,
:func:`build_regularizer`, :func:`build_scheduler`) and the loop offers :class:`Callback` hooks,
so other programs can reuse or replace them.

Examples:
    >>> from regtorch.training import TrainConfig, run_train
    >>> summary = run_train(TrainConfig(penalty="l1", epochs=2), "runs/example")
    >>> summary["test_accuracy"], summary["zero_fraction"]
"""

from __future__ import annotations

from regtorch.training._build import (
    build_model,
    build_optimizer,
    build_penalty,
    build_regularizer,
    build_scheduler,
    choose_threads,
)
from regtorch.training._compare import run_compare
from regtorch.training._config import TrainConfig
from regtorch.training._errors import RunError, RunFailed, UsageError
from regtorch.training._loop import Callback, Trainer, TrainState, evaluate
from regtorch.training._path import run_path
from regtorch.training._progress import Reporter
from regtorch.training._run import run_train
from regtorch.training._session import Session, build_session, load_data

__all__ = [
    "Callback",
    "Reporter",
    "RunError",
    "RunFailed",
    "Session",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "UsageError",
    "build_model",
    "build_optimizer",
    "build_penalty",
    "build_regularizer",
    "build_scheduler",
    "build_session",
    "choose_threads",
    "evaluate",
    "load_data",
    "run_compare",
    "run_path",
    "run_train",
]
