"""``regtorch report RUN_DIR``: redraw the plots and print the summary of a finished run."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from regtorch.training._checkpoint import load_checkpoint
from regtorch.training._compare import format_compare_table
from regtorch.training._errors import UsageError
from regtorch.training._metrics import format_layer_table, read_metrics
from regtorch.training._path import format_path_table
from regtorch.training._progress import Reporter
from regtorch.training._run import result_line
from regtorch.training._rundir import read_json

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


def run_report(run_dir: Path | str, *, reporter: Reporter | None = None, plots: bool = True) -> Any:
    """Print the summary of the run, comparison or path in ``run_dir`` and redraw its plots.

    Returns:
        The summary dict of a training run, or the rows of ``compare.csv``/``path.csv``.

    Raises:
        UsageError: If ``run_dir`` holds no regtorch output.
    """
    reporter = reporter or Reporter()
    out = Path(run_dir)
    if not out.is_dir():
        raise UsageError(f"'{out}' is not a folder")
    note = None
    if (out / "compare.csv").exists():
        rows = _read_csv(out / "compare.csv")
        reporter.result(format_compare_table(rows))
        if plots:
            from regtorch.training._plots import draw_compare_plot

            note = draw_compare_plot(out / "compare.png", rows)
        result: Any = rows
    elif (out / "path.csv").exists():
        rows = _read_csv(out / "path.csv")
        reporter.result(format_path_table(rows))
        if plots:
            from regtorch.training._plots import draw_path_plot

            note = draw_path_plot(out / "path.png", rows)
        result = rows
    elif (out / "summary.json").exists() or (out / "metrics.jsonl").exists():
        metrics = read_metrics(out)
        if plots and any(r.get("kind") == "epoch" for r in metrics):
            from regtorch.training._plots import draw_run_plots

            note = draw_run_plots(out, metrics, _checkpoint_weights(out / "checkpoint.pt"))
        if not (out / "summary.json").exists():
            epochs = sum(1 for r in metrics if r.get("kind") == "epoch")
            reporter.result(
                f"the run in '{out}' is not finished ({epochs} epoch(s) logged); continue it "
                f"with: regtorch train --out {out} --resume"
            )
            return {"status": "unfinished", "epochs": epochs}
        result = read_json(out / "summary.json")
        reporter.line(format_layer_table(result["layers"]))
        if isinstance(result.get("shrink"), dict):
            from regtorch.training._sparse import format_shrink

            reporter.result(format_shrink(result["shrink"], int(result.get("n_test") or 0)))
        reporter.result(result_line(result, out))
    else:
        raise UsageError(
            f"'{out}' holds no regtorch run (no summary.json, metrics.jsonl, compare.csv or path.csv)"
        )
    if note:
        reporter.warn(note)
    return result
