"""Element-wise penalty kernels in C for small CPU tensors: a whole list of tensors in one call.

For a small model (the tutorial's MLP has 52K weights) a training step is a few hundred
microseconds, and each ATen call regtorch adds costs 4-8 µs however little it computes: an
elastic net's prox is two calls per tensor (``softshrink``, then a division), its gradient three
multi-tensor calls. These kernels do the same arithmetic for every tensor of a list in one pass and
one call, from a small C library compiled on first use with the system C compiler and loaded with
:mod:`ctypes` (compiled once per machine into a cache folder, 0.8 s here; loading it then takes 1 ms):

* ``prox``:       ``w ← softshrink(w, τ) / c``, with ``softshrink(w, τ) = w ∓ τ`` where ``|w| > τ``
  and ``+0`` elsewhere (NaN stays NaN) — what ``softshrink`` then ``div_`` compute, bit for bit but
  for the sign of some zeros (ATen's own vector and scalar loops disagree on it);
* ``add_grad``:   ``g ← g + a₁·sign(w) + a₂·w``, or ``g ← a₁·sign(w) + a₂·w`` (``sign(NaN) = 0``,
  as ``torch.sign``);
* ``increment``:  ``x ← x + 1`` (an optimizer's step counters);
* ``value_grad``: ``Σ|w|`` and ``Σw²`` accumulated in float64 and, optionally, ``g ← a₁·sign(w) + a₂·w``
  written in the same pass.

They take contiguous float32/float64 CPU tensors of one dtype and run on the calling thread;
callers keep the ATen kernels for everything else (see :func:`takes`). Where no C compiler is found
the kernels are simply unavailable; where one is found but compiling or loading fails, regtorch
warns once and uses the ATen kernels for the rest of the process. ``REGTORCH_NATIVE=0`` turns them
off and ``REGTORCH_CACHE_DIR`` chooses the cache folder (default ``~/.cache/regtorch``), both read at
first use.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["add_grad_", "available", "increment_", "prox_", "takes", "value_grad"]

NATIVE_MAX_TENSOR = 1 << 16
"""Tensors of at least this many elements take ATen's kernels, which use several threads."""

_SOURCE = r"""
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && defined(RT_CLONES)
#define RT_TARGETS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RT_TARGETS
#endif

typedef double rt_v8d __attribute__((vector_size(64)));
typedef int64_t rt_v8l __attribute__((vector_size(64)));

/* softshrink(x, tau) = x - clamp(x, -tau, tau): x -/+ tau where |x| > tau, else x - x = +0 (NaN stays
   NaN), as ATen's vectorized softshrink loop computes it (its scalar tail writes x * 0, a signed zero). */
#define RT_SHRINK(x, tau) ((x) - ((x) < -(tau) ? -(tau) : (x) > (tau) ? (tau) : (x)))

#define RT_KERNELS(T, S)                                                                        \
typedef T rt_v8##S __attribute__((vector_size(8 * sizeof(T))));                                 \
RT_TARGETS void rt_prox_##S(int64_t n, T *const *ws, const int64_t *lens, T tau, T c,           \
                            int32_t divide) {                                                   \
    for (int64_t t = 0; t < n; t++) {                                                           \
        T *restrict w = ws[t];                                                                  \
        const int64_t m = lens[t];                                                              \
        if (tau > 0 && divide) {                                                                \
            for (int64_t i = 0; i < m; i++) w[i] = RT_SHRINK(w[i], tau) / c;                    \
        } else if (tau > 0) {                                                                   \
            for (int64_t i = 0; i < m; i++) w[i] = RT_SHRINK(w[i], tau);                        \
        } else if (divide) {                                                                    \
            for (int64_t i = 0; i < m; i++) w[i] = w[i] / c;                                    \
        }                                                                                       \
    }                                                                                           \
}                                                                                               \
void rt_increment_##S(int64_t n, T *const *xs, const int64_t *lens) {                          \
    for (int64_t t = 0; t < n; t++)                                                             \
        for (int64_t i = 0; i < lens[t]; i++) xs[t][i] += 1;                                    \
}                                                                                               \
RT_TARGETS void rt_add_grad_##S(int64_t n, T *const *ws, T *const *gs, const int64_t *lens,     \
                                T a1, T a2, int32_t accumulate) {                               \
    for (int64_t t = 0; t < n; t++) {                                                           \
        const T *restrict w = ws[t];                                                            \
        T *restrict g = gs[t];                                                                  \
        const int64_t m = lens[t];                                                              \
        if (accumulate) {                                                                       \
            for (int64_t i = 0; i < m; i++)                                                     \
                g[i] = g[i] + (a1 * ((T)(w[i] > 0) - (T)(w[i] < 0)) + a2 * w[i]);               \
        } else {                                                                                \
            for (int64_t i = 0; i < m; i++)                                                     \
                g[i] = a1 * ((T)(w[i] > 0) - (T)(w[i] < 0)) + a2 * w[i];                        \
        }                                                                                       \
    }                                                                                           \
}                                                                                               \
RT_TARGETS void rt_value_grad_##S(int64_t n, T *const *ws, T *const *gs, const int64_t *lens,   \
                                  T a1, T a2, double *sums) {                                   \
    const int64_t sign_off = ~((int64_t)1 << 63);                                               \
    const rt_v8l magnitude = {sign_off, sign_off, sign_off, sign_off,                           \
                              sign_off, sign_off, sign_off, sign_off};                          \
    rt_v8d abs_acc = {0}, square_acc = {0};                                                     \
    double abs_sum = 0, square_sum = 0;                                                         \
    for (int64_t t = 0; t < n; t++) {                                                           \
        const T *restrict w = ws[t];                                                            \
        const int64_t m = lens[t], bulk = m - m % 8;                                            \
        for (int64_t i = 0; i < bulk; i += 8) {                                                 \
            rt_v8##S lanes;                                                                     \
            memcpy(&lanes, w + i, sizeof lanes);                                                \
            const rt_v8d x = __builtin_convertvector(lanes, rt_v8d);                            \
            abs_acc += (rt_v8d)((rt_v8l)x & magnitude);                                         \
            square_acc += x * x;                                                                \
        }                                                                                       \
        for (int64_t i = bulk; i < m; i++) {                                                    \
            const double x = (double)w[i];                                                      \
            abs_sum += x < 0 ? -x : x;                                                          \
            square_sum += x * x;                                                                \
        }                                                                                       \
        if (gs) {                                                                               \
            T *restrict g = gs[t];                                                              \
            for (int64_t i = 0; i < m; i++)                                                     \
                g[i] = a1 * ((T)(w[i] > 0) - (T)(w[i] < 0)) + a2 * w[i];                        \
        }                                                                                       \
    }                                                                                           \
    for (int j = 0; j < 8; j++) {                                                               \
        abs_sum += abs_acc[j];                                                                  \
        square_sum += square_acc[j];                                                            \
    }                                                                                           \
    sums[0] = abs_sum;                                                                          \
    sums[1] = square_sum;                                                                       \
}

RT_KERNELS(float, f32)
RT_KERNELS(double, f64)
"""

# No contraction into FMA: the kernels round as ATen's separate operations do.
_FLAGS = ("-O3", "-shared", "-fPIC", "-ffp-contract=off", "-fno-math-errno")

_SCALAR = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}

_PLAIN = (torch.Tensor, torch.nn.Parameter)
"""Tensor classes whose ``data_ptr`` is all their data (not a DTensor shard, a fake tensor)."""

_lock = threading.Lock()
_arrays_of: dict[tuple[int, ...], tuple[ctypes.Array, ctypes.Array]] = {}


def _compiler() -> str | None:
    chosen = os.environ.get("CC")
    if chosen:
        return shutil.which(chosen)
    return next((found for cc in ("cc", "gcc", "clang") if (found := shutil.which(cc))), None)


def _cache_dir() -> Path:
    chosen = os.environ.get("REGTORCH_CACHE_DIR")
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "regtorch"


def _build(compiler: str, target: Path, clones: bool) -> None:
    """Compile the library into ``target`` atomically (a temporary file, then a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    source = Path(temporary).with_suffix(".c")
    try:
        source.write_text(_SOURCE)
        command = [compiler, *_FLAGS, *(["-DRT_CLONES"] if clones else []), str(source), "-o", temporary]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
        os.replace(temporary, target)
    finally:
        source.unlink(missing_ok=True)
        Path(temporary).unlink(missing_ok=True)


def _load() -> dict[tuple[str, torch.dtype], Any] | None:
    """Compile (first use on this machine) and load the library; return its kernels by
    ``(name, dtype)``, or None where it cannot be loaded."""
    if os.environ.get("REGTORCH_NATIVE", "1") == "0":
        return None
    compiler = _compiler()
    if compiler is None:
        return None
    clones = platform.machine().lower() in ("x86_64", "amd64")
    key = hashlib.sha256(f"{_SOURCE}{_FLAGS}{clones}{compiler}{platform.machine()}".encode()).hexdigest()
    target = _cache_dir() / f"kernels-{key[:16]}.so"
    try:
        if not target.exists():
            try:
                _build(compiler, target, clones)
            except subprocess.CalledProcessError:
                if not clones:
                    raise
                clones = False  # an old compiler without target_clones: one portable build
                _build(compiler, target, clones)
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", None) or error
        warnings.warn(
            f"regtorch could not build its C kernels with {compiler} ({str(detail).strip()[:300]}); "
            "using ATen's kernels for this process.",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    pointers, size, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    kernels = {}
    for dtype, suffix in _SUFFIX.items():
        scalar = _SCALAR[dtype]
        arguments = {
            "prox": [size, pointers, pointers, scalar, scalar, flag],
            "add_grad": [size, pointers, pointers, pointers, scalar, scalar, flag],
            "value_grad": [size, pointers, pointers, pointers, scalar, scalar, pointers],
            "increment": [size, pointers, pointers],
        }
        for name, types in arguments.items():
            kernel = kernels[name, dtype] = getattr(library, f"rt_{name}_{suffix}")
            kernel.argtypes = types
    return kernels


@functools.cache
def _kernels() -> dict[tuple[str, torch.dtype], Any] | None:
    with _lock:
        return _load()


def available() -> bool:
    """Return whether the C kernels can run here (builds them on the first call)."""
    return _kernels() is not None


def takes(tensors: Sequence[torch.Tensor], grads: Sequence[torch.Tensor] | None = None) -> bool:
    """Whether the kernels take ``tensors`` (and ``grads``, one for each tensor, of its size):
    non-empty lists of plain (not subclassed), contiguous CPU tensors of one dtype (float32 or
    float64), each under :data:`NATIVE_MAX_TENSOR` elements, the kernels built, and no
    ``torch.compile`` tracing."""
    if not tensors or torch.compiler.is_compiling():  # (ctypes calls cannot be traced)
        return False
    dtype = tensors[0].dtype
    if dtype not in _SUFFIX or not _plain(tensors, dtype):
        return False
    if grads is not None:
        if len(grads) != len(tensors) or not _plain(grads, dtype):
            return False
        if any(g.numel() != t.numel() for t, g in zip(tensors, grads, strict=True)):
            return False
    return available()


def _plain(tensors: Sequence[torch.Tensor], dtype: torch.dtype) -> bool:
    for t in tensors:
        if (
            t.__class__ not in _PLAIN
            or not t.is_cpu
            or t.dtype != dtype
            or t.numel() >= NATIVE_MAX_TENSOR
            or not t.is_contiguous()
        ):
            return False
    return True


def _array(values: Sequence[int], kind: type) -> ctypes.Array:
    return (kind * len(values))(*values)


def _arrays(tensors: Sequence[torch.Tensor]) -> tuple[ctypes.Array, ctypes.Array]:
    """C arrays of the tensors' data pointers and lengths, cached: a training loop passes the same
    tensors every step (the key is the pointers and lengths themselves, so it cannot go stale)."""
    key = (*(t.data_ptr() for t in tensors), *(t.numel() for t in tensors))
    found = _arrays_of.get(key)
    if found is None:
        if len(_arrays_of) >= 64:
            _arrays_of.clear()
        half = len(tensors)
        found = _arrays_of[key] = (_array(key[:half], ctypes.c_void_p), _array(key[half:], ctypes.c_int64))
    return found


def prox_(tensors: Sequence[torch.Tensor], tau: float, c: float) -> None:
    """``wᵢ ← softshrink(wᵢ, τ) / c`` in place for tensors :func:`takes` accepts."""
    if tau <= 0 and c == 1.0:
        return
    kernel = _kernels()["prox", tensors[0].dtype]
    pointers, lengths = _arrays(tensors)
    kernel(len(tensors), pointers, lengths, tau, c, int(c != 1.0))
    torch.autograd.graph.increment_version(tensors)


def increment_(tensors: Sequence[torch.Tensor]) -> None:
    """``xᵢ ← xᵢ + 1`` in place for tensors :func:`takes` accepts (``torch._foreach_add_(xs, 1)``)."""
    kernel = _kernels()["increment", tensors[0].dtype]
    kernel(len(tensors), *_arrays(tensors))
    torch.autograd.graph.increment_version(tensors)


def add_grad_(
    tensors: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    a1: float,
    a2: float,
    *,
    accumulate: bool = True,
) -> None:
    """``gᵢ ← gᵢ + a₁·sign(wᵢ) + a₂·wᵢ`` in place (without ``accumulate``: ``gᵢ ← a₁·sign(wᵢ) + a₂·wᵢ``)
    for lists that ``takes(tensors, grads)`` accepts."""
    kernel = _kernels()["add_grad", tensors[0].dtype]
    pointers, lengths = _arrays(tensors)
    kernel(len(tensors), pointers, _arrays(grads)[0], lengths, a1, a2, int(accumulate))
    torch.autograd.graph.increment_version(grads)


def value_grad(
    tensors: Sequence[torch.Tensor],
    a1: float = 0.0,
    a2: float = 0.0,
    outs: Sequence[torch.Tensor] | None = None,
) -> tuple[float, float]:
    """Return ``(Σ|w|, Σw²)`` over all tensors, summed in float64; with ``outs`` (contiguous, each
    of its tensor's size and dtype) also write ``outsᵢ ← a₁·sign(wᵢ) + a₂·wᵢ`` in the same pass."""
    kernel = _kernels()["value_grad", tensors[0].dtype]
    sums = (ctypes.c_double * 2)()
    pointers, lengths = _arrays(tensors)
    out_pointers = _array([g.data_ptr() for g in outs], ctypes.c_void_p) if outs else None
    kernel(len(tensors), pointers, out_pointers, lengths, a1, a2, sums)
    return sums[0], sums[1]
