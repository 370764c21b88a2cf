"""Checkpoints (``torch.load(weights_only=True)``-safe), RNG states and atomic JSON outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from regtorch._untrusted import load_weights_only
from regtorch.training._errors import UsageError
from regtorch.training._files import atomic_write, open_regular
from regtorch.training._metrics import clean_json
from regtorch.training._runlock import checkpoint_saved

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_write",
    "capture_rng",
    "damaged",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
    "write_json",
]

CHECKPOINT_FORMAT = 1


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
    """Save ``state`` (tensors, dicts, lists and plain values only) atomically.

    Raises:
        UsageError: If it cannot be written (a full disk): the previous checkpoint is unchanged.
    """
    payload = {"format": CHECKPOINT_FORMAT, **state}
    atomic_write(path, lambda f: torch.save(payload, f))
    checkpoint_saved(path)


def damaged(path: Path, problem: str) -> UsageError:
    """The error for a checkpoint that cannot be used; says that nothing was changed."""
    return UsageError(
        f"the checkpoint '{path}' cannot be used: {problem}; nothing was changed: restore it from "
        "a copy, or start the run again with --overwrite"
    )


def _is_byte_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.ndim == 1


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code runs while loading).

    The file must be a regular file (not a symbolic link) holding a regtorch checkpoint: a dict
    with this format number, a ``model`` state dict of tensors and the ``rng`` states.

    Raises:
        UsageError: If the file cannot be read, or is damaged, or is not a regtorch checkpoint.
    """
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        raise UsageError(f"the checkpoint '{path}' does not exist") from None
    with os.fdopen(fd, "rb") as f:
        try:
            state = load_weights_only(f, f"the checkpoint '{path}'", map_location="cpu")
        except ValueError as exc:
            raise UsageError(f"{exc}; nothing was changed") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"'{path}' is not a regtorch checkpoint (format {CHECKPOINT_FORMAT})")
    model = state.get("model")
    if not isinstance(model, dict) or not model:
        raise damaged(path, "it holds no model state")
    for key, value in model.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise damaged(path, f"its model state holds {type(value).__name__} under {key!r}, not a tensor")
    rng = state.get("rng")
    if not isinstance(rng, dict) or not all(_is_byte_tensor(rng.get(k)) for k in ("torch", "batches")):
        raise damaged(path, "its random number generator states are missing or malformed")
    return state
