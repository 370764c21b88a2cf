"""CIFAR-10's python batches, read by an unpickler that accepts only numpy arrays."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from ._dataset import RawSplits
from ._download import download as _download
from ._errors import DataError

__all__ = ["load_cifar10"]

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
# A batch pickle holds 10,000 images of 3,072 bytes (31,035,704 bytes in the official files).
_MAX_BATCH_BYTES = 64 * 1024 * 1024
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR-10 batch pickle may refer to: numpy array reconstruction."""
    reconstruct = np.empty(0).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.empty(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = frombuffer
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(text, "latin1").
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode`` that only performs the latin-1 encoding of bytes."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"uses the codec {encoding!r}, which is not allowed")
    return text.encode("latin-1")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy's array-rebuilding functions.

    CIFAR-10's python batches are pickled dicts of lists, bytes and numpy arrays; anything
    else (which could run code while unpickling) is rejected.
    """

    _allowed = _numpy_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refers to '{module}.{name}', which a CIFAR-10 batch never needs "
                "(only numpy arrays are allowed)"
            ) from None


def _unpickle_batch(data: bytes, where: str) -> dict[str, Any]:
    """Unpickle one CIFAR-10 batch (``encoding='bytes'``) into a dict with ``str`` keys."""
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"CIFAR-10 batch {where} could not be read as a pickle: {exc}.") from exc
    if not isinstance(obj, dict):
        raise DataError(
            f"CIFAR-10 batch {where} holds a {type(obj).__name__}; expected a dict with "
            "'data' and 'labels'."
        )
    batch = {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(
            f"CIFAR-10 batch {where} has keys {sorted(batch)}; expected 'data' and 'labels'."
        )
    x = batch["data"]
    y = np.asarray(batch["labels"])
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        shape = getattr(x, "shape", None)
        raise DataError(
            f"CIFAR-10 batch {where} has 'data' of shape {shape}; expected a uint8 array of "
            "shape (N, 3072)."
        )
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise DataError(
            f"CIFAR-10 batch {where} has {y.size} labels for {len(x)} images; expected one "
            "integer label per image."
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
        raise DataError(f"CIFAR-10 batch {where} has labels outside 0 to 9.")
    return {"data": x, "labels": y.astype(np.int64)}


def _check_batch_size(size: int, where: str) -> None:
    if size > _MAX_BATCH_BYTES:
        raise DataError(
            f"CIFAR-10 batch {where} has {size:,} bytes; a batch of 10,000 images has about 31 MB "
            "(this is not CIFAR-10's python version)."
        )


def _read_cifar_folder(folder: Path) -> dict[str, bytes]:
    out = {}
    for member in (*_CIFAR_TRAIN, _CIFAR_TEST):
        try:
            _check_batch_size((folder / member).stat().st_size, f"'{folder / member}'")
            out[member] = (folder / member).read_bytes()
        except OSError as exc:
            raise DataError(
                f"CIFAR-10 batch '{folder / member}' could not be read: {exc.strerror or exc}."
            ) from exc
    return out


def _read_cifar_archive(archive: Path) -> dict[str, bytes]:
    wanted = {f"{_CIFAR_FOLDER}/{m}": m for m in (*_CIFAR_TRAIN, _CIFAR_TEST)}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:  # one sequential pass through the compressed stream
                key = wanted.get(member.name.removeprefix("./"))
                if key is not None and member.isfile():
                    _check_batch_size(member.size, f"'{member.name}' in '{archive}'")
                    handle = tar.extractfile(member)
                    if handle is not None:
                        out[key] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"CIFAR-10 archive '{archive}' could not be read (corrupt or truncated?): {exc}."
        ) from exc
    missing = [m for m in wanted.values() if m not in out]
    if missing:
        raise DataError(
            f"CIFAR-10 archive '{archive}' lacks "
            + ", ".join(f"{_CIFAR_FOLDER}/{m}" for m in missing)
            + "."
        )
    return out


def _find_cifar(root: Path) -> tuple[str, Path] | None:
    for folder in (root, root / "cifar10"):
        batches = folder / _CIFAR_FOLDER
        if all((batches / m).is_file() for m in (*_CIFAR_TRAIN, _CIFAR_TEST)):
            return "folder", batches
        if (folder / _CIFAR_ARCHIVE).is_file():
            return "archive", folder / _CIFAR_ARCHIVE
    return None


def load_cifar10(root: Path, download: bool) -> RawSplits:
    found = _find_cifar(root)
    if found is None and download:
        _download("cifar10", root)
        found = _find_cifar(root)
    if found is None:
        places = " or ".join(
            f"'{f / _CIFAR_ARCHIVE}' (or the extracted '{f / _CIFAR_FOLDER}')"
            for f in (root, root / "cifar10")
        )
        raise DataError(
            f"CIFAR-10 files not found: expected {places} with data_batch_1 to data_batch_5 "
            f"and test_batch. Pass --download (download=True) to fetch the archive into "
            f"'{root / 'cifar10'}', or place it there by hand; --data-dir or $REGTORCH_DATA "
            "set the root folder."
        )
    kind, path = found
    blobs = _read_cifar_folder(path) if kind == "folder" else _read_cifar_archive(path)

    def where(member: str) -> str:
        return f"'{path / member}'" if kind == "folder" else f"'{member}' in '{path}'"

    batches = {m: _unpickle_batch(blob, where(m)) for m, blob in blobs.items()}
    train = [batches[m] for m in _CIFAR_TRAIN]
    return RawSplits(
        x_train=np.concatenate([b["data"] for b in train]),
        y_train=np.concatenate([b["labels"] for b in train]),
        x_test=batches[_CIFAR_TEST]["data"],
        y_test=batches[_CIFAR_TEST]["labels"],
        num_classes=10,
        input_shape=(3, 32, 32),
        class_names=_CIFAR_CLASSES,
        channel_stats=(_CIFAR_MEAN, _CIFAR_STD),
    )
