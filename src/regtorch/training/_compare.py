"""``regtorch compare``: several configurations on the same data, split and seed, one table."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from regtorch.training._build import build_penalty
from regtorch.training._checkpoint import atomic_write
from regtorch.training._config import MODES, TrainConfig
from regtorch.training._errors import UsageError
from regtorch.training._metrics import format_table
from regtorch.training._penalty_spec import argument_names, split_spec
from regtorch.training._penalty_spec import parse_spec as penalty_spec
from regtorch.training._progress import Reporter
from regtorch.training._run import run_train
from regtorch.training._rundir import (
    check_out_dir,
    default_out_dir,
    empty_run_dir,
    read_json,
    write_run_config,
)
from regtorch.training._runlock import release_run_dir
from regtorch.training._session import load_data

__all__ = ["COMPARE_COLUMNS", "DEFAULT_CONFIGS", "format_compare_table", "parse_spec", "run_compare"]

#: The configurations ``regtorch compare`` runs when none are given.
DEFAULT_CONFIGS = (
    "none",
    "l1",
    "l2",
    "elasticnet",
    "elasticnet:prox",
    "group:prox",
)

#: Options a configuration may set after its ``NAME[:MODE]``.
SPEC_KEYS = {
    "l1": float,
    "l2": float,
    "alpha": float,
    "l1_ratio": float,
    "p": float,
    "strength": float,
    "step_factor": float,
    "lr": float,
    "weight_decay": float,
    "momentum": float,
    "groups": str,
    "params": str,
    "optimizer": str,
    "label": str,
}

COMPARE_COLUMNS = (
    "config",
    "penalty_name",
    "mode",
    "train_accuracy",
    "val_accuracy",
    "test_accuracy",
    "generalization_gap",
    "data_loss",
    "penalty",
    "zero_fraction",
    "zero_neurons",
    "neurons",
    "weight_l2",
    "parameters",
    "shrunk_parameters",
    "wall_time_s",
    "run_dir",
)


def parse_spec(spec: str, base: TrainConfig) -> TrainConfig:
    """Turn ``NAME[:ITEM,...]`` into a config derived from ``base``.

    ``NAME`` is a ``--penalty`` name (a registered penalty or a shorthand; ``NAME,ITEM,...`` works
    too). Each ``ITEM`` is a
    ``--mode`` (default ``loss``), a ``KEY=VALUE`` argument of the penalty (as in
    ``--penalty NAME:KEY=VALUE``), or a ``KEY=VALUE`` run option with ``_`` or ``-`` (``l1``,
    ``l2``, ``alpha``, ``l1-ratio``, ``p``, ``strength``, ``groups``, ``params``, ``step-factor``,
    ``lr``, ``optimizer``, ``weight-decay``, ``momentum``, ``label``). Examples:
    ``elasticnet:prox,l1=1e-3,l2=1e-4``, ``mcp:prox,strength=3e-3,gamma=3``.

    Raises:
        UsageError: For an unknown name, mode or key, or a value that is not a number.
    """
    head, items = split_spec(spec)
    try:
        name = penalty_spec(head).name
        arguments = argument_names(name) if penalty_spec(head).registered else []
    except UsageError as exc:
        raise UsageError(f"configuration {spec!r}: {str(exc).removeprefix('--penalty: ')}") from None
    mode = ""
    own: list[str] = []
    changes: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq and key.lower() in MODES and not mode:
            mode = key.lower()
        elif eq and key in arguments:
            own.append(f"{key}={value.strip()}")
        elif eq and key in SPEC_KEYS:
            try:
                changes[key] = SPEC_KEYS[key](value.strip())
            except ValueError:
                raise UsageError(
                    f"configuration {spec!r}: {key.replace('_', '-')} must be a number; got {value!r}"
                ) from None
        elif not eq:
            raise UsageError(f"configuration {spec!r}: unknown mode {item!r}; choose from {', '.join(MODES)}")
        else:
            keys = sorted({*arguments, *(k.replace("_", "-") for k in SPEC_KEYS)})
            raise UsageError(
                f"configuration {spec!r}: expected KEY=VALUE with KEY one of {', '.join(keys)}; got {item!r}"
            )
    changes["penalty"] = head.strip().lower() + (":" + ",".join(own) if own else "")
    changes["mode"] = mode or "loss"
    if "label" not in changes:
        changes["label"] = head.strip().lower() if not mode else f"{head.strip().lower()}-{mode}"
    cfg = base.replace(**changes)
    try:
        return cfg.resolved()
    except UsageError as exc:
        raise UsageError(f"configuration {spec!r}: {exc}") from None


def _folder_name(label: str, taken: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "config"
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate)
    return candidate


def _row(label: str, summary: dict[str, Any], folder: str) -> dict[str, Any]:
    return {
        "config": label,
        "penalty_name": summary["penalty_name"],
        "mode": summary["mode"] or "-",
        "train_accuracy": summary["train_accuracy"],
        "val_accuracy": summary["val_accuracy"],
        "test_accuracy": summary["test_accuracy"],
        "generalization_gap": summary["generalization_gap"],
        "data_loss": summary["data_loss"],
        "penalty": summary["penalty"],
        "zero_fraction": summary["zero_fraction"],
        "zero_neurons": summary["zero_neurons"],
        "neurons": summary["neurons"],
        "weight_l2": summary["weight_l2"],
        "parameters": summary.get("parameters"),
        "shrunk_parameters": summary.get("shrunk_parameters"),
        "wall_time_s": summary["timing"]["wall_time_s"],
        "run_dir": folder,
    }


def format_compare_table(rows: Sequence[dict[str, Any]]) -> str:
    """Return the comparison table printed by ``regtorch compare``."""
    headers = [
        "config",
        "mode",
        "train acc",
        "test acc",
        "gap",
        "data loss",
        "penalty",
        "zero weights",
        "zero neurons",
        "‖w‖₂",
        "shrunk params",
        "time",
    ]
    body = []
    for r in rows:
        body.append(
            [
                r["config"],
                r["mode"],
                f"{100 * float(r['train_accuracy']):.1f}%",
                f"{100 * float(r['test_accuracy']):.1f}%",
                f"{100 * float(r['generalization_gap']):+.1f}",
                f"{float(r['data_loss']):.4f}",
                f"{float(r['penalty']):.4f}",
                f"{100 * float(r['zero_fraction']):.1f}%",
                f"{r['zero_neurons']}/{r['neurons']}",
                f"{float(r['weight_l2']):.2f}",
                _shrunk_cell(r),
                f"{float(r['wall_time_s']):.1f}s",
            ]
        )
    return format_table(headers, body, "ll" + "r" * 10)


def _shrunk_cell(row: dict[str, Any]) -> str:
    after, before = row.get("shrunk_parameters"), row.get("parameters")
    if after in (None, "") or before in (None, ""):
        return "-"
    return f"{int(after):,}/{int(before):,}"


def write_compare_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``compare.csv`` atomically, one row per configuration."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COMPARE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in COMPARE_COLUMNS})
    atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))


def run_compare(
    base: TrainConfig,
    specs: Sequence[str] = (),
    out_dir: Path | str | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    explicit: Collection[str] | None = None,
    reporter: Reporter | None = None,
    plots: bool = True,
) -> list[dict[str, Any]]:
    """Train each configuration on the same data, split and seed; write the table and plot.

    Each configuration gets a run folder ``out_dir/<label>/`` (no plots: ``regtorch report``
    draws them); ``out_dir`` gets ``compare.csv``, ``compare.png`` and ``config.json``.

    Args:
        base: Data, model and optimizer options shared by every configuration, and default
            strengths.
        specs: Configurations (:func:`parse_spec`); default :data:`DEFAULT_CONFIGS`.
        out_dir: The folder (default: a new ``runs/compare-<time>``).
        resume: Continue an interrupted comparison (finished configurations are kept).
        overwrite: Replace a previous run in ``out_dir``.
        explicit: With ``resume``, the options the user gave (they must match config.json).
        reporter: Where lines go.
        plots: Draw ``compare.png``.

    Returns:
        One row per configuration (the columns of ``compare.csv``).
    """
    reporter = reporter or Reporter()
    out = Path(out_dir) if out_dir is not None else default_out_dir("compare")
    completed = False
    try:
        kind = check_out_dir(out, resume=resume, overwrite=overwrite, command="compare")
        rows = _compare(out, kind, base, list(specs), explicit, reporter, plots)
        completed = True
        return rows
    finally:
        release_run_dir(out, completed=completed)


def _compare(
    out: Path,
    kind: str,
    base: TrainConfig,
    specs: list[str],
    explicit: Collection[str] | None,
    reporter: Reporter,
    plots: bool,
) -> list[dict[str, Any]]:
    """:func:`run_compare` in the folder ``out`` it claimed."""
    specs = specs or list(DEFAULT_CONFIGS)
    if kind == "resume":
        saved = read_json(out / "config.json")
        if saved.get("command") != "compare":
            raise UsageError(f"'{out}' holds a regtorch {saved.get('command')} run, not compare")
        saved_base = TrainConfig.from_dict(saved["base"])
        for name in explicit if explicit is not None else ():
            if getattr(base, name) != getattr(saved_base, name):
                raise UsageError(
                    f"--{name.replace('_', '-')} differs from the comparison in '{out}'; a "
                    "resumed comparison keeps its configuration"
                )
        base, specs = saved_base, list(saved["configs"])
    base.validate()
    configs = [parse_spec(spec, base) for spec in specs]
    data = load_data(base.resolved())
    if kind == "overwrite":
        empty_run_dir(out)
    write_run_config(out, "compare", base=base.to_dict(), configs=specs)
    child = Reporter(reporter.stream, silent=True, progress=reporter.progress)
    taken: set[str] = set()
    rows = []
    for index, cfg in enumerate(configs, start=1):
        folder = _folder_name(cfg.label, taken)
        run_dir = out / folder
        if run_dir.is_symlink():
            raise UsageError(
                f"'{run_dir}' is a symbolic link; regtorch never reads or writes a run's files through "
                "links: remove it, or start the comparison again with --overwrite"
            )
        penalty = build_penalty(cfg)
        what = "no penalty" if penalty is None else f"{penalty!r}, {cfg.mode} mode"
        reporter.line(f"[{index}/{len(configs)}] {cfg.label}: {what}")
        summary = run_train(cfg, run_dir, resume=run_dir.exists(), reporter=child, plots=False, data=data)
        rows.append(_row(cfg.label, summary, folder))
        reporter.line(
            f"      test accuracy {summary['test_accuracy']:.2%} | zero weights "
            f"{summary['zero_fraction']:.1%} | {summary['timing']['wall_time_s']:.1f}s"
        )
    write_compare_csv(out / "compare.csv", rows)
    reporter.result("")
    reporter.result(format_compare_table(rows))
    if plots:
        from regtorch.training._plots import draw_compare_plot

        note = draw_compare_plot(out / "compare.png", rows)
        if note:
            reporter.warn(note)
    reporter.result(f"\nWrote {out / 'compare.csv'} and {out / 'compare.png'}")
    return rows
