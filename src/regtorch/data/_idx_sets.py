"""MNIST and Fashion-MNIST from their four IDX files (raw or ``.gz``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._dataset import RawSplits
from ._download import download as _download
from ._errors import DataError
from ._idx import read_idx

__all__ = ["IDX_SPECS", "load_idx_dataset"]

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


IDX_SPECS = {
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
    spec = IDX_SPECS[name]
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
    spec = IDX_SPECS[name]
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


def load_idx_dataset(name: str, root: Path, download: bool) -> RawSplits:
    spec = IDX_SPECS[name]
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
    for other, other_spec in IDX_SPECS.items():
        if other != name and first == other_spec.first_train_labels:
            raise DataError(
                f"The files in '{files['y_train'].parent}' look like {other_spec.title}, not "
                f"{spec.title} (their first training labels are {other_spec.title}'s). Put the "
                f"{spec.title} files in '{root / name}' instead."
            )
    return RawSplits(
        x_train=arrays["x_train"],
        y_train=arrays["y_train"].astype(np.int64),
        x_test=arrays["x_test"],
        y_test=arrays["y_test"].astype(np.int64),
        num_classes=10,
        input_shape=(1, 28, 28),
        class_names=spec.class_names,
        channel_stats=((spec.mean,), (spec.std,)),
    )
