"""The :class:`Dataset` container and what every loader shares: raw splits, validation
carving, standardization and the stratified train/test split."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ._errors import DataError

__all__ = ["Dataset", "RawSplits", "finish", "stratified_split"]


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
class RawSplits:
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


def finish(name: str, raw: RawSplits, *, val_fraction: float, seed: int, limit: int | None) -> Dataset:
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


def stratified_split(
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

