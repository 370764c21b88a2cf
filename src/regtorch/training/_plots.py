"""PNG plots of runs, comparisons and paths (matplotlib, imported lazily, no pyplot state)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import regtorch
from regtorch.training._checkpoint import atomic_write
from regtorch.training._parts import part_keys

__all__ = ["draw_compare_plot", "draw_path_plot", "draw_run_plots"]

MISSING = "plots skipped: matplotlib is not installed (pip install 'regtorch[cli]')"


def _figure(width: float, height: float, rows: int = 1, cols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def draw_run_plots(
    out: Path, rows: Sequence[dict[str, Any]], weights: Sequence[tuple[str, torch.Tensor]]
) -> str | None:
    """Draw ``loss.png``, ``accuracy.png``, ``sparsity.png`` and ``weights.png`` into ``out``.

    Args:
        out: The run folder.
        rows: The rows of ``metrics.jsonl``.
        weights: ``(name, tensor)`` of each weight matrix for the magnitude histograms.

    Returns:
        A note when plots were skipped (matplotlib missing), else None.
    """
    if not _have_matplotlib():
        return MISSING
    steps = [r for r in rows if r.get("kind") == "step"]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    _loss_plot(out / "loss.png", steps or epochs)
    _accuracy_plot(out / "accuracy.png", epochs)
    _sparsity_plot(out / "sparsity.png", epochs)
    _weights_plot(out / "weights.png", weights)
    return None


def _loss_plot(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    fig, axes = _figure(8, 6, rows=2)
    top, bottom = axes[0][0], axes[1][0]
    x = [r["step"] for r in rows]
    top.plot(x, [r.get("loss") for r in rows], label="loss (data + penalty)")
    top.plot(x, [r.get("data_loss") for r in rows], label="data loss", alpha=0.8)
    top.set_ylabel("loss")
    top.set_title("Loss over training steps")
    top.legend()
    drawn = False
    for key in part_keys():
        label = f"{regtorch.penalty_class(key).name} part"
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            bottom.plot(x, values, label=label)
            drawn = True
    if not drawn:
        bottom.text(0.5, 0.5, "no penalty", ha="center", va="center", transform=bottom.transAxes)
    else:
        bottom.legend()
    bottom.set_xlabel("optimizer step")
    bottom.set_ylabel("penalty")
    _save(fig, path)


def _accuracy_plot(path: Path, epochs: Sequence[dict[str, Any]]) -> None:
    fig, axes = _figure(7, 4.5)
    ax = axes[0][0]
    x = [r["epoch"] for r in epochs]
    ax.plot(x, [100 * r["train_accuracy"] for r in epochs], marker="o", label="train")
    if any(r.get("val_accuracy") is not None for r in epochs):
        ax.plot(
            x,
            [None if r.get("val_accuracy") is None else 100 * r["val_accuracy"] for r in epochs],
            marker="o",
            label="validation",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy per epoch")
    ax.legend()
    _save(fig, path)


def _sparsity_plot(path: Path, epochs: Sequence[dict[str, Any]]) -> None:
    fig, axes = _figure(7, 4.5)
    ax = axes[0][0]
    x = [r["epoch"] for r in epochs]
    ax.plot(x, [100 * r["zero_fraction"] for r in epochs], marker="o", label="zero weights")
    ax.plot(
        x,
        [100 * r["zero_neurons"] / max(r["neurons"], 1) for r in epochs],
        marker="s",
        label="zero neurons (all incoming weights 0)",
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("% exactly zero")
    ax.set_ylim(-2, 102)
    ax.set_title("Sparsity per epoch")
    ax.legend()
    _save(fig, path)


def _weights_plot(path: Path, weights: Sequence[tuple[str, torch.Tensor]]) -> None:
    count = max(len(weights), 1)
    fig, axes = _figure(4 * count, 3.6, cols=count)
    for ax, (name, w) in zip(axes[0], weights, strict=False):
        magnitudes = w.detach().abs().flatten().double()
        zeros = int((magnitudes == 0).sum())
        nonzero = magnitudes[magnitudes > 0]
        if nonzero.numel():
            low = max(float(nonzero.min()), 1e-12)
            high = max(float(nonzero.max()), low * 10)
            bins = torch.logspace(math.log10(low), math.log10(high), 40).tolist()
            ax.hist(nonzero.numpy(), bins=bins)
            ax.set_xscale("log")
        ax.set_title(f"{name}\n{zeros}/{w.numel()} exact zeros", fontsize=9)
        ax.set_xlabel("|w| (non-zero)")
    axes[0][0].set_ylabel("count")
    _save(fig, path)


def draw_compare_plot(path: Path, rows: Sequence[dict[str, Any]]) -> str | None:
    """Draw ``compare.png``: accuracy and sparsity bars, one group per configuration."""
    if not _have_matplotlib():
        return MISSING
    labels = [r["config"] for r in rows]
    x = list(range(len(rows)))
    fig, axes = _figure(max(8, 1.6 * len(rows)), 7, rows=2)
    top, bottom = axes[0][0], axes[1][0]
    width = 0.38
    top.bar([i - width / 2 for i in x], [100 * r["train_accuracy"] for r in rows], width, label="train")
    top.bar([i + width / 2 for i in x], [100 * r["test_accuracy"] for r in rows], width, label="test")
    low = min([100 * min(r["train_accuracy"], r["test_accuracy"]) for r in rows] + [100])
    top.set_ylim(max(0, low - 5), 100.5)
    top.set_ylabel("accuracy (%)")
    top.set_title("Accuracy and sparsity per configuration")
    top.legend(loc="lower right")
    bottom.bar(
        [i - width / 2 for i in x], [100 * r["zero_fraction"] for r in rows], width, label="zero weights"
    )
    bottom.bar(
        [i + width / 2 for i in x],
        [100 * r["zero_neurons"] / max(r["neurons"], 1) for r in rows],
        width,
        label="zero neurons",
    )
    bottom.set_ylabel("% exactly zero")
    bottom.set_ylim(0, 100)
    bottom.legend()
    for ax in (top, bottom):
        ax.set_xticks(x, labels, rotation=15)
    _save(fig, path)
    return None


def draw_path_plot(path: Path, rows: Sequence[dict[str, Any]]) -> str | None:
    """Draw ``path.png``: test accuracy against sparsity, and both against the strength."""
    if not _have_matplotlib():
        return MISSING
    fig, axes = _figure(12, 4.8, cols=2)
    left, right = axes[0][0], axes[0][1]
    zeros = [100 * r["zero_fraction"] for r in rows]
    acc = [100 * r["test_accuracy"] for r in rows]
    left.plot(zeros, acc, marker="o")
    for r, zx, ay in zip(rows, zeros, acc, strict=False):
        left.annotate(f"{r['strength']:.2g}", (zx, ay), textcoords="offset points", xytext=(4, 4), fontsize=7)
    left.set_xlabel("% weights exactly zero")
    left.set_ylabel("test accuracy (%)")
    left.set_title("Accuracy vs sparsity along the path")
    strengths = [r["strength"] for r in rows]
    right.plot(strengths, acc, marker="o", label="test accuracy (%)")
    right.plot(strengths, [100 * r["train_accuracy"] for r in rows], marker=".", label="train accuracy (%)")
    right.plot(strengths, zeros, marker="s", label="zero weights (%)")
    right.set_xscale("log")
    right.invert_xaxis()
    right.set_xlabel("strength (large → small)")
    right.set_ylim(-2, 102)
    right.legend()
    right.set_title("Along the path")
    _save(fig, path)
    return None
