"""npz:PATH and csv:PATH data sets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from regtorch.data import DataError, load_dataset


def _features(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(loc=np.arange(d) * 10.0, scale=np.arange(1, d + 1), size=(n, d))


def _assert_standardized(x: torch.Tensor) -> None:
    flat = x.double().flatten(1)
    zeros, ones = torch.zeros(flat.shape[1], dtype=torch.float64), torch.ones_like(flat[0])
    torch.testing.assert_close(flat.mean(0), zeros, atol=1e-6, rtol=0)
    torch.testing.assert_close(flat.std(0, unbiased=False), ones, atol=1e-5, rtol=0)


# ---- npz ----------------------------------------------------------------------------------------


def test_npz_with_splits_uses_train_statistics(tmp_path: Path) -> None:
    x_train, x_test = _features(40, 3, seed=1), _features(10, 3, seed=2) + 5.0
    y_train, y_test = np.arange(40) % 3, np.arange(10) % 3
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    ds = load_dataset(f"npz:{path}")
    assert ds.name == f"npz:{path}"
    assert ds.input_shape == (3,) and ds.n_features == 3 and ds.num_classes == 3
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    _assert_standardized(ds.x_train)
    expected = (x_test - x_train.mean(0)) / x_train.std(0)
    torch.testing.assert_close(ds.x_test, torch.from_numpy(expected).float(), atol=1e-5, rtol=0)
    assert ds.y_test.tolist() == y_test.tolist()


def test_npz_x_y_split_is_80_20_stratified_and_seeded(tmp_path: Path) -> None:
    x = _features(100, 4)
    y = np.repeat(np.array([0, 1, 2, 3]), 25)
    path = tmp_path / "xy.npz"
    np.savez(path, x=x, y=y)
    ds = load_dataset(f"npz:{path}", seed=7)
    assert (ds.n_train, ds.n_test) == (80, 20)
    assert torch.bincount(ds.y_test).tolist() == [5, 5, 5, 5]
    _assert_standardized(ds.x_train)
    same = load_dataset(f"npz:{path}", seed=7)
    assert torch.equal(same.x_test, ds.x_test) and torch.equal(same.y_test, ds.y_test)
    other = load_dataset(f"npz:{path}", seed=8)
    assert not torch.equal(other.x_test, ds.x_test)


def test_npz_image_shaped_features_keep_their_shape(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "img.npz"
    np.savez(path, x=rng.integers(0, 255, (20, 1, 4, 4)).astype(np.uint8), y=np.arange(20) % 2)
    ds = load_dataset(f"npz:{path}")
    assert ds.input_shape == (1, 4, 4) and ds.x_train.shape == (16, 1, 4, 4)
    assert ds.n_features == 16


def test_npz_string_labels_are_sorted(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    labels = np.array(["dog", "cat", "emu", "cat", "dog", "emu"] * 5)
    np.savez(path, x=_features(30, 2), y=labels)
    ds = load_dataset(f"npz:{path}")
    assert ds.class_names == ("cat", "dog", "emu") and ds.num_classes == 3
    y = torch.cat([ds.y_train, ds.y_test])
    assert torch.bincount(y).tolist() == [10, 10, 10]


def test_npz_float_integral_and_negative_labels(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    np.savez(path, x=_features(10, 2), y=np.array([-1.0, 1.0] * 5))
    ds = load_dataset(f"npz:{path}")
    assert ds.num_classes == 2 and ds.class_names == ("-1", "1")
    np.savez(path, x=_features(10, 2), y=np.array([0.5, 1.0] * 5))
    with pytest.raises(DataError, match=r"must be integer class ids or strings; found the value"):
        load_dataset(f"npz:{path}")


def test_npz_integer_ids_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "i.npz"
    np.savez(path, x=_features(10, 2), y=np.array([1, 4] * 5))
    ds = load_dataset(f"npz:{path}")
    assert ds.num_classes == 5
    assert set(torch.cat([ds.y_train, ds.y_test]).tolist()) == {1, 4}


def test_npz_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, features=np.zeros((4, 2)), labels=np.zeros(4))
    with pytest.raises(DataError, match=r"has keys features, labels; expected x_train, y_train"):
        load_dataset(f"npz:{path}")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(DataError, match=r"is a single \.npy array"):
        load_dataset(f"npz:{tmp_path / 'single.npy'}")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match=r"is not an \.npz archive"):
        load_dataset(f"npz:{tmp_path / 'text.npz'}")
    with pytest.raises(DataError, match=r"does not exist"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    np.savez(path, x=np.zeros((4, 2)), y=np.zeros(3))
    with pytest.raises(DataError, match=r"has 4 rows in x but 3 labels in y"):
        load_dataset(f"npz:{path}")
    np.savez(path, x=np.array([[0.0], [np.nan]] * 3), y=np.arange(6) % 2)
    with pytest.raises(DataError, match=r"has 3 NaN or infinite values"):
        load_dataset(f"npz:{path}")
    np.savez(path, x=np.zeros((4, 2)), y=np.array([{"a": 1}] * 4, dtype=object))
    with pytest.raises(DataError, match=r"could not be read without pickle"):
        load_dataset(f"npz:{path}")


# ---- csv ----------------------------------------------------------------------------------------


def _write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_csv_string_labels_and_train_statistics(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = ["virginica", "setosa", "versicolor"]
    rows = [f"{rng.normal(5, 2):.6f},{names[i % 3]},{rng.normal(-3, 0.5):.6f}" for i in range(60)]
    path = _write_csv(tmp_path / "iris.csv", "length,species,width", rows)
    ds = load_dataset(f"csv:{path}", target="species", seed=1)
    assert ds.class_names == ("setosa", "versicolor", "virginica")
    assert ds.input_shape == (2,) and ds.num_classes == 3
    assert (ds.n_train, ds.n_test) == (48, 12)
    assert torch.bincount(ds.y_test).tolist() == [4, 4, 4]
    _assert_standardized(ds.x_train)
    # One affine map per feature (the training split's statistics) takes every raw value,
    # train and test alike, to its standardized value; per-split statistics would break it.
    raw = np.array([[float(r.split(",")[0]), float(r.split(",")[2])] for r in rows])
    standardized = torch.cat([ds.x_train, ds.x_test]).double().numpy()
    for j in range(2):
        xs, ys = np.sort(standardized[:, j]), np.sort(raw[:, j])
        slope, intercept = np.polyfit(xs, ys, 1)
        assert np.max(np.abs(slope * xs + intercept - ys)) < 1e-4
    assert sorted(torch.cat([ds.y_train, ds.y_test]).tolist()) == [0] * 20 + [1] * 20 + [2] * 20


def test_csv_val_split_statistics_exclude_validation(tmp_path: Path) -> None:
    rows = [f"{i},{i % 2}" for i in range(50)]
    path = _write_csv(tmp_path / "t.csv", "x,label", rows)
    ds = load_dataset(f"csv:{path}", target="label", val_fraction=0.25, seed=0)
    assert (ds.n_train, ds.n_val, ds.n_test) == (30, 10, 10)
    assert ds.class_names == ("0", "1")
    _assert_standardized(ds.x_train)


def test_csv_semicolon_and_integer_labels(tmp_path: Path) -> None:
    rows = [f"{i};{i * i};{i % 4}" for i in range(20)]
    path = _write_csv(tmp_path / "s.csv", "a;b;cls", rows)
    ds = load_dataset(f"csv:{path}", target="cls")
    assert ds.num_classes == 4 and ds.n_features == 2


def test_csv_missing_target_column(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "m.csv", "a,b,label", ["1,2,x", "3,4,y"])
    expected = (
        f"Column 'target' (the target) not found in CSV file '{path}'; columns found: "
        "'a', 'b', 'label'."
    )
    with pytest.raises(DataError, match=re.escape(expected)):
        load_dataset(f"csv:{path}", target="target")


def test_csv_target_is_required(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "m.csv", "a,label", ["1,x", "3,y"])
    with pytest.raises(DataError, match=r"'target' argument of load_dataset is required"):
        load_dataset(f"csv:{path}")


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        (["1,x", "red,y"], r"Line 3 .* has the value 'red' in column 'a'; feature columns"),
        (["1,x", ",y"], r"Line 3 .* has a missing value in column 'a'"),
        (["1,x", "2"], r"Line 3 .* has 1 fields; expected 2"),
        (["1,x", "2,"], r"Line 3 .* has no value for 'label'"),
        (["1,x"], r"has 1 data rows; at least 2"),
    ],
)
def test_csv_bad_rows(tmp_path: Path, rows: list[str], pattern: str) -> None:
    path = _write_csv(tmp_path / "b.csv", "a,label", rows)
    with pytest.raises(DataError, match=pattern):
        load_dataset(f"csv:{path}", target="label")


def test_csv_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CSV file '.*nope\.csv' does not exist"):
        load_dataset(f"csv:{tmp_path / 'nope.csv'}", target="y")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match=r"is empty; expected a header row"):
        load_dataset(f"csv:{tmp_path / 'e.csv'}", target="y")


# ---- label spaces -----------------------------------------------------------------------------


def test_large_integer_labels_are_remapped_not_allocated(tmp_path: Path) -> None:
    # One label of 1e9 once asked for a billion-unit output layer.
    path = tmp_path / "big.npz"
    np.savez(path, x=_features(10, 2), y=np.array([0, 10**9] * 5, dtype=np.uint64))
    ds = load_dataset(f"npz:{path}")
    assert ds.num_classes == 2 and ds.class_names == ("0", "1000000000")
    assert sorted(set(torch.cat([ds.y_train, ds.y_test]).tolist())) == [0, 1]


def test_ids_below_the_cap_are_kept_and_above_it_remapped(tmp_path: Path) -> None:
    from regtorch.data._tabular import MAX_CLASSES

    path = tmp_path / "cap.npz"
    np.savez(path, x=_features(10, 2), y=np.array([0, MAX_CLASSES - 1] * 5))
    assert load_dataset(f"npz:{path}").num_classes == MAX_CLASSES
    np.savez(path, x=_features(10, 2), y=np.array([0, MAX_CLASSES] * 5))
    assert load_dataset(f"npz:{path}").num_classes == 2


def test_csv_numeric_labels_are_read_like_npz_labels(tmp_path: Path) -> None:
    csv_path = tmp_path / "f.csv"
    csv_path.write_text("a,label\n" + "".join(f"{i},{float(i % 3)}\n" for i in range(30)))
    npz_path = tmp_path / "f.npz"
    np.savez(npz_path, x=np.arange(30, dtype=np.float64), y=np.arange(30) % 3 * 1.0)
    from_csv = load_dataset(f"csv:{csv_path}", target="label")
    from_npz = load_dataset(f"npz:{npz_path}")
    assert from_csv.class_names == from_npz.class_names == ("0", "1", "2")
    assert torch.equal(from_csv.y_train, from_npz.y_train) and torch.equal(from_csv.y_test, from_npz.y_test)


def test_csv_integers_beyond_64_bits_are_names(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    big = 10**30
    path.write_text("a,label\n" + "".join(f"{i},{big + i % 2}\n" for i in range(10)))
    ds = load_dataset(f"csv:{path}", target="label")
    assert ds.class_names == (str(big), str(big + 1))


def test_npz_bytes_labels_that_are_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "b.npz"
    np.savez(path, x=_features(4, 2), y=np.array([b"\xff", b"a"] * 2))
    with pytest.raises(DataError, match=r"Labels in npz file '.*' are not UTF-8 text"):
        load_dataset(f"npz:{path}")
