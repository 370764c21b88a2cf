"""The digits data set, the Dataset container and load_dataset's argument checks."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from regtorch.data import DATASET_NAMES, DataError, Dataset, load_dataset


@pytest.fixture(scope="module")
def digits() -> Dataset:
    pytest.importorskip("sklearn")
    return load_dataset("digits")


def test_shapes_and_classes(digits: Dataset) -> None:
    assert digits.name == "digits"
    assert digits.x_train.shape == (1347, 1, 8, 8) and digits.x_test.shape == (450, 1, 8, 8)
    assert digits.y_train.shape == (1347,) and digits.y_test.shape == (450,)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.input_shape == (1, 8, 8) and digits.n_features == 64
    assert digits.num_classes == 10 and digits.class_names == tuple("0123456789")
    assert set(digits.y_train.tolist()) == set(range(10)) == set(digits.y_test.tolist())
    assert digits.x_val is None and digits.n_val == 0


def test_split_is_stratified(digits: Dataset) -> None:
    test = torch.bincount(digits.y_test, minlength=10).double()
    total = test + torch.bincount(digits.y_train, minlength=10)
    assert torch.all((test - 0.25 * total).abs() < 1)


def test_normalization_statistics(digits: Dataset) -> None:
    flat = digits.x_train.double().flatten(1)
    assert flat.mean(0).abs().max().item() < 1e-6
    std = flat.std(0, unbiased=False)
    constant = std < 1e-6  # pixels that are always blank in training become 0
    assert 0 < int(constant.sum()) < 8
    assert torch.all(flat[:, constant] == 0)
    assert torch.allclose(std[~constant], torch.ones_like(std[~constant]), atol=1e-5)
    # the test split is standardized with the training statistics, so it is only close
    assert abs(digits.x_test.double().mean().item()) < 0.1


def test_deterministic_and_seed_only_moves_validation() -> None:
    pytest.importorskip("sklearn")
    a = load_dataset("digits", val_fraction=0.1, seed=5)
    b = load_dataset("digits", val_fraction=0.1, seed=5)
    c = load_dataset("digits", val_fraction=0.1, seed=6)
    assert (a.n_train, a.n_val, a.n_test) == (1212, 135, 450)
    assert a.x_val is not None and b.x_val is not None and c.x_val is not None
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_val, b.x_val)
    assert torch.equal(a.y_test, c.y_test)  # fixed test split
    assert not torch.equal(a.y_val, c.y_val)
    assert a.x_val.shape == (135, 1, 8, 8)


def test_limit(digits: Dataset) -> None:
    ds = load_dataset("digits", limit=100, val_fraction=0.2)
    assert (ds.n_train, ds.n_val, ds.n_test) == (80, 20, 100)
    assert ds.y_test.tolist() == digits.y_test[:100].tolist()


def test_missing_scikit_learn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match=re.escape("pip install 'regtorch[cli]'")):
        load_dataset("digits")


def test_repr_and_to(digits: Dataset) -> None:
    text = repr(digits)
    assert text.startswith("Dataset(name='digits', n_train=1347, n_val=0, n_test=450")
    moved = digits.to("cpu")
    assert moved.x_train is digits.x_train and moved.num_classes == 10


def test_dataset_checks_shapes() -> None:
    x, y = torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"x_train has shape \(3, 2\); expected \(N, 4\)"):
        Dataset("t", x, y, x, y, num_classes=2, input_shape=(4,))
    with pytest.raises(ValueError, match=r"y_test has shape \(2,\); expected \(3,\)"):
        Dataset("t", x, y, x, y[:2], num_classes=2, input_shape=(2,))
    with pytest.raises(ValueError, match=r"both x_val and y_val"):
        Dataset("t", x, y, x, y, num_classes=2, input_shape=(2,), x_val=x)


# ---- names and arguments ------------------------------------------------------------------------


def test_dataset_names() -> None:
    assert DATASET_NAMES == ("digits", "mnist", "fashion-mnist", "cifar10", "npz:PATH", "csv:PATH")


def test_unknown_name_lists_valid_names() -> None:
    expected = (
        "Unknown data set 'imagenet'; valid names are digits, mnist, fashion-mnist, cifar10, "
        "npz:PATH, csv:PATH."
    )
    with pytest.raises(DataError, match=re.escape(expected)):
        load_dataset("imagenet")


def test_path_without_prefix_gets_a_hint() -> None:
    with pytest.raises(DataError, match=re.escape("Did you mean 'csv:data/train.csv'?")):
        load_dataset("data/train.csv")


def test_prefix_without_path() -> None:
    with pytest.raises(DataError, match=r"needs a file path after 'npz:'"):
        load_dataset("npz:")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"val_fraction": 1.5},
            "The 'val_fraction' argument of load_dataset must be a float in [0, 1); got 1.5.",
        ),
        (
            {"val_fraction": -0.1},
            "The 'val_fraction' argument of load_dataset must be a float in [0, 1); got -0.1.",
        ),
        (
            {"val_fraction": "0.1"},
            "The 'val_fraction' argument of load_dataset must be a float in [0, 1); got '0.1'.",
        ),
        (
            {"limit": 0},
            "The 'limit' argument of load_dataset must be a positive int or None; got 0.",
        ),
        ({"seed": -1}, "The 'seed' argument of load_dataset must be a non-negative int; got -1."),
        (
            {"seed": True},
            "The 'seed' argument of load_dataset must be a non-negative int; got True.",
        ),
        ({"download": "yes"}, "The 'download' argument of load_dataset must be a bool; got 'yes'."),
        ({"data_dir": 3}, "The 'data_dir' argument of load_dataset must be a str, a path or None"),
        (
            {"target": "label"},
            "The 'target' argument of load_dataset is only used by 'csv:PATH' data sets; "
            "got 'label' for 'digits'.",
        ),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load_dataset("digits", **kwargs)  # type: ignore[arg-type]


def test_name_must_be_a_string() -> None:
    with pytest.raises(ValueError, match=r"'name' argument of load_dataset must be a str; got 3"):
        load_dataset(3)  # type: ignore[arg-type]


def test_validation_fraction_that_leaves_nothing() -> None:
    pytest.importorskip("sklearn")
    with pytest.raises(DataError, match=r"val_fraction=0.9 leaves no training examples"):
        load_dataset("digits", limit=1, val_fraction=0.9)
