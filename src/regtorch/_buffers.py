"""Reusable gradient buffers for loss mode on CPU: no fresh memory (and no page faults) per step.

Loss mode's compiled forward writes each large parameter's gradient ``∂R/∂w`` into a buffer that it
hands to autograd in the backward. A fresh parameter-sized CPU allocation is served by ``mmap``
and costs a page fault per 4 KiB page on first touch: about five memory passes, more than the
penalty itself. So each parameter keeps one buffer (``1×`` its bytes, dropped with the parameter)
that is reused whenever nobody else holds it.

"Nobody else" is checked exactly: no other Python reference to the buffer (``sys.getrefcount``),
no other C++ reference (autograd's ``.grad`` slot, a saved tensor, a view's base:
``Tensor._use_count``), and no other tensor or storage object on its memory (a view, ``detach()``,
``numpy()``, a kept ``untyped_storage()``). A buffer that autograd made a ``.grad``, or that
:func:`torch.autograd.grad` returned to a caller who still holds it, is left alone and replaced by
a fresh one. The counts a lone buffer has are measured once, on this interpreter, not assumed.
"""

from __future__ import annotations

import sys
import threading

import torch
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["gradient_buffer"]

_buffers: WeakIdKeyDictionary = WeakIdKeyDictionary()
_alone: tuple[int, int, int, int] | None = None
_lock = threading.Lock()  # check-then-hand-out must not interleave between threads


def _counts(owner: WeakIdKeyDictionary, key: torch.Tensor) -> tuple[int, int, int, int]:
    """References to ``owner[key]``: Python, C++, its storage's C++ and its storage object's Python."""
    buffer = owner[key]
    storage = buffer.untyped_storage()
    return (
        sys.getrefcount(buffer),
        buffer._use_count(),
        torch._C._storage_Use_Count(storage._cdata),
        sys.getrefcount(storage),
    )


def _alone_counts() -> tuple[int, int, int, int]:
    """The counts of a buffer held by the pool only (measured once with a throw-away buffer)."""
    global _alone
    if _alone is None:
        probe: WeakIdKeyDictionary = WeakIdKeyDictionary()
        key = torch.empty(0)
        probe[key] = torch.empty(1)
        _alone = _counts(probe, key)
    return _alone


def gradient_buffer(tensor: torch.Tensor) -> torch.Tensor:
    """Return a contiguous buffer shaped like ``tensor`` that no one else references.

    The buffer is ``tensor``'s own reusable one when it is free, else a new one that replaces it
    (the old one lives on with whoever holds it). Its contents are undefined.
    """
    with _lock:
        return _take(tensor)


def _take(tensor: torch.Tensor) -> torch.Tensor:
    # no local reference to the old buffer while counting: the counts must be the pool's only
    if not (
        tensor in _buffers
        and _fits(_buffers[tensor], tensor)
        and _counts(_buffers, tensor) == _alone_counts()
    ):
        _buffers[tensor] = torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device)
    return _buffers[tensor]


def _fits(buffer: torch.Tensor, tensor: torch.Tensor) -> bool:
    return buffer.shape == tensor.shape and buffer.dtype == tensor.dtype and buffer.device == tensor.device
