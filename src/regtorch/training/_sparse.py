"""Sparse models after training: masked fine-tuning (``--finetune-epochs``) and ``--shrink``."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import regtorch
from regtorch.training._build import build_scheduler
from regtorch.training._checkpoint import atomic_write
from regtorch.training._loop import Callback, Trainer, evaluate
from regtorch.training._metrics import format_table, weight_sparsity

__all__ = ["FineTune", "format_shrink", "shrink_run", "shrunk_parameters"]


class FineTune(Callback):
    """After ``cfg.epochs`` epochs: detach the penalty, freeze the zeros, train on without it.

    At the switch the learning rate goes back to ``--lr`` and the schedule restarts over the
    fine-tuning epochs. The accuracy and sparsity before fine-tuning are kept in that epoch's
    history row (part of the checkpoint, so a resumed run still reports them).
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.frozen: regtorch.FrozenZeros | None = None

    def _freeze(self, trainer: Trainer) -> None:
        session = self.session
        if session.attached is not None:
            session.attached.remove()
        trainer._loss_mode = False
        self.frozen = regtorch.freeze_zeros(session.model, trainer.optimizer)

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.state.epoch >= self.session.cfg.epochs and self.frozen is None:
            self._freeze(trainer)  # resumed during the fine-tuning

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        cfg = self.session.cfg
        if trainer.state.epoch != cfg.epochs:
            return
        data = self.session.data
        _, test_acc = evaluate(self.session.model, data.x_test, data.y_test)
        row["finetune_before"] = {"test_accuracy": test_acc, "zero_fraction": row["zero_fraction"]}
        self._freeze(trainer)
        for group in trainer.optimizer.param_groups:
            group["lr"] = float(cfg.lr)
            group.pop("initial_lr", None)
        scheduler = build_scheduler(cfg.replace(epochs=cfg.finetune_epochs), trainer.optimizer)
        trainer.scheduler = self.session.scheduler = scheduler
        assert self.frozen is not None  # set by _freeze above
        trainer.reporter.line(
            f"Fine-tuning {cfg.finetune_epochs} epoch(s) without the penalty, "
            f"{self.frozen.frozen_fraction:.1%} of the weights frozen at zero"
        )


def finetune_summary(history: list[dict[str, Any]], summary: dict[str, Any], epochs: int) -> dict | None:
    """Return the ``finetune`` entry of ``summary.json`` (before/after), or None."""
    before = next((r.get("finetune_before") for r in history if r.get("epoch") == epochs), None)
    if before is None:
        return None
    return {
        "epochs": summary["epochs"] - epochs,
        "test_accuracy_before": before["test_accuracy"],
        "test_accuracy_after": summary["test_accuracy"],
        "zero_fraction_before": before["zero_fraction"],
        "zero_fraction_after": summary["zero_fraction"],
    }


def shrunk_parameters(model: nn.Module, example: torch.Tensor) -> int | None:
    """Return the parameter count :func:`regtorch.shrink` would leave, or None if it cannot tell."""
    try:
        return int(regtorch.shrink_report(model, example_input=example).params_after)
    except (ValueError, TypeError, RuntimeError):
        return None


def _dense_bytes(model: nn.Module) -> tuple[bytes, int]:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    data = buffer.getvalue()
    return data, len(data)


@torch.no_grad()
def _inference_ms(model: nn.Module, x: torch.Tensor, repeats: int = 7) -> float:
    """Best-of-``repeats`` milliseconds of one forward pass over ``x`` (eval mode, CPU)."""
    was = model.training
    model.eval()
    model(x)  # warm up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        model(x)
        best = min(best, time.perf_counter() - started)
    model.train(was)
    return 1000 * best


def shrink_run(model: nn.Module, data: Any, out: Path) -> dict[str, Any]:
    """Shrink ``model`` (a copy), save both, and measure them; return ``summary["shrink"]``.

    Writes ``model.pt`` (the trained model's dense ``state_dict``) and ``model-shrunk.rts``
    (the shrunk model's state dict through :func:`regtorch.save_sparse`) into ``out``.
    """
    model = model.cpu().eval()
    x_test, y_test = data.x_test.cpu(), data.y_test.cpu()
    example = x_test[:1]
    report = regtorch.shrink_report(model, example_input=example)
    shrunk = regtorch.shrink(model, example_input=example).eval()
    dense, dense_size = _dense_bytes(model)
    atomic_write(out / "model.pt", lambda f: f.write(dense))
    info = regtorch.save_sparse(shrunk, out / "model-shrunk.rts")
    _, acc_before = evaluate(model, x_test, y_test)
    _, acc_after = evaluate(shrunk, x_test, y_test)
    with torch.no_grad():
        max_diff = float((model(x_test) - shrunk(x_test)).abs().max()) if len(x_test) else 0.0
    return {
        "parameters_before": sum(p.numel() for p in model.parameters()),
        "parameters_after": sum(p.numel() for p in shrunk.parameters()),
        "removed_units": report.removed_units,
        "file_bytes_before": dense_size,
        "file_bytes_after": int(info.file_bytes),
        "test_accuracy_before": acc_before,
        "test_accuracy_after": acc_after,
        "max_logit_difference": max_diff,
        "inference_ms_before": _inference_ms(model, x_test),
        "inference_ms_after": _inference_ms(shrunk, x_test),
        "zero_fraction_after": weight_sparsity(shrunk).zero_fraction,
        "shapes_after": {n: list(p.shape) for n, p in shrunk.state_dict().items()},
        "skipped": list(report.skipped),
        "files": ["model.pt", "model-shrunk.rts"],
    }


def format_shrink(s: dict[str, Any], n_test: int) -> str:
    """Return the before/after table printed by ``--shrink``."""

    def size(n: int) -> str:
        return f"{n / 1024:.1f} KiB"

    rows = [
        ["parameters", f"{s['parameters_before']:,}", f"{s['parameters_after']:,}"],
        ["file size", size(s["file_bytes_before"]), size(s["file_bytes_after"])],
        ["test accuracy", f"{s['test_accuracy_before']:.2%}", f"{s['test_accuracy_after']:.2%}"],
        [
            f"CPU inference ({n_test} ex.)",
            f"{s['inference_ms_before']:.2f} ms",
            f"{s['inference_ms_after']:.2f} ms",
        ],
    ]
    table = format_table(["shrink", "before", "after"], rows, "lrr")
    return (
        f"{table}\n(dense torch.save of the trained model vs save_sparse of the shrunk one; "
        f"{s['removed_units']} neurons removed; largest logit difference {s['max_logit_difference']:.2g})"
    )
