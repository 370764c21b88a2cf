"""Which implementation of a formula runs: the one chooser, and what the implementations share.

Every formula family of :mod:`regtorch.kernels` has up to three implementations, side by side in
its module, as ``torch.optim`` has for each optimizer:

* ``"reference"`` — one tensor at a time, plain and readable: the specification;
* ``"foreach"`` — multi-tensor ``torch._foreach_*`` kernels over lists grouped by device and dtype
  (fewer kernel launches on accelerators, fewer Python calls for many small tensors);
* ``"compiled"`` — ``torch.compile``-d kernels that read each large tensor once per operation.

:func:`choose` picks one from the ``foreach`` / ``fused`` arguments every public operation takes
(``None`` = automatic). The first compiled call of a kernel costs seconds on CPU (Inductor
generates and builds C++); it is logged at INFO level on the ``"regtorch"`` logger, small models
never reach it automatically, and ``fused=False`` turns it off. Where compilation fails (no C++
compiler on CPU, no Triton on CUDA) regtorch warns once and runs eagerly for the rest of the
process.
"""

from __future__ import annotations

import functools
import logging
import shutil
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch

__all__ = [
    "COMPILED_MIN_NUMEL",
    "COMPILED_MIN_TENSOR",
    "EAGER_CHUNK",
    "FAILED",
    "SMALL_TENSOR",
    "Impl",
    "choose",
    "chunks",
    "compiled",
    "compiled_available",
    "compiled_eligible",
    "group_by_device_and_dtype",
    "scalar_like",
]

Impl = Literal["reference", "foreach", "compiled"]

COMPILED_MIN_NUMEL = 1 << 22
"""With ``fused=None``, compiled kernels run when the tensors hold at least this many elements."""

COMPILED_MIN_TENSOR = 1 << 20
"""Tensors smaller than this take the reference kernels even on the compiled path: a compiled call
costs ~50-150 µs of overhead, more than a small tensor's work."""

SMALL_TENSOR = 1 << 16
"""On CPU, lists of tensors all below this size take the multi-tensor kernels (fewer Python calls);
for larger CPU tensors one tensor at a time is faster (no list-sized temporaries)."""

_LOG = logging.getLogger("regtorch")
_broken = False


class _Failed:
    """What a :func:`compiled` kernel returns when it could not run compiled."""

    def __repr__(self) -> str:
        return "FAILED"


FAILED = _Failed()


@functools.cache
def _has_backend(device_type: str) -> bool:
    if device_type == "cpu":
        return any(shutil.which(cc) for cc in ("g++", "c++", "clang++", "gcc", "cc"))
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return False


def compiled_available(device_type: str) -> bool:
    """Return whether compiled kernels can run on ``device_type`` in this process."""
    return not _broken and _has_backend(device_type)


def compiled_eligible(tensor: torch.Tensor) -> bool:
    """Whether a compiled kernel takes ``tensor``: contiguous and :data:`COMPILED_MIN_TENSOR` or larger."""
    return tensor.numel() >= COMPILED_MIN_TENSOR and tensor.is_contiguous()


def choose(tensors: Sequence[torch.Tensor], foreach: bool | None, fused: bool | None) -> Impl:
    """Return the implementation an operation on ``tensors`` runs.

    * ``fused=True`` forces the compiled kernels where they can run; ``fused=None`` picks them for
      :data:`COMPILED_MIN_NUMEL` elements or more; ``fused=False`` never.
    * Otherwise ``foreach=True`` / ``False`` decides; ``foreach=None`` picks the multi-tensor
      kernels on accelerators and for lists of small CPU tensors.
    * While ``torch.compile`` traces a caller, the reference kernels (traceable) run.

    Args:
        tensors: The (local, plain) tensors the operation acts on.
        foreach: The caller's ``foreach`` argument.
        fused: The caller's ``fused`` argument.
    """
    if not tensors or torch.compiler.is_compiling():
        return "reference"
    can_compile = fused is not False and all(compiled_available(t.device.type) for t in tensors)
    if can_compile and (fused or sum(t.numel() for t in tensors) >= COMPILED_MIN_NUMEL):
        return "compiled"
    if foreach is None:
        foreach = all(t.device.type != "cpu" for t in tensors) or all(
            t.numel() < SMALL_TENSOR for t in tensors
        )
    return "foreach" if foreach else "reference"


EAGER_CHUNK = 1 << 20
"""Eager kernels of more than one operation walk a large tensor in pieces of this many elements,
so that each piece's temporaries stay in cache (no parameter-sized temporary) and the operations
after the first read it from cache rather than memory."""


def chunks(*tensors: torch.Tensor, size: int = EAGER_CHUNK) -> list[tuple[torch.Tensor, ...]]:
    """Matching 1-D pieces of contiguous tensors of one size: ``[(a[i:i+size], b[i:i+size]), ...]``.

    Views, so in-place operations on the pieces change the tensors.
    """
    flat = [t.view(-1) for t in tensors]
    n = flat[0].numel()
    return [tuple(f[start : start + size] for f in flat) for start in range(0, n, size)]


def group_by_device_and_dtype(tensors: Sequence[torch.Tensor]) -> list[list[int]]:
    """Return the indices of ``tensors`` grouped by ``(device, dtype)``, each group in order.

    Multi-tensor (``torch._foreach_*``) kernels need each list on one device with one dtype.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault((tensor.device, tensor.dtype), []).append(index)
    return list(groups.values())


def scalar_like(value: float, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a 0-dim tensor for a compiled kernel: changing it never recompiles."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.tensor(value, dtype=dtype, device=like.device)


def compiled(function: Callable) -> Callable:
    """Wrap a kernel so that it runs ``torch.compile``-d, or returns :data:`FAILED` where that failed.

    The kernel is compiled on first use (dynamic shapes, whole graph); the first call per device
    and dtype is logged. On a compilation failure the wrapper warns once, marks compiled kernels
    unavailable for the rest of the process and returns :data:`FAILED`: the caller then runs its
    reference kernel.
    """
    compiled_function = None
    seen: set[tuple[str, torch.dtype]] = set()

    @functools.wraps(function)
    def run(*args: torch.Tensor) -> object:
        nonlocal compiled_function
        global _broken
        if _broken:
            return FAILED
        key = (args[0].device.type, args[0].dtype)
        if key not in seen:
            seen.add(key)
            _LOG.info(
                "regtorch: compiling %s.%s for %s %s (a one-time cost of seconds; fused=False avoids it)",
                function.__module__,
                function.__name__,
                *key,
            )
        try:
            if compiled_function is None:
                compiled_function = torch.compile(function, dynamic=True, fullgraph=True)
            return compiled_function(*args)
        except Exception as error:  # compilation fails in many ways (no compiler, no Triton, ...)
            _broken = True
            warnings.warn(
                f"regtorch could not compile its fused kernels ({type(error).__name__}: {error}); "
                "falling back to eager kernels for this process.",
                RuntimeWarning,
                stacklevel=3,
            )
            return FAILED

    return run
