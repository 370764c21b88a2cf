"""Tabular data sets: ``npz:PATH`` archives and ``csv:PATH`` files."""

from __future__ import annotations

import csv
import io
import math
import stat
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from regtorch._untrusted import check_fits_in_memory

from ._dataset import RawSplits, stratified_split
from ._errors import DataError

__all__ = ["load_csv", "load_npz"]

# Split of npz files holding only x and y, and of CSV files.
_TABULAR_TEST_FRACTION = 0.2
#: The most distinct labels an npz or CSV data set may have (the size of the output layer).
MAX_CLASSES = 10_000
# Memory of a parsed CSV per byte of text: Python floats in lists, then the arrays.
_CSV_BYTES_PER_BYTE = 10


def _label_values(both: np.ndarray, source: str) -> np.ndarray:
    """Labels as integers, integral floats or strings (anything else is refused)."""
    if both.dtype.kind == "f":
        if not np.all(np.isfinite(both)) or not np.all(both == np.round(both)):
            bad = both[~np.isfinite(both) | (both != np.round(both))][0].item()
            raise DataError(
                f"Labels in {source} must be integer class ids or strings; found the value "
                f"{bad!r} (regression targets are not supported)."
            )
        return both
    if both.dtype.kind == "b":
        return both.astype(np.int64)
    if both.dtype.kind == "S":
        try:
            return np.char.decode(both, "utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"Labels in {source} are not UTF-8 text: {exc}.") from None
    if both.dtype.kind not in "iuU":
        raise DataError(
            f"Labels in {source} have dtype {both.dtype}; expected integer class ids or strings."
        )
    return both


def _label_name(value: object) -> str:
    return str(int(value)) if isinstance(value, float) else str(value)


def _encode_labels(
    y_train: np.ndarray, y_test: np.ndarray, source: str
) -> tuple[np.ndarray, np.ndarray, int, tuple[str, ...]]:
    """Turn labels into ``int64`` class ids in ``0 .. num_classes - 1``.

    Integers (or floats with integral values) in ``[0, MAX_CLASSES)`` are kept as class ids
    and ``num_classes`` is the largest id + 1. Any other labels (strings, negative or larger
    integers) are mapped to ids in sorted order. More than :data:`MAX_CLASSES` distinct labels,
    or a single one, are refused.

    Returns:
        ``(train_ids, test_ids, num_classes, class_names)``.
    """
    both = _label_values(np.concatenate([y_train.ravel(), y_test.ravel()]), source)
    if both.size == 0:
        raise DataError(f"{source} holds no labels.")
    values, inverse = np.unique(both, return_inverse=True)
    if len(values) > MAX_CLASSES:
        raise DataError(
            f"{source} has {len(values):,} distinct labels; at most {MAX_CLASSES:,} classes are "
            "supported (is the label a regression target or an identifier?)."
        )
    if len(values) < 2:
        raise DataError(
            f"{source} has a single class (every label is {_label_name(values[0].item())!r}); a "
            "classifier needs examples of at least 2 classes."
        )
    if both.dtype.kind in "iuf" and values[0] >= 0 and values[-1] < MAX_CLASSES:
        ids = both.astype(np.int64)
        num_classes = int(values[-1]) + 1
        names = tuple(str(i) for i in range(num_classes))
    else:
        ids = inverse.astype(np.int64).ravel()
        num_classes = len(values)
        names = tuple(_label_name(v.item()) for v in values)
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
) -> RawSplits:
    ids_train, ids_test, num_classes, names = _encode_labels(y_train, y_test, source)
    return RawSplits(
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
    train_idx, test_idx = stratified_split(y, _TABULAR_TEST_FRACTION, seed)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def _check_regular_file(path: Path, kind: str) -> int:
    """Return the size of ``path``; refuse a missing path, a folder, a device or a pipe."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DataError(f"The {kind} '{path}' does not exist.") from None
    except OSError as exc:
        raise DataError(f"The {kind} '{path}' could not be read: {exc.strerror or exc}.") from exc
    if stat.S_ISDIR(info.st_mode):
        raise DataError(f"The {kind} '{path}' is a folder; expected a file.")
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"The {kind} '{path}' is not a regular file (a device or a pipe?); expected a file.")
    return info.st_size


def _npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], np.dtype] | None:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:  # version 3.0 (UTF-8 field names): left to np.load
        return None
    return tuple(shape), dtype


def _check_npz_sizes(path: Path, keys: list[str], source: str) -> None:
    """Check each array's declared shape against the bytes stored for it, and the total against
    the memory available, before any array is read."""
    need = 0
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        for key in keys:
            info = archive.getinfo(f"{key}.npy" if f"{key}.npy" in names else key)
            with archive.open(info) as f:
                header = _npy_header(f)
                data_bytes = info.file_size - f.tell()
            if header is None or header[1].hasobject:
                continue
            shape, dtype = header
            declared = math.prod(shape) * dtype.itemsize
            if declared != data_bytes:
                raise DataError(
                    f"{key} in {source} declares shape {shape} of {dtype} ({declared:,} bytes) but "
                    f"holds {data_bytes:,} bytes; the file is damaged."
                )
            need += math.prod(shape) * (dtype.itemsize + 12)  # + float64 statistics + float32 tensor
    try:
        check_fits_in_memory(need, f"The arrays of {source}")
    except ValueError as exc:
        raise DataError(f"{exc}.") from None


def load_npz(path: Path, seed: int) -> RawSplits:
    source = f"npz file '{path}'"
    _check_regular_file(path, "npz file")
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
                wanted = list(split_keys)
            elif {"x", "y"} <= keys:
                wanted = ["x", "y"]
            else:
                raise DataError(
                    f"The npz file '{path}' has keys {', '.join(sorted(keys)) or '(none)'}; "
                    "expected x_train, y_train, x_test and y_test, or x and y."
                )
            _check_npz_sizes(path, wanted, source)
            arrays = {k: archive[k] for k in wanted}
    except DataError:
        raise
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise DataError(
            f"The npz file '{path}' could not be read without pickle: {exc}. Store labels as "
            "integer or fixed-width string arrays, not object arrays."
        ) from exc
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise DataError(f"The npz file '{path}' could not be read: {exc}.") from exc
    except MemoryError:
        raise DataError(f"The {source} is too large for the memory of this machine.") from None

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


def _parse_labels(labels: list[str]) -> np.ndarray:
    """CSV labels as integers, else as numbers (checked like npz float labels), else as text."""
    try:
        return np.asarray([int(v) for v in labels], dtype=np.int64)
    except ValueError:
        pass
    except OverflowError:  # integers beyond int64 are names, not class ids
        return np.asarray(labels, dtype=str)
    try:
        return np.asarray([float(v) for v in labels], dtype=np.float64)
    except ValueError:
        return np.asarray(labels, dtype=str)


def _sniff_delimiter(header_line: str) -> str:
    if "," in header_line:
        return ","
    for delimiter in ("\t", ";"):
        if delimiter in header_line:
            return delimiter
    return ","


def load_csv(path: Path, target: str | None, seed: int) -> RawSplits:
    source = f"CSV file '{path}'"
    size = _check_regular_file(path, "CSV file")
    try:
        check_fits_in_memory(_CSV_BYTES_PER_BYTE * size, f"The {source} has {size:,} bytes; parsed, they")
    except ValueError as exc:
        raise DataError(f"{exc}. Convert it to an npz file (numpy.savez): it loads unparsed.") from None
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
    y = _parse_labels(labels)
    x_train, y_train, x_test, y_test = _split_xy(x, y, seed)
    return _tabular_raw(x_train, y_train, x_test, y_test, source)
