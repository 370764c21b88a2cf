"""MNIST and Fashion-MNIST: the real files (when shared/ has them) and synthetic layouts."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from regtorch.data import DataError, Dataset, load_dataset, write_idx

SyntheticWriter = Callable[..., dict[str, np.ndarray]]  # the synthetic_mnist fixture (conftest)
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# ---- the real MNIST files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist(shared_mnist_dir: Path) -> Dataset:
    return load_dataset("mnist", data_dir=shared_mnist_dir)


def test_real_mnist_shapes(mnist: Dataset) -> None:
    assert mnist.name == "mnist"
    assert mnist.x_train.shape == (60000, 1, 28, 28)
    assert mnist.x_test.shape == (10000, 1, 28, 28)
    assert mnist.y_train.shape == (60000,) and mnist.y_test.shape == (10000,)
    assert mnist.x_train.dtype == torch.float32 and mnist.y_train.dtype == torch.int64
    assert mnist.input_shape == (1, 28, 28) and mnist.n_features == 784
    assert mnist.num_classes == 10
    assert mnist.x_val is None and mnist.y_val is None


def test_real_mnist_labels(mnist: Dataset) -> None:
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(mnist.y_train).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949,
    ]  # fmt: skip
    assert torch.bincount(mnist.y_test).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009,
    ]  # fmt: skip


def test_real_mnist_normalization(mnist: Dataset) -> None:
    x = mnist.x_train.double()
    assert abs(x.mean().item()) < 1e-3
    assert abs(x.std().item() - 1.0) < 1e-3
    # black background pixels map to -0.1307 / 0.3081
    assert mnist.x_train.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-6)
    assert mnist.x_train.max().item() == pytest.approx((1 - 0.1307) / 0.3081, abs=1e-5)


# ---- synthetic files: layouts -------------------------------------------------------------------


def _check_matches(ds: Dataset, arrays: dict[str, np.ndarray], mean: float, std: float) -> None:
    x = arrays["train-images-idx3-ubyte"].astype(np.float32)
    expected = torch.from_numpy((x / 255 - mean) / std).unsqueeze(1)
    torch.testing.assert_close(ds.x_train, expected, atol=1e-5, rtol=0)
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


@pytest.mark.parametrize(
    "sub", [".", "mnist", "mnist/raw", "MNIST/raw"], ids=["root", "name", "name-raw", "tv"]
)
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_layouts_are_found(
    tmp_path: Path, synthetic_mnist: SyntheticWriter, sub: str, gz: bool
) -> None:
    arrays = synthetic_mnist(tmp_path / sub, gz=gz)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (12, 1, 28, 28)
    _check_matches(ds, arrays, 0.1307, 0.3081)


def test_fashion_mnist_layout_and_normalization(
    tmp_path: Path, synthetic_mnist: SyntheticWriter
) -> None:
    arrays = synthetic_mnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert ds.name == "fashion-mnist"
    assert ds.class_names[9] == "Ankle boot"
    _check_matches(ds, arrays, 0.2860, 0.3530)


def test_default_data_dir_comes_from_environment(
    tmp_path: Path, synthetic_mnist: SyntheticWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    synthetic_mnist(tmp_path / "mnist")
    monkeypatch.setenv("REGTORCH_DATA", str(tmp_path))
    assert load_dataset("mnist").n_train == 30


def test_first_complete_folder_wins(tmp_path: Path, synthetic_mnist: SyntheticWriter) -> None:
    synthetic_mnist(tmp_path / "mnist", n_train=20)
    synthetic_mnist(tmp_path / "MNIST" / "raw", n_train=25)
    # an incomplete set in the root is skipped
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.uint8))
    assert load_dataset("mnist", data_dir=tmp_path).n_train == 20


def test_limit_and_validation_split(tmp_path: Path, synthetic_mnist: SyntheticWriter) -> None:
    synthetic_mnist(tmp_path, n_train=30, n_test=12)
    ds = load_dataset("mnist", data_dir=tmp_path, limit=20, val_fraction=0.25, seed=3)
    assert (ds.n_train, ds.n_val, ds.n_test) == (15, 5, 12)
    assert ds.x_val is not None and ds.y_val is not None
    assert ds.x_val.shape == (5, 1, 28, 28)
    everything = sorted(ds.y_train.tolist() + ds.y_val.tolist())
    assert everything == sorted(i % 10 for i in range(20))
    again = load_dataset("mnist", data_dir=tmp_path, limit=20, val_fraction=0.25, seed=3)
    assert torch.equal(again.x_val, ds.x_val)  # type: ignore[arg-type]
    other = load_dataset("mnist", data_dir=tmp_path, limit=20, val_fraction=0.25, seed=4)
    assert not torch.equal(other.x_val, ds.x_val)  # type: ignore[arg-type]


# ---- errors -------------------------------------------------------------------------------------


def test_missing_files_message_names_files_and_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(info.value)
    assert message.startswith("MNIST files not found")
    for name in MNIST_FILES:
        assert name in message
    for folder in (tmp_path, tmp_path / "mnist", tmp_path / "mnist" / "raw"):
        assert f"'{folder}'" in message
    assert f"'{tmp_path / 'MNIST' / 'raw'}'" in message
    assert "--download" in message


def test_incomplete_folder_is_reported(tmp_path: Path, synthetic_mnist: SyntheticWriter) -> None:
    synthetic_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    pattern = re.escape(f"'{tmp_path / 'mnist'}' lacks t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match=pattern):
        load_dataset("mnist", data_dir=tmp_path)


def test_swapped_label_and_image_files(tmp_path: Path, synthetic_mnist: SyntheticWriter) -> None:
    synthetic_mnist(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(labels, np.zeros((30, 28, 28), np.uint8))
    pattern = re.escape(
        f"IDX file '{labels}' has a bad magic number 0x00000803 (expected 0x00000801 for labels"
    )
    with pytest.raises(DataError, match=pattern):
        load_dataset("mnist", data_dir=tmp_path)


def test_count_mismatch(tmp_path: Path, synthetic_mnist: SyntheticWriter) -> None:
    synthetic_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
    with pytest.raises(DataError, match=r"has 12 images but .* has 11 labels"):
        load_dataset("mnist", data_dir=tmp_path)


def test_wrong_image_size(tmp_path: Path, synthetic_mnist: SyntheticWriter) -> None:
    synthetic_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((12, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"shape \(12, 32, 32\); expected uint8 images of shape"):
        load_dataset("mnist", data_dir=tmp_path)


def test_label_out_of_range(tmp_path: Path, synthetic_mnist: SyntheticWriter) -> None:
    synthetic_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(12, 10, np.uint8))
    with pytest.raises(DataError, match=r"holds label 10; expected labels 0 to 9"):
        load_dataset("mnist", data_dir=tmp_path)


def test_mnist_files_loaded_as_fashion_mnist(
    tmp_path: Path, synthetic_mnist: SyntheticWriter
) -> None:
    synthetic_mnist(tmp_path, first_labels=(5, 0, 4, 1, 9, 2, 1, 3, 1, 4))
    with pytest.raises(DataError, match=r"look like MNIST, not Fashion-MNIST"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert load_dataset("mnist", data_dir=tmp_path).n_train == 30
