"""iterate_batches: coverage, determinism and drop_last."""

from __future__ import annotations

import pytest
import torch

from regtorch.data import iterate_batches


def _epoch(n: int, bs: int, **kwargs: object) -> list[torch.Tensor]:
    kwargs.setdefault("generator", None)
    return list(iterate_batches(n, bs, **kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "bs"), [(10, 3), (12, 4), (1, 5), (7, 7), (100, 1)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_once_per_epoch(n: int, bs: int, shuffle: bool) -> None:
    g = torch.Generator().manual_seed(0)
    batches = _epoch(n, bs, shuffle=shuffle, generator=g)
    assert all(b.dtype == torch.int64 and b.ndim == 1 for b in batches)
    assert [len(b) for b in batches[:-1]] == [bs] * (len(batches) - 1)
    assert 1 <= len(batches[-1]) <= bs
    assert sorted(torch.cat(batches).tolist()) == list(range(n))


def test_unshuffled_is_in_order() -> None:
    batches = _epoch(7, 3, shuffle=False)
    assert [b.tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]


def test_deterministic_for_a_seeded_generator() -> None:
    a = _epoch(50, 8, shuffle=True, generator=torch.Generator().manual_seed(123))
    b = _epoch(50, 8, shuffle=True, generator=torch.Generator().manual_seed(123))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_epochs_differ_and_shuffle_really_shuffles() -> None:
    g = torch.Generator().manual_seed(1)
    first = torch.cat(_epoch(50, 10, shuffle=True, generator=g))
    second = torch.cat(_epoch(50, 10, shuffle=True, generator=g))
    assert not torch.equal(first, second)
    assert not torch.equal(first, torch.arange(50))


def test_drop_last() -> None:
    g = torch.Generator().manual_seed(0)
    batches = _epoch(10, 3, shuffle=True, generator=g, drop_last=True)
    assert [len(b) for b in batches] == [3, 3, 3]
    assert len(set(torch.cat(batches).tolist())) == 9
    assert [len(b) for b in _epoch(9, 3, shuffle=False, drop_last=True)] == [3, 3, 3]
    assert _epoch(2, 3, shuffle=False, drop_last=True) == []


def test_empty() -> None:
    assert _epoch(0, 4, shuffle=True) == []


@pytest.mark.parametrize(
    ("n", "bs", "pattern"),
    [
        (10, 0, r"'batch_size' argument of iterate_batches must be an int >= 1; got 0"),
        (10, 2.5, r"'batch_size' .* got 2\.5"),
        (-1, 2, r"'n' argument of iterate_batches must be an int >= 0; got -1"),
    ],
)
def test_bad_arguments(n: object, bs: object, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        iterate_batches(n, bs, shuffle=False, generator=None)  # type: ignore[arg-type]
