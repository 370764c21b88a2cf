"""``regtorch path``: a regularization path, strengths large to small, each stage warm-started."""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import regtorch
from regtorch.training._build import build_optimizer, build_penalty, build_regularizer
from regtorch.training._checkpoint import (
    atomic_write,
    capture_rng,
    damaged,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from regtorch.training._config import TrainConfig
from regtorch.training._errors import UsageError
from regtorch.training._loop import Trainer, evaluate
from regtorch.training._metrics import format_table, weight_sparsity
from regtorch.training._penalty_spec import parse_spec
from regtorch.training._progress import Reporter
from regtorch.training._resume import check_model_state
from regtorch.training._rundir import (
    check_out_dir,
    default_out_dir,
    empty_run_dir,
    read_json,
    write_run_config,
)
from regtorch.training._runlock import release_run_dir
from regtorch.training._session import build_session, load_data

__all__ = ["PATH_COLUMNS", "estimate_max_strength", "format_path_table", "run_path", "strengths"]

PATH_COLUMNS = (
    "stage",
    "strength",
    "train_accuracy",
    "val_accuracy",
    "test_accuracy",
    "data_loss",
    "penalty",
    "zero_fraction",
    "zeros",
    "weights",
    "zero_neurons",
    "neurons",
    "weight_l2",
    "time_s",
)
_ADAPTIVE = ("adam", "adamw", "rmsprop")


def stage_penalty(cfg: TrainConfig, strength: float) -> regtorch.Penalty:
    """Return the penalty of the path's stage at ``strength`` λ.

    For penalties whose strengths scale linearly it is ``λ × unit``, the penalty at strength 1:
    ``l1``: ``L1(1)``; ``l2``: ``L2(1)``; ``elasticnet``: ``L1(ρ) + L2((1 − ρ)/2)``, scikit-learn's
    ``alpha = 1`` with ``ρ = --l1-ratio``; ``lp``: ``Lp(p, 1)``; ``group``: ``GroupLasso(1)``;
    ``sparse-group``: ``L1(ρ) + GroupLasso(1 − ρ)``; a spec with arguments (``lp:p=3``) is the
    unit as given. Other penalties (MCP, SCAD) are rebuilt with ``strength = λ`` and their other
    arguments unchanged.
    """
    spec = parse_spec(cfg.penalty)
    ratio = 0.5 if cfg.l1_ratio is None else cfg.l1_ratio
    if spec.name == "ElasticNet" and not spec.arguments:
        return strength * regtorch.ElasticNet.from_sklearn(alpha=1.0, l1_ratio=ratio)
    if spec.name == "sparse-group":
        return strength * (regtorch.L1(ratio) + regtorch.GroupLasso(1.0 - ratio, groups=cfg.groups))
    if regtorch.penalty_class(spec.name).linear_in_strength:
        unit = build_penalty(cfg.replace(l1=1.0, l2=1.0, strength=1.0, alpha=None))
        assert unit is not None
        return strength * unit
    spec.arguments["strength"] = strength
    return spec.build()


def strengths(high: float, low: float, steps: int) -> list[float]:
    """Return ``steps`` strengths log-spaced from ``high`` down to ``low``."""
    if steps == 1:
        return [high]
    ratio = math.log(low / high) / (steps - 1)
    return [high * math.exp(ratio * k) for k in range(steps)]


def estimate_max_strength(cfg: TrainConfig, model: torch.nn.Module, x, y) -> float:
    """Estimate a strength at which almost every regularized weight is exactly zero.

    The lasso's ``λ_max`` is the dual norm of the data loss's gradient at the initial weights
    (``max |g|`` for L1 terms, the largest group norm of ``g`` for group terms, divided by the
    term's share). At ``λ_max`` a ReLU network collapses to all-zero weights, a stationary point
    that a warm-started path never leaves, so the estimate is ``λ_max / 2``: on the digits MLP
    that leaves about 95% of the weights exactly zero and the network still learning. With
    adaptive optimizers in prox mode a step moves each weight by about ``lr`` and the prox step
    is ``lr·λ``, so the per-element ``λ_max`` is about 1 instead. For penalties without exact
    zeros (L2, Lp) it is the strength at which the initial penalty is 10× the data loss. Terms
    count by their slope at 0 (``_slope_at_zero``), so MCP and SCAD are estimated as L1 is.
    """
    reg = build_regularizer(cfg, model, stage_penalty(cfg, 1.0))
    assert reg is not None
    params = reg.parameters()
    sparse = [(t, _slope_at_zero(t)) for t in reg.penalties[0].terms()]
    sparse = [(t, slope) for t, slope in sparse if slope > 0]
    model.zero_grad(set_to_none=True)
    n = min(4096, int(x.shape[0]))
    loss = F.cross_entropy(model(x[:n]), y[:n])
    if not sparse:
        with torch.no_grad():
            return 10.0 * float(loss) / max(float(reg.penalty()), 1e-12)
    loss.backward()
    # A parameter the loss does not reach has no .grad: its gradient is zero.
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params]
    adaptive = cfg.optimizer in _ADAPTIVE and cfg.mode == "prox"
    estimates = []
    for term, slope in sparse:
        if not isinstance(term, regtorch.GroupLasso):
            dual = 1.0 if adaptive else max(float(g.abs().max()) for g in grads)
        elif adaptive:
            dual = max(math.sqrt(p[0].numel()) if p.ndim > 1 else 1.0 for p in params)
        else:
            dual = max(float(term.norms(g).max()) for g in grads)
        estimates.append(dual / slope)
    model.zero_grad(set_to_none=True)
    return 0.5 * min(estimates)


def _slope_at_zero(term: regtorch.Penalty) -> float:
    """How steeply ``term`` rises from 0: its λ for L1-like terms (L1, elastic net's L1 part, MCP,
    SCAD), the strength of a group lasso, and 0 for terms without exact zeros (L2, Lp with p > 1)."""
    if isinstance(term, regtorch.GroupLasso):
        return term.strength
    if not term.elementwise:
        return 0.0
    eps = 1e-9
    slope = float(term.value(torch.tensor([eps], dtype=torch.float64))) / eps
    return slope if slope > 1e-6 else 0.0


def _stage_row(stage: int, strength: float, session, reg, seconds: float) -> dict[str, Any]:
    data, model = session.data, session.model
    train_loss, train_acc = evaluate(model, data.x_train, data.y_train)
    _, test_acc = evaluate(model, data.x_test, data.y_test)
    val_acc = None
    if data.x_val is not None and data.n_val:
        _, val_acc = evaluate(model, data.x_val, data.y_val)
    stats = weight_sparsity(model)
    with torch.no_grad():
        penalty = float(reg.penalty())
    return {
        "stage": stage,
        "strength": strength,
        "train_accuracy": train_acc,
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "data_loss": train_loss,
        "penalty": penalty,
        "zero_fraction": stats.zero_fraction,
        "zeros": stats.zeros,
        "weights": stats.numel,
        "zero_neurons": stats.zero_groups,
        "neurons": stats.groups,
        "weight_l2": stats.l2_norm,
        "time_s": seconds,
    }


def write_path_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``path.csv`` atomically, one row per strength."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PATH_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in PATH_COLUMNS})
    atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))


def format_path_table(rows: list[dict[str, Any]]) -> str:
    """Return the table ``regtorch path`` prints."""
    body = [
        [
            str(r["stage"]),
            f"{float(r['strength']):.3g}",
            f"{100 * float(r['train_accuracy']):.1f}%",
            f"{100 * float(r['test_accuracy']):.1f}%",
            f"{float(r['data_loss']):.4f}",
            f"{float(r['penalty']):.4f}",
            f"{100 * float(r['zero_fraction']):.1f}%",
            f"{r['zero_neurons']}/{r['neurons']}",
            f"{float(r['weight_l2']):.2f}",
        ]
        for r in rows
    ]
    headers = [
        "stage",
        "strength",
        "train acc",
        "test acc",
        "data loss",
        "penalty",
        "zero weights",
        "zero neurons",
        "‖w‖₂",
    ]
    return format_table(headers, body, "r" * len(headers))


def run_path(
    base: TrainConfig,
    out_dir: Path | str | None = None,
    *,
    steps: int = 8,
    max_strength: float | None = None,
    min_strength: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    explicit: Collection[str] | None = None,
    reporter: Reporter | None = None,
    plots: bool = True,
) -> list[dict[str, Any]]:
    """Trace a regularization path and write ``path.csv``, ``path.png`` and a checkpoint.

    Each stage trains ``base.epochs`` epochs with a fresh optimizer from the previous stage's
    weights (warm start, as glmnet and glm-saga do), at strengths log-spaced from ``max_strength``
    down to ``min_strength`` (default ``max_strength / 1000``).

    Returns:
        One row per strength (the columns of ``path.csv``).

    Raises:
        UsageError: For bad input, e.g. ``--penalty none`` or ``--min`` above ``--max``.
    """
    reporter = reporter or Reporter()
    out = Path(out_dir) if out_dir is not None else default_out_dir("path")
    completed = False
    try:
        kind = check_out_dir(out, resume=resume, overwrite=overwrite, command="path")
        rows = _path(out, kind, base, steps, max_strength, min_strength, explicit, reporter, plots)
        completed = True
        return rows
    finally:
        release_run_dir(out, completed=completed)


def _path(
    out: Path,
    kind: str,
    base: TrainConfig,
    steps: int,
    max_strength: float | None,
    min_strength: float | None,
    explicit: Collection[str] | None,
    reporter: Reporter,
    plots: bool,
) -> list[dict[str, Any]]:
    """:func:`run_path` in the folder ``out`` it claimed."""
    state = None
    if kind == "resume":
        saved = read_json(out / "config.json")
        if saved.get("command") != "path":
            raise UsageError(f"'{out}' holds a regtorch {saved.get('command')} run, not path")
        saved_base = TrainConfig.from_dict(saved["base"])
        for name in explicit if explicit is not None else ():
            if name in saved_base.__dataclass_fields__ and getattr(base, name) != getattr(saved_base, name):
                raise UsageError(
                    f"--{name.replace('_', '-')} differs from the path in '{out}'; a resumed "
                    "path keeps its configuration"
                )
        base = saved_base
        steps, max_strength, min_strength = saved["steps"], saved["max"], saved["min"]
        if (out / "checkpoint.pt").exists():
            state = load_checkpoint(out / "checkpoint.pt")
    if base.penalty == "none":
        raise UsageError("regtorch path needs a penalty: give --penalty l1, elasticnet, group, …")
    cfg = base.resolved()
    threads_before = torch.get_num_threads()
    try:
        data = load_data(cfg)
        session = build_session(cfg, data, penalty=stage_penalty(cfg, 1.0))
        if max_strength is None:
            max_strength = estimate_max_strength(cfg, session.model, data.x_train, data.y_train)
        min_strength = max_strength / 1000 if min_strength is None else min_strength
        if min_strength > max_strength:
            raise UsageError(f"--min {min_strength:g} is larger than --max {max_strength:g}")
        values = strengths(max_strength, min_strength, steps)
        if state is not None:
            check_path_state(state, session.model, values, out / "checkpoint.pt")
        if kind == "overwrite":
            empty_run_dir(out)
        write_run_config(out, "path", base=cfg.to_dict(), steps=steps, max=max_strength, min=min_strength)
        return _trace(session, out, values, state, reporter, plots)
    finally:
        torch.set_num_threads(threads_before)


def check_path_state(state: dict[str, Any], model: torch.nn.Module, values: list[float], path: Path) -> None:
    """Check a path checkpoint against the rebuilt model and the path's strengths before resuming.

    Raises:
        UsageError: If the stage, the rows or the strengths are malformed or belong to another
            path, or the model state does not fit ``model``.
    """
    stage, rows, saved = state.get("stage"), state.get("rows"), state.get("strengths")
    if not isinstance(stage, int) or isinstance(stage, bool) or not 0 <= stage <= len(values):
        raise damaged(path, f"its stage is {stage!r}, not an integer in [0, {len(values)}]")
    if not isinstance(rows, list) or len(rows) != stage or not all(isinstance(r, dict) for r in rows):
        raise damaged(path, f"it records stage {stage} but not {stage} result row(s)")
    if not isinstance(saved, list) or len(saved) != len(values) or not all(
        isinstance(v, float) and math.isclose(v, w, rel_tol=1e-12) for v, w in zip(saved, values, strict=True)
    ):
        raise damaged(path, "its strengths are not this path's (see config.json)")
    check_model_state(state["model"], model, path)
    for key in ("torch", "batches"):
        try:
            torch.Generator().set_state(state["rng"][key])  # a spare generator: nothing changes yet
        except RuntimeError:
            raise damaged(path, f"its {key!r} random number generator state is invalid") from None


def _trace(session, out: Path, values: list[float], state, reporter: Reporter, plots: bool):
    cfg, data, model = session.cfg, session.data, session.model
    rows: list[dict[str, Any]] = []
    if state is not None:
        model.load_state_dict(state["model"])
        restore_rng(state["rng"], session.generator)
        rows = list(state["rows"])
        reporter.line(f"Resuming '{out}' after stage {len(rows)} of {len(values)}")
    reporter.line(
        f"Path of {cfg.penalty} ({cfg.mode} mode) on {data.name}: {len(values)} strengths from "
        f"{values[0]:.3g} down to {values[-1]:.3g}, {cfg.epochs} epoch(s) each, warm-started"
    )
    for stage in range(len(rows) + 1, len(values) + 1):
        strength = values[stage - 1]
        started = time.perf_counter()
        optimizer = build_optimizer(cfg, model)
        reg = build_regularizer(cfg, model, stage_penalty(cfg, strength))
        assert reg is not None  # a stage penalty is given
        handle = reg.attach(optimizer) if reg.mode != "loss" else None
        trainer = Trainer(
            model,
            optimizer,
            data.x_train,
            data.y_train,
            regularizer=reg,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            generator=session.generator,
            reporter=Reporter(reporter.stream, silent=True, progress=reporter.progress),
            flush_denormal=cfg.flush_denormal,
        )
        trainer.fit()
        if handle is not None:
            handle.remove()
        row = _stage_row(stage, strength, session, reg, time.perf_counter() - started)
        rows.append(row)
        reporter.line(
            f"[{stage}/{len(values)}] strength {strength:.3g}: test accuracy "
            f"{row['test_accuracy']:.2%} | zero weights {row['zero_fraction']:.1%} | "
            f"zero neurons {row['zero_neurons']}/{row['neurons']}"
        )
        write_path_csv(out / "path.csv", rows)
        save_checkpoint(
            out / "checkpoint.pt",
            {
                "stage": stage,
                "model": model.state_dict(),
                "rng": capture_rng(session.generator),
                "rows": rows,
                "strengths": values,
            },
        )
    reporter.result("")
    reporter.result(format_path_table(rows))
    if plots:
        from regtorch.training._plots import draw_path_plot

        note = draw_path_plot(out / "path.png", rows)
        if note:
            reporter.warn(note)
    reporter.result(f"\nWrote {out / 'path.csv'} and {out / 'path.png'}")
    return rows
