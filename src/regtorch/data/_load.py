"""``load_dataset``: names, aliases, argument checks and the dispatch to each loader."""

from __future__ import annotations

import os
from pathlib import Path

from ._cifar import load_cifar10
from ._dataset import Dataset, finish
from ._digits import load_digits_raw
from ._download import default_data_dir
from ._errors import DataError
from ._idx_sets import IDX_SPECS, load_idx_dataset
from ._tabular import load_csv, load_npz

__all__ = ["DATASET_NAMES", "load_dataset"]

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

    Labels in npz and CSV files may be integer class ids below 10,000 (kept as they are;
    ``num_classes`` is the largest id + 1) or strings (mapped to ids in sorted order, see
    ``Dataset.class_names``); other integer sets, e.g. ``{-1, 1}`` or ``{0, 10**9}``, are
    mapped like strings. Floats with integral values count as integers, in npz and CSV files
    alike; other floats (regression targets) are refused, and so are a single class and more
    than 10,000 distinct labels. Files whose declared sizes do not match their contents, or
    do not fit in the memory available, are refused before they are read.

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
        raw = load_digits_raw()
    elif kind in IDX_SPECS:
        raw = load_idx_dataset(kind, root, download)
    elif kind == "cifar10":
        raw = load_cifar10(root, download)
    elif kind == "npz":
        assert path is not None
        raw = load_npz(path, seed)
    else:
        assert path is not None
        raw = load_csv(path, target, seed)
    return finish(key, raw, val_fraction=float(val_fraction), seed=seed, limit=limit)
