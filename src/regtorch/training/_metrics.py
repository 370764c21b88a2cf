"""Metrics of a run: the penalty's parts, ``metrics.jsonl``/``metrics.csv``, sparsity and tables."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

import regtorch
from regtorch.training._files import open_append, read_regular_bytes
from regtorch.training._parts import part_keys

__all__ = [
    "METRIC_COLUMNS",
    "MetricsWriter",
    "clean_json",
    "format_layer_table",
    "layer_rows",
    "metric_columns",
    "read_metrics",
    "weight_sparsity",
]

#: The columns of ``metrics.csv`` besides the penalty parts (``metrics.jsonl`` has the same keys,
#: empty ones left out); :func:`metric_columns` inserts a column per registered penalty after "penalty".
METRIC_COLUMNS = (
    "kind",
    "epoch",
    "batch",
    "step",
    "loss",
    "data_loss",
    "penalty",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "zero_fraction",
    "zero_neurons",
    "neurons",
    "weight_l2",
    "time_s",
)

def clean_json(value: Any) -> Any:
    """Replace NaN and infinities by ``None`` (JSON has no such numbers), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def metric_columns() -> tuple[str, ...]:
    """The columns of ``metrics.csv``: :data:`METRIC_COLUMNS` with a column per penalty part key."""
    at = METRIC_COLUMNS.index("penalty") + 1
    return (*METRIC_COLUMNS[:at], *part_keys(), *METRIC_COLUMNS[at:])


def is_metrics_header(columns: Sequence[str]) -> bool:
    """Whether ``columns`` is a ``metrics.csv`` header: :data:`METRIC_COLUMNS` with part keys
    (lower-case names) after ``penalty`` — the registry of the run that wrote it may differ."""
    at = METRIC_COLUMNS.index("penalty") + 1
    parts = list(columns[at : len(columns) - (len(METRIC_COLUMNS) - at)])
    rebuilt = (*METRIC_COLUMNS[:at], *parts, *METRIC_COLUMNS[at:])
    known = all(p.isidentifier() and p == p.lower() and p not in METRIC_COLUMNS for p in parts)
    return tuple(columns) == rebuilt and known


class MetricsWriter:
    """Appends rows to ``metrics.jsonl`` and ``metrics.csv``; knows their sizes for resuming.

    The files are opened without following symbolic links (a link planted in the run folder is
    refused, never written through).

    Args:
        run_dir: The run folder.
    """

    def __init__(self, run_dir: Path) -> None:
        self.jsonl_path = run_dir / "metrics.jsonl"
        self.csv_path = run_dir / "metrics.csv"
        self.columns = metric_columns()
        """The columns rows are written in: a resumed file keeps its own header's."""

    def reset(self, offsets: dict[str, int] | None = None) -> None:
        """Truncate both files to ``offsets`` (from :meth:`offsets`), or empty them."""
        offsets = offsets or {}
        for key, path in (("jsonl", self.jsonl_path), ("csv", self.csv_path)):
            size = int(offsets.get(key, 0))
            with open_append(path, text=False) as f:
                f.truncate(size)
        if self.csv_path.stat().st_size == 0:
            self.columns = metric_columns()
            with open_append(self.csv_path) as f:
                csv.writer(f).writerow(self.columns)
        else:
            first = read_regular_bytes(self.csv_path).split(b"\n", 1)[0]
            header = first.decode("utf-8", errors="replace").rstrip("\r").split(",")
            if is_metrics_header(header):
                self.columns = tuple(header)

    def offsets(self) -> dict[str, int]:
        """Return the current size in bytes of each file."""
        return {
            "jsonl": self.jsonl_path.stat().st_size if self.jsonl_path.exists() else 0,
            "csv": self.csv_path.stat().st_size if self.csv_path.exists() else 0,
        }

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (keys from :func:`metric_columns`)."""
        row = clean_json(row)
        with open_append(self.jsonl_path) as f:
            f.write(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n")
        buffer = io.StringIO()
        csv.writer(buffer).writerow(["" if row.get(c) is None else row[c] for c in self.columns])
        with open_append(self.csv_path) as f:
            f.write(buffer.getvalue())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Return the rows of ``run_dir/metrics.jsonl`` (skipping a torn last line)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def weight_sparsity(model: nn.Module) -> regtorch.Stats:
    """Return :func:`regtorch.sparsity` of the model's weight matrices and filters.

    Zero groups are zero rows: output neurons (or filters) whose incoming weights are all 0.
    """
    return regtorch.sparsity(model, "weights")


def layer_rows(stats: regtorch.Stats) -> list[dict[str, Any]]:
    """Return one JSON-ready dict per parameter of ``stats``."""
    return [
        {
            "name": p.name,
            "shape": list(p.shape),
            "parameters": p.numel,
            "zeros": p.zeros,
            "zero_fraction": p.zero_fraction,
            "zero_neurons": p.zero_groups,
            "neurons": p.groups,
            "l1_norm": p.l1_norm,
            "l2_norm": p.l2_norm,
        }
        for p in stats.parameters
    ]


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> str:
    """Return a plain-text table; ``align`` holds ``l``/``r`` per column (default: first left)."""
    rows = [list(r) for r in rows]
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align, strict=False)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(headers), rule, *(fmt(r) for r in rows)])


def format_layer_table(layers: Sequence[dict[str, Any]]) -> str:
    """Return the per-layer summary: parameters, exact zeros, zero neurons and norms."""
    rows = []
    for layer in layers:
        rows.append(
            [
                layer["name"],
                "x".join(map(str, layer["shape"])),
                f"{layer['parameters']:,}",
                f"{layer['zeros']:,}",
                f"{100 * layer['zero_fraction']:.1f}%",
                f"{layer['zero_neurons']}/{layer['neurons']}",
                f"{layer['l1_norm']:.4g}",
                f"{layer['l2_norm']:.4g}",
            ]
        )
    total = sum(la["parameters"] for la in layers)
    zeros = sum(la["zeros"] for la in layers)
    rows.append(
        [
            "total",
            "",
            f"{total:,}",
            f"{zeros:,}",
            f"{100 * zeros / max(total, 1):.1f}%",
            f"{sum(la['zero_neurons'] for la in layers)}/{sum(la['neurons'] for la in layers)}",
            f"{sum(la['l1_norm'] for la in layers):.4g}",
            f"{math.sqrt(sum(la['l2_norm'] ** 2 for la in layers)):.4g}",
        ]
    )
    headers = ["layer", "shape", "params", "zeros", "zero %", "zero neurons", "L1 norm", "L2 norm"]
    return format_table(headers, rows, "llrrrrrr")
