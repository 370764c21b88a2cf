"""Fast in-memory mini-batching by index tensors."""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["iterate_batches"]


def _check_positive_int(value: object, name: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(
            f"The {name!r} argument of iterate_batches must be an int >= {low}; got {value!r}."
        )
    return value


def iterate_batches(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None,
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield index tensors that split ``range(n)`` into mini-batches, for one epoch.

    With ``shuffle=True`` one :func:`torch.randperm` is drawn per call (so per epoch) and cut
    into consecutive slices; otherwise the slices of ``torch.arange(n)`` are yielded in order.
    Index a tensor already in memory with each batch (``x[idx]``, ``y[idx]``); no
    ``Dataset``/``DataLoader`` machinery is involved. Every index appears exactly once per
    epoch, except the last ``n % batch_size`` ones when ``drop_last`` is set.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> for epoch in range(2):
        ...     for idx in iterate_batches(len(x), 128, shuffle=True, generator=g):
        ...         loss = loss_fn(model(x[idx]), y[idx])

    Args:
        n: Number of examples (0 yields nothing).
        batch_size: Size of every batch but possibly the last one.
        shuffle: Whether to visit the examples in a random order.
        generator: Random generator for the permutation; pass a seeded one for
            reproducible epochs. ``None`` uses torch's global generator. Ignored when
            ``shuffle`` is false.
        drop_last: Whether to skip a last batch smaller than ``batch_size``.

    Returns:
        An iterator over 1-D ``int64`` CPU tensors of indices.

    Raises:
        ValueError: If ``n`` is negative or ``batch_size`` is not a positive int (raised on
            the call, before iteration starts).
    """
    n = _check_positive_int(n, "n", allow_zero=True)
    batch_size = _check_positive_int(batch_size, "batch_size")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return _slices(order, batch_size, drop_last)


def _slices(order: torch.Tensor, batch_size: int, drop_last: bool) -> Iterator[torch.Tensor]:
    n = order.numel()
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
