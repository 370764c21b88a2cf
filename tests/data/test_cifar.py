"""CIFAR-10 from synthetic python-version batches: folder, archive, normalization, safety."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from regtorch.data import DataError, load_dataset

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
PER_BATCH = 4


def _batch_bytes(index: int, protocol: int = 2) -> bytes:
    """A batch like the originals (protocol 2): a pickled dict with bytes keys."""
    rng = np.random.default_rng(index)
    batch = {
        b"batch_label": f"batch {index}".encode(),
        b"labels": [(index + j) % 10 for j in range(PER_BATCH)],
        b"data": rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
        b"filenames": [f"img_{index}_{j}.png".encode() for j in range(PER_BATCH)],
    }
    return pickle.dumps(batch, protocol=protocol)


def _write_folder(folder: Path, protocol: int = 2) -> dict[str, bytes]:
    folder.mkdir(parents=True)
    blobs = {name: _batch_bytes(i, protocol) for i, name in enumerate(BATCHES)}
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
    return blobs


def _write_archive(path: Path, blobs: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def _expected_train(blobs: dict[str, bytes]) -> tuple[torch.Tensor, list[int]]:
    batches = [pickle.loads(blobs[name], encoding="bytes") for name in BATCHES[:5]]
    x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32) / 255.0
    x = (x - np.array(MEAN).reshape(1, 3, 1, 1)) / np.array(STD).reshape(1, 3, 1, 1)
    labels = [label for b in batches for label in b[b"labels"]]
    return torch.from_numpy(x.astype(np.float32)), labels


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_extracted_folder(tmp_path: Path, protocol: int) -> None:
    blobs = _write_folder(tmp_path / "cifar-10-batches-py", protocol)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.input_shape == (3, 32, 32) and ds.n_features == 3072
    assert ds.x_train.shape == (5 * PER_BATCH, 3, 32, 32)
    assert ds.x_test.shape == (PER_BATCH, 3, 32, 32)
    assert ds.num_classes == 10 and ds.class_names[0] == "airplane"
    x, labels = _expected_train(blobs)
    torch.testing.assert_close(ds.x_train, x, atol=1e-5, rtol=0)
    assert ds.y_train.tolist() == labels
    assert ds.y_test.tolist() == [(5 + j) % 10 for j in range(PER_BATCH)]


def test_archive_in_cifar10_subfolder(tmp_path: Path) -> None:
    blobs = {name: _batch_bytes(i) for i, name in enumerate(BATCHES)}
    _write_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", blobs)
    ds = load_dataset("cifar-10", data_dir=tmp_path, val_fraction=0.25, seed=1)
    assert ds.name == "cifar10"
    assert (ds.n_train, ds.n_val, ds.n_test) == (15, 5, 4)
    x, _ = _expected_train(blobs)
    assert ds.x_val is not None
    merged = torch.cat([ds.x_train, ds.x_val])
    assert sorted(merged.sum(dim=(1, 2, 3)).tolist()) == pytest.approx(
        sorted(x.sum(dim=(1, 2, 3)).tolist()), abs=1e-2
    )


def test_per_channel_normalization(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.zeros((2, 3, 1024), dtype=np.uint8)
    data[:, 0], data[:, 1], data[:, 2] = 0, 128, 255
    blob = pickle.dumps({b"data": data.reshape(2, 3072), b"labels": [0, 1]}, protocol=2)
    for name in BATCHES:
        (folder / name).write_bytes(blob)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    for c, value in enumerate((0, 128, 255)):
        expected = (value / 255 - MEAN[c]) / STD[c]
        channel = ds.x_test[:, c]
        assert torch.allclose(channel, torch.full_like(channel, expected), atol=1e-5)


def test_legacy_numpy_module_names_are_accepted(tmp_path: Path) -> None:
    # The original files were written by numpy 1 under Python 2 and name
    # numpy.core.multiarray; numpy 2 writes numpy._core.multiarray.
    folder = tmp_path / "cifar-10-batches-py"
    blobs = _write_folder(folder)
    legacy = blobs["test_batch"].replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"cnumpy.core.multiarray\n_reconstruct" in legacy
    (folder / "test_batch").write_bytes(legacy)
    assert load_dataset("cifar10", data_dir=tmp_path).n_test == PER_BATCH


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (os.getcwd, ())


def test_pickles_with_other_globals_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_folder(folder)
    (folder / "data_batch_3").write_bytes(
        pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2)
    )
    with pytest.raises(DataError, match=r"data_batch_3.*refers to '(posix|nt)\.getcwd'"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", data_dir=tmp_path)
    message = str(info.value)
    assert message.startswith("CIFAR-10 files not found")
    assert str(tmp_path / "cifar-10-python.tar.gz") in message
    assert str(tmp_path / "cifar10" / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "test_batch" in message and "--download" in message


def test_incomplete_archive(tmp_path: Path) -> None:
    blobs = {name: _batch_bytes(i) for i, name in enumerate(BATCHES) if name != "test_batch"}
    _write_archive(tmp_path / "cifar-10-python.tar.gz", blobs)
    with pytest.raises(DataError, match=r"lacks cifar-10-batches-py/test_batch"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_corrupt_archive(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match=r"archive '.*' could not be read"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_bad_batch_content(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_folder(folder)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (folder / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match=r"test_batch.*shape \(2, 100\); expected a uint8 array"):
        load_dataset("cifar10", data_dir=tmp_path)
