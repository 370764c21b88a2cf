"""Fixtures shared by the data tests: the real MNIST folder and small synthetic IDX files."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from regtorch.data import write_idx

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _has_mnist(folder: Path) -> bool:
    return all(
        (folder / f"{name}.gz").is_file() or (folder / name).is_file() for name in MNIST_FILES
    )


def find_shared_mnist() -> Path | None:
    """The real MNIST files: ``$REGTORCH_SHARED_DATA`` (itself or its ``mnist`` folder), else
    ``shared/datasets/mnist`` beside the repository."""
    candidates = []
    env = os.environ.get("REGTORCH_SHARED_DATA", "").strip()
    if env:
        base = Path(env).expanduser()
        candidates += [base, base / "mnist", base / "datasets" / "mnist"]
    candidates.append(Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mnist")
    for folder in candidates:
        if _has_mnist(folder):
            return folder
    return None


@pytest.fixture(scope="session")
def shared_mnist_dir() -> Path:
    folder = find_shared_mnist()
    if folder is None:
        pytest.skip("the real MNIST files (shared/datasets/mnist) are not available")
    return folder


SyntheticWriter = Callable[..., dict[str, np.ndarray]]


def write_synthetic_mnist(
    folder: Path,
    *,
    n_train: int = 30,
    n_test: int = 12,
    gz: bool = True,
    seed: int = 0,
    first_labels: tuple[int, ...] = (),
) -> dict[str, np.ndarray]:
    """Write four small MNIST-format files into ``folder`` and return their arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": ((np.arange(n_test) + 3) % 10).astype(np.uint8),
    }
    if first_labels:
        arrays["train-labels-idx1-ubyte"][: len(first_labels)] = first_labels
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(folder / (f"{name}.gz" if gz else name), array)
    return arrays


@pytest.fixture
def synthetic_mnist() -> SyntheticWriter:
    return write_synthetic_mnist
