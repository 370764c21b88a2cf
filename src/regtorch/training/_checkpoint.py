"""Atomic files: checkpoints (``torch.load(weights_only=True)``-safe), JSON and PNG outputs."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from regtorch.training._errors import UsageError
from regtorch.training._metrics import clean_json

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_write",
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
    "write_json",
]

CHECKPOINT_FORMAT = 1


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file atomically: a temporary file in the same folder, fsync, then rename.

    A reader (or a run killed at any moment) sees the old file or the new one, never half of one.

    Args:
        path: The file to write.
        write: Writes the content into the binary file object it is given.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (NaN and infinities become null)."""
    text = json.dumps(clean_json(data), indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """Return the states of torch's global generator(s) and of the batch-order generator."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "batches": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restore :func:`capture_rng`'s states."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["batches"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save ``state`` (tensors, dicts, lists and plain values only) atomically."""
    payload = {"format": CHECKPOINT_FORMAT, **state}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code runs while loading).

    Raises:
        UsageError: If the file cannot be read or is not a regtorch checkpoint.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise UsageError(f"cannot read the checkpoint '{path}': {exc}".splitlines()[0]) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"'{path}' is not a regtorch checkpoint (format {CHECKPOINT_FORMAT})")
    return state
