"""What a finished run reports: ``summary.json``, its one-line result, and reading it back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

import regtorch
from regtorch.training._errors import UsageError
from regtorch.training._loop import Trainer, evaluate
from regtorch.training._metrics import format_layer_table, layer_rows, weight_sparsity
from regtorch.training._parts import PenaltyParts
from regtorch.training._rundir import read_json
from regtorch.training._session import Session

__all__ = ["read_summary", "result_line", "summarize"]


def summarize(
    session: Session, trainer: Trainer, *, wall_time_s: float, status: str = "completed"
) -> dict[str, Any]:
    """Evaluate the final model on every split and return the ``summary.json`` content."""
    data, model, cfg = session.data, session.model, session.cfg
    train_loss, train_acc = evaluate(model, data.x_train, data.y_train)
    test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
    val_loss = val_acc = None
    if data.x_val is not None and data.y_val is not None and data.n_val:
        val_loss, val_acc = evaluate(model, data.x_val, data.y_val)
    parts = PenaltyParts(session.regularizer).values()
    penalty = float(sum(parts.values()))
    stats = weight_sparsity(model)
    reg = session.regularizer
    state = trainer.state
    return {
        "status": status,
        "label": cfg.label or cfg.penalty,
        "dataset": data.name,
        "n_train": data.n_train,
        "n_val": data.n_val,
        "n_test": data.n_test,
        "model": cfg.model,
        "parameters": sum(p.numel() for p in model.parameters()),
        "shrunk_parameters": _shrunk_parameters(model, data.x_test),
        "penalty_name": _penalty_name(reg),
        "mode": None if reg is None else reg.mode,
        "epochs": state.epoch,
        "steps": state.step,
        "train_accuracy": train_acc,
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "generalization_gap": train_acc - test_acc,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "test_loss": test_loss,
        "data_loss": train_loss,
        "penalty": penalty,
        "penalty_parts": parts,
        "objective": train_loss + penalty,
        "zero_fraction": stats.zero_fraction,
        "zeros": stats.zeros,
        "weights": stats.numel,
        "zero_neurons": stats.zero_groups,
        "neurons": stats.groups,
        "weight_l1": stats.l1_norm,
        "weight_l2": stats.l2_norm,
        "layers": layer_rows(stats),
        "threads": session.threads,
        "timing": {
            "wall_time_s": wall_time_s,
            "train_time_s": state.train_time_s,
            "samples_per_s": state.samples / state.train_time_s if state.train_time_s else None,
        },
    }


def _penalty_name(reg: regtorch.Regularizer | None) -> str:
    if reg is None:
        return "none"
    rules = reg.rules
    if len(rules) == 1:
        return repr(reg.penalties[0])
    return " + ".join(
        f"{r.selection if isinstance(r.selection, str) else 'other weights'}: {r.penalty!r}" for r in rules
    )


def _shrunk_parameters(model: nn.Module, x: torch.Tensor) -> int | None:
    """What ``--shrink`` would leave (None under FSDP2, where parameters are shards)."""
    if any(hasattr(p, "full_tensor") for p in model.parameters()) or not len(x):
        return None
    from regtorch.training._sparse import shrunk_parameters

    return shrunk_parameters(model, x[:1])


def result_line(summary: dict[str, Any], out: Path) -> str:
    """Return the one-line result of a run."""
    return (
        f"test accuracy {summary['test_accuracy']:.2%} (train {summary['train_accuracy']:.2%}) | "
        f"data loss {summary['data_loss']:.4f} | penalty {summary['penalty']:.4g} | "
        f"zero weights {summary['zero_fraction']:.1%} | zero neurons "
        f"{summary['zero_neurons']}/{summary['neurons']} | "
        f"{summary['timing']['wall_time_s']:.1f}s | {out}"
    )


def read_summary(path: Path) -> dict[str, Any]:
    """Read a run's ``summary.json`` and check that it holds what the result line and the
    layer table show.

    Raises:
        UsageError: If it is unreadable or damaged.
    """
    summary = read_json(path)
    try:
        result_line(summary, path.parent)
        format_layer_table(summary["layers"])
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as exc:
        raise UsageError(
            f"'{path}' is damaged ({type(exc).__name__}: {exc}); remove it and continue the run with "
            "--resume to write it again"
        ) from None
    return summary
