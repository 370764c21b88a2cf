"""Metrics of a run: the penalty's parts, ``metrics.jsonl``/``metrics.csv``, sparsity and tables."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import regtorch
from regtorch.training._files import open_append

__all__ = [
    "METRIC_COLUMNS",
    "MetricsWriter",
    "PenaltyParts",
    "clean_json",
    "format_layer_table",
    "format_log_line",
    "layer_rows",
    "read_metrics",
    "weight_sparsity",
]

#: The columns of ``metrics.csv`` (``metrics.jsonl`` has the same keys, empty ones left out).
METRIC_COLUMNS = (
    "kind",
    "epoch",
    "batch",
    "step",
    "loss",
    "data_loss",
    "penalty",
    "l1",
    "l2",
    "group",
    "lp",
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

_PART_LABELS = {"l1": "L1", "l2": "L2", "group": "group lasso", "lp": "Lp"}


class PenaltyParts:
    """Splits a regularizer's penalty into its L1, L2, group-lasso and Lp parts, for logging.

    ``ElasticNet(l1, l2)`` counts as ``L1(l1)`` plus ``L2(l2)``; a sum adds its terms' parts.
    Values include the regularizer's current strength factor.

    Args:
        regularizer: A regularizer with one penalty (as ``regtorch train`` builds), or None.
    """

    def __init__(self, regularizer: regtorch.Regularizer | None) -> None:
        self.regularizer = regularizer
        self.parts: list[tuple[str, regtorch.Penalty, list[torch.Tensor]]] = []
        if regularizer is None:
            return
        rules = getattr(regularizer, "_rules", None)
        if rules is not None:
            per_rule = [(r.penalty, list(r.params)) for r in rules]
        else:  # pragma: no cover - a regularizer without per-layer rules
            per_rule = [(p, regularizer.parameters()) for p in regularizer.penalties]
        for penalty, params in per_rule:
            for term in penalty.terms():
                if isinstance(term, regtorch.ElasticNet):
                    self.parts += [
                        ("l1", regtorch.L1(term.l1), params),
                        ("l2", regtorch.L2(term.l2), params),
                    ]
                elif isinstance(term, regtorch.L1):
                    self.parts.append(("l1", term, params))
                elif isinstance(term, regtorch.L2):
                    self.parts.append(("l2", term, params))
                elif isinstance(term, regtorch.GroupLasso):
                    self.parts.append(("group", term, params))
                else:
                    self.parts.append(("lp", term, params))
        self.names = sorted({name for name, _, _ in self.parts}, key=list(_PART_LABELS).index)
        if self.names and set(self.names) <= {"l1", "l2"}:
            self.names = ["l1", "l2"]  # the tutorial's line always shows both

    def values(self) -> dict[str, float]:
        """Return each part's current value (0.0 for a part the penalty lacks)."""
        if self.regularizer is None:
            return {}
        factor = self.regularizer.factor()
        out = dict.fromkeys(self.names, 0.0)
        with torch.no_grad():
            for name, penalty, params in self.parts:
                out[name] += factor * float(penalty.value(params))
        return out


def format_log_line(batch: int, loss: float, parts: dict[str, float]) -> str:
    """Return the tutorial's line: ``Loss after mini-batch N: X (of which A L1 loss; B L2 loss)``.

    Without a penalty the parenthesis is left out; a group lasso or Lp penalty names its own
    parts (``(of which A group lasso loss)``).
    """
    text = f"Loss after mini-batch {batch:5d}: {loss:.3f}"
    if parts:
        inner = "; ".join(f"{value:.3f} {_PART_LABELS[name]} loss" for name, value in parts.items())
        text += f" (of which {inner})"
    return text


def clean_json(value: Any) -> Any:
    """Replace NaN and infinities by ``None`` (JSON has no such numbers), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


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

    def reset(self, offsets: dict[str, int] | None = None) -> None:
        """Truncate both files to ``offsets`` (from :meth:`offsets`), or empty them."""
        offsets = offsets or {}
        for key, path in (("jsonl", self.jsonl_path), ("csv", self.csv_path)):
            size = int(offsets.get(key, 0))
            with open_append(path, text=False) as f:
                f.truncate(size)
        if self.csv_path.stat().st_size == 0:
            with open_append(self.csv_path) as f:
                csv.writer(f).writerow(METRIC_COLUMNS)

    def offsets(self) -> dict[str, int]:
        """Return the current size in bytes of each file."""
        return {
            "jsonl": self.jsonl_path.stat().st_size if self.jsonl_path.exists() else 0,
            "csv": self.csv_path.stat().st_size if self.csv_path.exists() else 0,
        }

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (keys from :data:`METRIC_COLUMNS`)."""
        row = clean_json(row)
        with open_append(self.jsonl_path) as f:
            f.write(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n")
        buffer = io.StringIO()
        csv.writer(buffer).writerow(["" if row.get(c) is None else row[c] for c in METRIC_COLUMNS])
        with open_append(self.csv_path) as f:
            f.write(buffer.getvalue())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Return the rows of ``run_dir/metrics.jsonl`` (skipping a torn last line)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
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
