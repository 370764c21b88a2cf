"""Loading the data sets used by ``regtorch train --dataset ...`` as in-memory tensors."""

from __future__ import annotations

import csv
import io
import math
import os
import pickle
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._download import default_data_dir
from ._download import download as _download
from ._errors import DataError
from ._idx import read_idx

__all__ = ["DATASET_NAMES", "Dataset", "load_dataset"]

#: The names :func:`load_dataset` accepts (``PATH`` stands for a file path).
DATASET_NAMES: tuple[str, ...] = (
    "digits",
    "mnist",
    "fashion-mnist",
    "cifar10",
    "npz:PATH",
    "csv:PATH",
)

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}

# Fixed split of the digits data set, so test accuracy is comparable between runs.
_DIGITS_TEST_FRACTION = 0.25
_DIGITS_SPLIT_SEED = 0
# Split of npz files holding only x and y, and of CSV files.
_TABULAR_TEST_FRACTION = 0.2


# --------------------------------------------------------------------------------------------
# The Dataset container
# --------------------------------------------------------------------------------------------


@dataclass(repr=False)
class Dataset:
    """A classification data set held in memory as tensors.

    Inputs have shape ``(N, *input_shape)``: ``(N, 1, 28, 28)`` for MNIST,
    ``(N, 3, 32, 32)`` for CIFAR-10, ``(N, n_features)`` for tabular data. Use
    ``x.flatten(1)`` for a model that wants flat vectors.

    Attributes:
        name: The data set's name as given to :func:`load_dataset` (normalized).
        x_train: Training inputs, ``float32``, already normalized.
        y_train: Training labels, ``int64`` class ids in ``[0, num_classes)``.
        x_test: Test inputs, ``float32``, normalized like ``x_train``.
        y_test: Test labels, ``int64``.
        num_classes: Number of classes (the size of a classifier's output).
        input_shape: Shape of one example, without the batch dimension.
        x_val: Validation inputs carved from the training set, or ``None``.
        y_val: Validation labels, or ``None``.
        class_names: One readable name per class id (may be empty).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(d) for d in self.input_shape)
        splits = [("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)]
        if (self.x_val is None) != (self.y_val is None):
            raise ValueError("Dataset needs both x_val and y_val, or neither.")
        if self.x_val is not None and self.y_val is not None:
            splits.append(("val", self.x_val, self.y_val))
        for split, x, y in splits:
            if tuple(x.shape[1:]) != self.input_shape:
                raise ValueError(
                    f"Dataset x_{split} has shape {tuple(x.shape)}; expected "
                    f"(N, {', '.join(map(str, self.input_shape))}) from input_shape."
                )
            if y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"Dataset y_{split} has shape {tuple(y.shape)}; expected ({x.shape[0]},) "
                    f"to match x_{split}."
                )

    @property
    def n_features(self) -> int:
        """Number of input values per example, ``prod(input_shape)``."""
        return math.prod(self.input_shape)

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return int(self.x_train.shape[0])

    @property
    def n_val(self) -> int:
        """Number of validation examples (0 without a validation split)."""
        return 0 if self.x_val is None else int(self.x_val.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test examples."""
        return int(self.x_test.shape[0])

    def to(self, device: torch.device | str) -> Dataset:
        """Return a copy whose tensors live on ``device``.

        Args:
            device: Target device, e.g. ``"cuda"``.

        Returns:
            A new :class:`Dataset`; tensors already on ``device`` are shared, not copied.
        """

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
            x_val=move(self.x_val),
            y_val=move(self.y_val),
        )

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n_train={self.n_train}, n_val={self.n_val}, "
            f"n_test={self.n_test}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )


# --------------------------------------------------------------------------------------------
# Raw arrays, before normalization
# --------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """Arrays as read from disk, plus how to turn them into normalized float tensors."""

    x_train: np.ndarray
    y_train: np.ndarray  # int64
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    # Per-channel (mean, std) applied to x/255 for 8-bit images; None: standardize each
    # feature with the training split's mean and std.
    channel_stats: tuple[tuple[float, ...], tuple[float, ...]] | None


def _images_to_tensor(
    x: np.ndarray, input_shape: tuple[int, ...], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """``uint8`` images -> ``float32`` tensor ``(N, C, H, W)`` of ``(x/255 - mean)/std``."""
    t = torch.from_numpy(np.ascontiguousarray(x)).reshape(len(x), *input_shape)
    t = t.to(torch.float32).div_(255.0)
    channels = input_shape[0]
    shape = (1, channels) + (1,) * (len(input_shape) - 1)
    t.sub_(torch.tensor(mean, dtype=torch.float32).reshape(shape))
    t.div_(torch.tensor(std, dtype=torch.float32).reshape(shape))
    return t


def _standardizer(x_train: np.ndarray) -> Callable[[np.ndarray], torch.Tensor]:
    """Fit per-feature standardization on ``x_train`` (float64 statistics, ddof=0).

    Features that are constant in the training split (std 0) are only centred, so they
    become 0 everywhere instead of dividing by zero.
    """
    flat = x_train.reshape(len(x_train), -1).astype(np.float64)
    if len(flat) == 0:
        raise DataError("The training split is empty; cannot compute standardization stats.")
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    std[std < 1e-12] = 1.0

    def apply(x: np.ndarray) -> torch.Tensor:
        z = (x.reshape(len(x), -1).astype(np.float64) - mean) / std
        return torch.from_numpy(z.astype(np.float32).reshape(x.shape))

    return apply


def _finish(name: str, raw: _Raw, *, val_fraction: float, seed: int, limit: int | None) -> Dataset:
    """Apply ``limit``, carve the validation split, normalize, and build the Dataset."""
    x_train, y_train, x_test, y_test = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
        x_test, y_test = x_test[:limit], y_test[:limit]
    x_val = y_val = None
    if val_fraction > 0:
        n = len(x_train)
        n_val = max(1, round(n * val_fraction))
        if n - n_val < 1:
            raise DataError(
                f"val_fraction={val_fraction} leaves no training examples: the training set "
                f"of {name!r} has only {n} examples. Use a smaller val_fraction or a larger "
                "limit."
            )
        perm = np.random.default_rng([seed, 1]).permutation(n)
        val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        x_val, y_val = x_train[val_idx], y_train[val_idx]
        x_train, y_train = x_train[train_idx], y_train[train_idx]

    if raw.channel_stats is not None:
        mean, std = raw.channel_stats

        def convert(x: np.ndarray) -> torch.Tensor:
            return _images_to_tensor(x, raw.input_shape, mean, std)

    else:
        standardize = _standardizer(x_train)

        def convert(x: np.ndarray) -> torch.Tensor:
            return standardize(x).reshape(len(x), *raw.input_shape)

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))

    return Dataset(
        name=name,
        x_train=convert(x_train),
        y_train=labels(y_train),
        x_test=convert(x_test),
        y_test=labels(y_test),
        num_classes=raw.num_classes,
        input_shape=raw.input_shape,
        x_val=None if x_val is None else convert(x_val),
        y_val=None if y_val is None else labels(y_val),
        class_names=raw.class_names,
    )


def _stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices so each class keeps its share in the test part.

    The test part has ``ceil(test_fraction * n)`` examples, shared among the classes by
    largest remainder; the examples of each class are drawn with a seeded permutation.

    Returns:
        ``(train_idx, test_idx)``, each sorted.
    """
    n = len(y)
    n_test = math.ceil(test_fraction * n)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = counts * n_test / n
    take = np.floor(quota).astype(np.int64)
    remainder_order = np.argsort(-(quota - take), kind="stable")
    take[remainder_order[: n_test - int(take.sum())]] += 1
    rng = np.random.default_rng([seed, 0])
    test_parts = []
    for k in range(len(classes)):
        members = np.flatnonzero(inverse == k)
        test_parts.append(rng.permutation(members)[: take[k]])
    test_idx = np.sort(np.concatenate(test_parts)) if test_parts else np.empty(0, np.int64)
    mask = np.ones(n, dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def _load_digits() -> _Raw:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError(
            "The 'digits' data set needs scikit-learn, which is not installed; install it "
            "with: pip install 'regtorch[cli]' (or pip install scikit-learn)."
        ) from exc
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = _stratified_split(y, _DIGITS_TEST_FRACTION, _DIGITS_SPLIT_SEED)
    return _Raw(
        x_train=x[train_idx],
        y_train=y[train_idx],
        x_test=x[test_idx],
        y_test=y[test_idx],
        num_classes=10,
        input_shape=(1, 8, 8),
        class_names=tuple(str(d) for d in range(10)),
        channel_stats=None,
    )


# --------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST
# --------------------------------------------------------------------------------------------

_IDX_ROLES = (
    ("x_train", "train-images-idx3-ubyte"),
    ("y_train", "train-labels-idx1-ubyte"),
    ("x_test", "t10k-images-idx3-ubyte"),
    ("y_test", "t10k-labels-idx1-ubyte"),
)


@dataclass(frozen=True)
class _IdxSpec:
    title: str
    torchvision_folder: str
    mean: float
    std: float
    class_names: tuple[str, ...]
    first_train_labels: tuple[int, ...]  # used to spot the other data set's files


_IDX_SPECS = {
    "mnist": _IdxSpec(
        title="MNIST",
        torchvision_folder="MNIST",
        mean=0.1307,
        std=0.3081,
        class_names=tuple(str(d) for d in range(10)),
        first_train_labels=(5, 0, 4, 1, 9, 2, 1, 3, 1, 4),
    ),
    "fashion-mnist": _IdxSpec(
        title="Fashion-MNIST",
        torchvision_folder="FashionMNIST",
        mean=0.2860,
        std=0.3530,
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        first_train_labels=(9, 0, 0, 3, 0, 2, 7, 2, 5, 5),
    ),
}


def _idx_search_dirs(root: Path, name: str) -> list[Path]:
    spec = _IDX_SPECS[name]
    return [root, root / name, root / name / "raw", root / spec.torchvision_folder / "raw"]


def _find_in_dir(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Return the IDX files found in ``folder`` by role (raw preferred) and the missing names."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, stem in _IDX_ROLES:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            missing.append(stem)
    return found, missing


def _find_idx_files(root: Path, name: str) -> dict[str, Path] | None:
    for folder in _idx_search_dirs(root, name):
        found, missing = _find_in_dir(folder)
        if not missing:
            return found
    return None


def _missing_idx_message(root: Path, name: str) -> str:
    spec = _IDX_SPECS[name]
    dirs = _idx_search_dirs(root, name)
    partial = []
    for folder in dirs:
        found, missing = _find_in_dir(folder)
        if found:
            partial.append(f"'{folder}' lacks {', '.join(missing)}")
    stems = [stem for _, stem in _IDX_ROLES]
    message = (
        f"{spec.title} files not found: expected {', '.join(stems[:-1])} and {stems[-1]} "
        "(each raw or with .gz) together in one of these folders: "
        + ", ".join(f"'{d}'" for d in dirs)
        + "."
    )
    if partial:
        message += " Incomplete: " + "; ".join(partial) + "."
    message += (
        f" Pass --download (download=True) to fetch them into '{root / name}', or place "
        "them there by hand; --data-dir or $REGTORCH_DATA set the root folder."
    )
    return message


def _load_idx_dataset(name: str, root: Path, download: bool) -> _Raw:
    spec = _IDX_SPECS[name]
    files = _find_idx_files(root, name)
    if files is None and download:
        _download(name, root)
        files = _find_idx_files(root, name)
    if files is None:
        raise DataError(_missing_idx_message(root, name))

    arrays = {
        role: read_idx(path, expected_ndim=1 if role.startswith("y") else 3)
        for role, path in files.items()
    }
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        x_path, y_path = files[f"x_{split}"], files[f"y_{split}"]
        if x.dtype != np.uint8 or x.shape[1:] != (28, 28):
            raise DataError(
                f"{spec.title} image file '{x_path}' holds {x.dtype} values of shape "
                f"{x.shape}; expected uint8 images of shape (N, 28, 28)."
            )
        if y.dtype != np.uint8:
            raise DataError(
                f"{spec.title} label file '{y_path}' holds {y.dtype} values; expected uint8."
            )
        if len(x) != len(y):
            raise DataError(
                f"{spec.title} files do not match: '{x_path}' has {len(x)} images but "
                f"'{y_path}' has {len(y)} labels."
            )
        if len(y) and int(y.max()) > 9:
            raise DataError(
                f"{spec.title} label file '{y_path}' holds label {int(y.max())}; expected "
                "labels 0 to 9."
            )
    first = tuple(int(v) for v in arrays["y_train"][:10])
    for other, other_spec in _IDX_SPECS.items():
        if other != name and first == other_spec.first_train_labels:
            raise DataError(
                f"The files in '{files['y_train'].parent}' look like {other_spec.title}, not "
                f"{spec.title} (their first training labels are {other_spec.title}'s). Put the "
                f"{spec.title} files in '{root / name}' instead."
            )
    return _Raw(
        x_train=arrays["x_train"],
        y_train=arrays["y_train"].astype(np.int64),
        x_test=arrays["x_test"],
        y_test=arrays["y_test"].astype(np.int64),
        num_classes=10,
        input_shape=(1, 28, 28),
        class_names=spec.class_names,
        channel_stats=((spec.mean,), (spec.std,)),
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
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


def _read_cifar_folder(folder: Path) -> dict[str, bytes]:
    out = {}
    for member in (*_CIFAR_TRAIN, _CIFAR_TEST):
        try:
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


def _load_cifar10(root: Path, download: bool) -> _Raw:
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
    return _Raw(
        x_train=np.concatenate([b["data"] for b in train]),
        y_train=np.concatenate([b["labels"] for b in train]),
        x_test=batches[_CIFAR_TEST]["data"],
        y_test=batches[_CIFAR_TEST]["labels"],
        num_classes=10,
        input_shape=(3, 32, 32),
        class_names=_CIFAR_CLASSES,
        channel_stats=(_CIFAR_MEAN, _CIFAR_STD),
    )


# --------------------------------------------------------------------------------------------
# npz and csv files
# --------------------------------------------------------------------------------------------


def _encode_labels(
    y_train: np.ndarray, y_test: np.ndarray, source: str
) -> tuple[np.ndarray, np.ndarray, int, tuple[str, ...]]:
    """Turn labels into ``int64`` class ids.

    Non-negative integers (or floats with integral values) are kept as class ids and
    ``num_classes`` is the largest id + 1. Strings, and integer sets with negative values,
    are mapped to ids in sorted order.

    Returns:
        ``(train_ids, test_ids, num_classes, class_names)``.
    """
    both = np.concatenate([y_train.ravel(), y_test.ravel()])
    if both.dtype.kind == "f":
        if not np.all(np.isfinite(both)) or not np.all(both == np.round(both)):
            bad = both[~np.isfinite(both) | (both != np.round(both))][0]
            raise DataError(
                f"Labels in {source} must be integer class ids or strings; found the value "
                f"{bad!r} (regression targets are not supported)."
            )
        both = both.astype(np.int64)
    elif both.dtype.kind == "b":
        both = both.astype(np.int64)
    elif both.dtype.kind == "S":
        both = np.char.decode(both, "utf-8")
    elif both.dtype.kind not in "iuU":
        raise DataError(
            f"Labels in {source} have dtype {both.dtype}; expected integer class ids or strings."
        )
    if both.size == 0:
        raise DataError(f"{source} holds no labels.")
    if both.dtype.kind in "iu" and int(both.min()) >= 0:
        ids = both.astype(np.int64)
        num_classes = int(ids.max()) + 1
        names = tuple(str(i) for i in range(num_classes))
    else:
        values, ids = np.unique(both, return_inverse=True)
        ids = ids.astype(np.int64).ravel()
        num_classes = len(values)
        names = tuple(str(v) for v in values)
    n_train = y_train.size
    return ids[:n_train], ids[n_train:], num_classes, names


def _check_features(x: np.ndarray, what: str, source: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what} in {source} has dtype {x.dtype}; expected numbers.")
    if x.ndim == 0:
        raise DataError(f"{what} in {source} is a scalar; expected one row per example.")
    if x.ndim == 1:
        x = x[:, None]
    if x.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(x)))
        if bad:
            raise DataError(
                f"{what} in {source} has {bad} NaN or infinite values; remove or impute them first."
            )
    return x


def _tabular_raw(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    source: str,
) -> _Raw:
    ids_train, ids_test, num_classes, names = _encode_labels(y_train, y_test, source)
    return _Raw(
        x_train=x_train,
        y_train=ids_train,
        x_test=x_test,
        y_test=ids_test,
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[1:]),
        class_names=names,
        channel_stats=None,
    )


def _split_xy(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    train_idx, test_idx = _stratified_split(y, _TABULAR_TEST_FRACTION, seed)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def _load_npz(path: Path, seed: int) -> _Raw:
    source = f"npz file '{path}'"
    if not path.is_file():
        raise DataError(f"The npz file '{path}' does not exist.")
    try:
        with path.open("rb") as f:
            signature = f.read(4)
    except OSError as exc:
        raise DataError(f"The npz file '{path}' could not be read: {exc.strerror or exc}.") from exc
    if signature == b"\x93NUM":
        raise DataError(
            f"'{path}' is a single .npy array; expected an .npz archive with keys "
            "x_train, y_train, x_test and y_test (or x and y)."
        )
    if signature != b"PK\x03\x04" and signature != b"PK\x05\x06":
        raise DataError(
            f"The npz file '{path}' is not an .npz archive (a zip file written by numpy.savez); "
            f"it starts with the bytes {signature.hex(' ') or '(none: it is empty)'}."
        )
    split_keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if set(split_keys) <= keys:
                arrays = {k: archive[k] for k in split_keys}
            elif {"x", "y"} <= keys:
                arrays = {"x": archive["x"], "y": archive["y"]}
            else:
                raise DataError(
                    f"The npz file '{path}' has keys {', '.join(sorted(keys)) or '(none)'}; "
                    "expected x_train, y_train, x_test and y_test, or x and y."
                )
    except DataError:
        raise
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise DataError(
            f"The npz file '{path}' could not be read without pickle: {exc}. Store labels as "
            "integer or fixed-width string arrays, not object arrays."
        ) from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"The npz file '{path}' could not be read: {exc}.") from exc

    for key, arr in arrays.items():
        if key.startswith("y") and arr.ndim != 1:
            raise DataError(f"{key} in {source} has shape {arr.shape}; expected (N,).")
    if "x" in arrays:
        x = _check_features(arrays["x"], "x", source)
        y = arrays["y"]
        if len(x) != len(y):
            raise DataError(f"{source} has {len(x)} rows in x but {len(y)} labels in y.")
        if len(x) < 2:
            raise DataError(f"{source} has {len(x)} examples; at least 2 are needed to split.")
        x_train, y_train, x_test, y_test = _split_xy(x, y, seed)
    else:
        x_train = _check_features(arrays["x_train"], "x_train", source)
        x_test = _check_features(arrays["x_test"], "x_test", source)
        y_train, y_test = arrays["y_train"], arrays["y_test"]
        for split, x_s, y_s in (("train", x_train, y_train), ("test", x_test, y_test)):
            if len(x_s) != len(y_s):
                raise DataError(
                    f"{source} has {len(x_s)} rows in x_{split} but {len(y_s)} labels in y_{split}."
                )
        if x_train.shape[1:] != x_test.shape[1:]:
            raise DataError(
                f"{source} has x_train examples of shape {x_train.shape[1:]} but x_test "
                f"examples of shape {x_test.shape[1:]}."
            )
        if len(x_train) == 0:
            raise DataError(f"{source} has an empty x_train.")
    return _tabular_raw(x_train, y_train, x_test, y_test, source)


def _sniff_delimiter(header_line: str) -> str:
    if "," in header_line:
        return ","
    for delimiter in ("\t", ";"):
        if delimiter in header_line:
            return delimiter
    return ","


def _load_csv(path: Path, target: str | None, seed: int) -> _Raw:
    source = f"CSV file '{path}'"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"The CSV file '{path}' does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"The CSV file '{path}' could not be read: {exc}.") from exc
    reader = csv.reader(io.StringIO(text), delimiter=_sniff_delimiter(text.partition("\n")[0]))
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise DataError(f"The CSV file '{path}' is empty; expected a header row of column names.")
    columns = [h.strip() for h in header]
    listing = ", ".join(repr(c) for c in columns)
    if target is None:
        raise DataError(
            "The 'target' argument of load_dataset is required for 'csv:PATH' data sets: "
            f"name the label column (--target). Columns in '{path}': {listing}."
        )
    if target not in columns:
        raise DataError(
            f"Column {target!r} (the target) not found in CSV file '{path}'; columns found: "
            f"{listing}."
        )
    if columns.count(target) > 1:
        raise DataError(f"Column {target!r} appears more than once in CSV file '{path}'.")
    t_col = columns.index(target)
    feature_cols = [i for i in range(len(columns)) if i != t_col]
    if not feature_cols:
        raise DataError(
            f"CSV file '{path}' has only the target column {target!r}; expected feature columns."
        )
    rows: list[list[float]] = []
    labels: list[str] = []
    for row in reader:
        if not row or all(not v.strip() for v in row):
            continue
        line = reader.line_num
        if len(row) != len(columns):
            raise DataError(
                f"Line {line} of CSV file '{path}' has {len(row)} fields; expected "
                f"{len(columns)} like the header."
            )
        label = row[t_col].strip()
        if not label:
            raise DataError(f"Line {line} of CSV file '{path}' has no value for {target!r}.")
        values = []
        for i in feature_cols:
            cell = row[i].strip()
            try:
                values.append(float(cell))
            except ValueError:
                what = "a missing value" if not cell else f"the value {cell!r}"
                raise DataError(
                    f"Line {line} of CSV file '{path}' has {what} in column {columns[i]!r}; "
                    "feature columns must hold numbers (only the target column may hold text)."
                ) from None
        rows.append(values)
        labels.append(label)
    if len(rows) < 2:
        raise DataError(
            f"CSV file '{path}' has {len(rows)} data rows; at least 2 are needed to split."
        )
    x = _check_features(np.asarray(rows, dtype=np.float64), "the features", source)
    try:
        y: np.ndarray = np.asarray([int(v) for v in labels], dtype=np.int64)
    except ValueError:
        y = np.asarray(labels, dtype=str)
    x_train, y_train, x_test, y_test = _split_xy(x, y, seed)
    return _tabular_raw(x_train, y_train, x_test, y_test, source)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _check_args(
    name: object,
    data_dir: object,
    download: object,
    target: object,
    val_fraction: object,
    seed: object,
    limit: object,
) -> None:
    def bad(arg: str, expectation: str, value: object) -> ValueError:
        return ValueError(
            f"The {arg!r} argument of load_dataset must be {expectation}; got {value!r}."
        )

    if not isinstance(name, str):
        raise bad("name", "a str", name)
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise bad("data_dir", "a str, a path or None", data_dir)
    if not isinstance(download, bool):
        raise bad("download", "a bool", download)
    if target is not None and not isinstance(target, str):
        raise bad("target", "a str or None", target)
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0.0 <= val_fraction < 1.0
    ):
        raise bad("val_fraction", "a float in [0, 1)", val_fraction)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise bad("seed", "a non-negative int", seed)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise bad("limit", "a positive int or None", limit)


def _unknown_name(name: str) -> DataError:
    message = f"Unknown data set {name!r}; valid names are {', '.join(DATASET_NAMES)}."
    suffix = Path(name).suffix.lower()
    if suffix in (".npz", ".csv"):
        message += f" Did you mean '{suffix[1:]}:{name}'?"
    return DataError(message)


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    target: str | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    limit: int | None = None,
) -> Dataset:
    """Load a classification data set into memory as normalized tensors.

    ==================  ======================================================================
    name                source and normalization
    ==================  ======================================================================
    ``digits``          scikit-learn's bundled 8x8 digits (1,797 images, no download), split
                        75/25 stratified with a fixed seed (the same test set every run).
                        Pixels are divided by 16, then each pixel is standardized with the
                        training split's mean and std (pixels constant in training become 0).
                        ``input_shape`` ``(1, 8, 8)``.
    ``mnist``           The four MNIST IDX files (raw or ``.gz``); ``(x/255 - 0.1307)/0.3081``.
                        ``input_shape`` ``(1, 28, 28)``.
    ``fashion-mnist``   Same layout as MNIST; ``(x/255 - 0.2860)/0.3530``.
    ``cifar10``         The python version: ``cifar-10-python.tar.gz`` or the extracted
                        ``cifar-10-batches-py/``; per channel ``(x/255 - mean)/std`` with
                        mean ``(0.4914, 0.4822, 0.4465)``, std ``(0.2470, 0.2435, 0.2616)``.
                        ``input_shape`` ``(3, 32, 32)``.
    ``npz:PATH``        Arrays ``x_train, y_train, x_test, y_test``, or ``x, y`` split 80/20
                        (stratified, seeded by ``seed``). Features standardized with the
                        training split's per-feature mean and std.
    ``csv:PATH``        A header row, numeric feature columns and the label column named by
                        ``target``; split 80/20 like ``x, y`` npz files, standardized likewise.
                        ``input_shape`` ``(n_features,)``.
    ==================  ======================================================================

    MNIST and Fashion-MNIST files are looked for, all four in one folder, in ``data_dir``,
    ``data_dir/<name>``, ``data_dir/<name>/raw`` and torchvision's ``data_dir/MNIST/raw`` (or
    ``data_dir/FashionMNIST/raw``). CIFAR-10 is looked for in ``data_dir`` and
    ``data_dir/cifar10``. ``download=True`` fetches missing files into ``data_dir/<name>``.

    CIFAR-10 batches are Python pickles. They are read with ``encoding="bytes"`` by an
    unpickler that only accepts numpy arrays, but only use files from a trusted source (their
    md5 is checked when :func:`~regtorch.data.download` fetches them).

    Labels in npz and CSV files may be non-negative integer class ids (kept as they are;
    ``num_classes`` is the largest id + 1) or strings (mapped to ids in sorted order, see
    ``Dataset.class_names``); other integer sets, e.g. ``{-1, 1}``, are mapped like strings.

    The processing order is: read, keep the first ``limit`` training and test examples,
    carve the validation split from the training examples, fit the standardization (digits,
    npz, csv) on what remains of the training split, normalize every split.

    Args:
        name: One of :data:`DATASET_NAMES`: ``digits``, ``mnist``, ``fashion-mnist``,
            ``cifar10``, ``npz:PATH`` or ``csv:PATH``.
        data_dir: Root folder for the image data sets; defaults to ``$REGTORCH_DATA``, else
            ``~/.cache/regtorch``. Unused by ``digits``, ``npz:`` and ``csv:``.
        download: Download MNIST, Fashion-MNIST or CIFAR-10 into ``data_dir/<name>`` when
            their files are not found (ignored by the other data sets).
        target: Name of the label column; required by ``csv:PATH``, refused by the others.
        val_fraction: Share of the training examples moved to a validation split, chosen by
            a permutation seeded with ``seed``; ``0`` for no validation split.
        seed: Seed of the validation split and of the 80/20 split of ``npz`` (``x, y``) and
            ``csv`` data. The ``digits`` train/test split is fixed and does not depend on it.
        limit: Keep only the first ``limit`` training and the first ``limit`` test examples
            (for smoke tests); ``None`` keeps all.

    Returns:
        The :class:`Dataset`, with ``float32`` inputs of shape ``(N, *input_shape)`` and
        ``int64`` labels.

    Raises:
        ValueError: If an argument has the wrong type or is out of range (the message names
            the argument, the expectation and the value received).
        DataError: If the name is unknown, files are missing, unreadable or malformed, a
            download fails, or the CSV target column is missing or not given.
    """
    _check_args(name, data_dir, download, target, val_fraction, seed, limit)
    key = name.strip()
    path: Path | None = None
    kind, sep, rest = key.partition(":")
    if sep and kind.lower() in ("npz", "csv") and len(kind) == 3:
        kind = kind.lower()
        if not rest.strip():
            raise DataError(f"Data set name {name!r} needs a file path after '{kind}:'.")
        path = Path(rest.strip()).expanduser()
        key = f"{kind}:{rest.strip()}"
    else:
        kind = _ALIASES.get(key.lower(), key.lower())
        if kind not in ("digits", "mnist", "fashion-mnist", "cifar10"):
            raise _unknown_name(name)
        key = kind
    if target is not None and kind != "csv":
        raise ValueError(
            "The 'target' argument of load_dataset is only used by 'csv:PATH' data sets; "
            f"got {target!r} for {key!r}."
        )
    root = default_data_dir() if data_dir is None else Path(data_dir).expanduser()

    if kind == "digits":
        raw = _load_digits()
    elif kind in _IDX_SPECS:
        raw = _load_idx_dataset(kind, root, download)
    elif kind == "cifar10":
        raw = _load_cifar10(root, download)
    elif kind == "npz":
        assert path is not None
        raw = _load_npz(path, seed)
    else:
        assert path is not None
        raw = _load_csv(path, target, seed)
    return _finish(key, raw, val_fraction=float(val_fraction), seed=seed, limit=limit)
