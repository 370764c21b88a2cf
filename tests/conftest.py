"""Shared fixtures and helpers for regtorch's tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_mnist_dir() -> Path | None:
    """Return ``../shared/datasets/mnist`` beside the repo if present (or $REGTORCH_SHARED_DATA)."""
    override = os.environ.get("REGTORCH_SHARED_DATA")
    candidates = [Path(override)] if override else []
    candidates.append(REPO_ROOT.parent / "shared" / "datasets" / "mnist")
    for path in candidates:
        if (path / "train-labels-idx1-ubyte.gz").exists():
            return path
    return None


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
