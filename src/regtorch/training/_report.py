"""``regtorch report RUN_DIR``: redraw the plots and print the summary of a finished run."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from regtorch.training._checkpoint import load_checkpoint
from regtorch.training._compare import format_compare_table
from regtorch.training._errors import UsageError
from regtorch.training._files import describe_os_error, open_regular
from regtorch.training._metrics import format_layer_table, read_metrics
from regtorch.training._path import format_path_table
from regtorch.training._progress import Reporter
from regtorch.training._summary import read_summary, result_line

__all__ = ["run_report"]


def _read_csv(path: Path) -> list[dict[str, Any]]:
    def convert(value: str) -> Any:
        if value == "":
            return None
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        return value

    try:
        with path.open(newline="") as f:
            return [{k: convert(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, csv.Error) as exc:
        raise UsageError(f"cannot read '{path}': {exc}") from exc


def _checkpoint_weights(path: Path) -> list[tuple[str, torch.Tensor]]:
    if not path.exists():
        return []
    model = load_checkpoint(path).get("model", {})
    return [
        (name, tensor)
        for name, tensor in model.items()
        if name.endswith("weight") and isinstance(tensor, torch.Tensor) and tensor.ndim >= 2
    ]


def _plots_folder(out: Path, plots_dir: Path | str | None) -> Path | None:
    """Where the plots go: ``plots_dir`` (created), else ``out`` when writable, else None."""
    if plots_dir is not None:
        folder = Path(plots_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--plots-dir: cannot create '{folder}': {describe_os_error(exc)}") from exc
        return folder
    return out if os.access(out, os.W_OK) else None


def _checked(rows: list[dict[str, Any]], table: Callable[[list[dict[str, Any]]], str], path: Path) -> str:
    try:
        return table(rows)
    except (KeyError, ValueError, TypeError) as exc:
        raise UsageError(
            f"'{path}' is damaged ({type(exc).__name__}: {exc}); it was not written by regtorch"
        ) from None


def run_report(
    run_dir: Path | str,
    *,
    reporter: Reporter | None = None,
    plots: bool = True,
    plots_dir: Path | str | None = None,
) -> Any:
    """Print the summary of the run, comparison or path in ``run_dir`` and redraw its plots.

    Nothing in ``run_dir`` is written but the plots; a read-only folder is reported with a note
    instead of redrawn plots (or the plots go to ``plots_dir``).

    Args:
        run_dir: The folder of a train, compare or path run.
        reporter: Where lines go.
        plots: Redraw the PNG plots.
        plots_dir: Draw them into this folder instead of ``run_dir``.

    Returns:
        The summary dict of a training run, or the rows of ``compare.csv``/``path.csv``.

    Raises:
        UsageError: If ``run_dir`` holds no regtorch output, or a damaged one.
    """
    reporter = reporter or Reporter()
    out = Path(run_dir)
    if not out.is_dir():
        raise UsageError(f"'{out}' is not a folder")
    for name in ("compare.csv", "path.csv", "metrics.jsonl"):  # never read a pipe or through a link
        if os.path.lexists(out / name):
            os.close(open_regular(out / name))
    folder = _plots_folder(out, plots_dir) if plots else None
    if plots and folder is None:
        reporter.warn(
            f"'{out}' is read-only: the plots are not redrawn (--plots-dir DIR draws them elsewhere)"
        )
    draw: Callable[[], str | None] | None = None
    if (out / "compare.csv").exists():
        path = out / "compare.csv"
        result: Any = _read_csv(path)
        reporter.result(_checked(result, format_compare_table, path))
        if folder is not None:
            from regtorch.training._plots import draw_compare_plot

            draw = partial(draw_compare_plot, folder / "compare.png", result)
    elif (out / "path.csv").exists():
        path = out / "path.csv"
        result = _read_csv(path)
        reporter.result(_checked(result, format_path_table, path))
        if folder is not None:
            from regtorch.training._plots import draw_path_plot

            draw = partial(draw_path_plot, folder / "path.png", result)
    elif (out / "summary.json").exists() or (out / "metrics.jsonl").exists():
        metrics = read_metrics(out)
        if folder is not None and any(r.get("kind") == "epoch" for r in metrics):
            from regtorch.training._plots import draw_run_plots

            draw = partial(draw_run_plots, folder, metrics, _checkpoint_weights(out / "checkpoint.pt"))
        if not (out / "summary.json").exists():
            _draw(draw, reporter, out)
            epochs = sum(1 for r in metrics if r.get("kind") == "epoch")
            reporter.result(
                f"the run in '{out}' is not finished ({epochs} epoch(s) logged); continue it "
                f"with: regtorch train --out {out} --resume"
            )
            return {"status": "unfinished", "epochs": epochs}
        result = read_summary(out / "summary.json")
        reporter.line(format_layer_table(result["layers"]))
        if isinstance(result.get("shrink"), dict):
            from regtorch.training._sparse import format_shrink

            reporter.result(format_shrink(result["shrink"], int(result.get("n_test") or 0)))
        reporter.result(result_line(result, out))
    else:
        raise UsageError(
            f"'{out}' holds no regtorch run (no summary.json, metrics.jsonl, compare.csv or path.csv)"
        )
    _draw(draw, reporter, out)
    return result


def _draw(draw: Callable[[], str | None] | None, reporter: Reporter, out: Path) -> None:
    if draw is None:
        return
    try:
        note = draw()
    except UsageError as exc:  # a folder that refuses writes
        note = f"the plots were not redrawn: {exc} (--plots-dir DIR draws them elsewhere)"
    if note:
        reporter.warn(note)
