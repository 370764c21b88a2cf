"""Reading files that may be damaged or crafted: ``torch.load`` without code, sizes against memory.

Both helpers raise :class:`ValueError` with one line that says what is wrong with the file,
never torch's advice to load it with ``weights_only=False`` (which would run its code).
"""

from __future__ import annotations

import os
import pickle
import re
from typing import IO, Any

import torch

__all__ = ["available_memory", "check_fits_in_memory", "format_bytes", "load_weights_only"]

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
# What torch.load raises for a damaged file, besides UnpicklingError and EOFError.
_DAMAGED = (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError, MemoryError, OSError)


def load_weights_only(source: str | os.PathLike[str] | IO[bytes], what: str, map_location: Any = None) -> Any:
    """``torch.load(source, weights_only=True)``; a damaged or crafted file raises ValueError.

    Args:
        source: A path or a binary file object.
        what: The file in words, e.g. ``"the checkpoint 'run/checkpoint.pt'"``.
        map_location: Passed to :func:`torch.load`.

    Raises:
        ValueError: ``"<what> ..."``: empty, truncated, not a torch file, or holding objects other
            than tensors and plain containers (refused without running anything).
        OSError: If the path is missing, a folder or not readable.
    """
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise  # about the path, not the content
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        if found is None:
            raise ValueError(f"{what} is damaged or not a torch file (its pickled data is invalid)") from None
        raise ValueError(
            f"{what} holds objects other than tensors, numbers, strings and containers (it refers "
            f"to {found.group(1)}); regtorch does not load such files because loading them could run code"
        ) from None
    except EOFError:
        raise ValueError(f"{what} is empty or truncated") from None
    except _DAMAGED as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{what} is damaged or not a torch file ({first[:200]})") from None


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (``MemAvailable`` plus free swap), or None."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: line.split()[1] for line in f if ":" in line}
        return (int(info["MemAvailable"]) + int(info.get("SwapFree", 0))) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KB"`` (powers of 1000)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Refuse (ValueError) to allocate ``nbytes`` for ``what`` beyond :func:`available_memory`.

    Args:
        nbytes: The bytes about to be allocated.
        what: What asks for them, e.g. ``"'model.rts' declares tensors that"``.
    """
    limit = available_memory()
    if limit is not None and nbytes > limit:
        raise ValueError(
            f"{what} need {format_bytes(nbytes)} of memory, more than the {format_bytes(limit)} "
            "this machine has available"
        )
