"""Save and load state dicts whose tensors are mostly zeros, compactly and exactly.

A file written by :func:`save_sparse` is a plain :func:`torch.save` of dictionaries, strings,
integers and tensors, so ``torch.load(path, weights_only=True)`` reads it safely. Its layout::

    {"format": "regtorch.sparse", "version": 1,
     "tensors": {name: entry, ...}}   # in the state dict's order

where ``entry`` is one of

* ``{"kind": "dense", "tensor": t}``;
* ``{"kind": "indices", "shape": [...], "dtype": "float32", "indices": i, "values": v}`` —
  ``i`` the flat positions (int32, or int64 beyond 2**31 - 1 entries) of the entries that are
  not zero, ``v`` those entries;
* ``{"kind": "bitmask", "shape": [...], "dtype": "float32", "mask": m, "values": v}`` — ``m``
  a uint8 tensor packing one bit per entry (bit ``k % 8`` of byte ``k // 8``, least significant
  bit first), set where the entry is not zero.

A floating-point tensor with at least half of its entries zero (``0.0`` or ``-0.0``) is stored
as ``indices`` or ``bitmask``, whichever is smaller; every other tensor is stored dense. Pruning
by multiplication (``w * mask``) leaves ``-0.0`` where ``w`` was negative; to keep the round
trip bitwise exact such entries also get ``"negative_zeros": {"indices": i}`` (or
``{"mask": m}``), present only when there are any.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from regtorch.regularizer._selection import unwrap_model

__all__ = ["SparseSaveInfo", "load_sparse", "save_sparse"]

FORMAT = "regtorch.sparse"
VERSION = 1
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


@dataclass(frozen=True)
class SparseSaveInfo:
    """What :func:`save_sparse` wrote.

    Attributes:
        path: The file written.
        file_bytes: Its size in bytes.
        dense_bytes: The size of ``torch.save(state_dict)`` of the same tensors.
        ratio: ``file_bytes / dense_bytes`` (below 1 means the file is smaller).
        tensors: Number of tensors stored.
        sparse_tensors: Names of the tensors stored as indices or a bitmask.
    """

    path: str
    file_bytes: int
    dense_bytes: int
    ratio: float
    tensors: int
    sparse_tensors: tuple[str, ...]


def _state_dict(source: Any) -> Mapping[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        return unwrap_model(source).state_dict()
    if not isinstance(source, Mapping):
        raise TypeError(
            "The 'model_or_state_dict' argument of save_sparse must be an nn.Module or a "
            f"mapping of names to tensors; got {type(source).__name__}."
        )
    for key, value in source.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TypeError(
                "The 'model_or_state_dict' argument of save_sparse must map str names to "
                f"tensors; got {type(value).__name__} under the key {key!r}."
            )
    return source


def _zero_masks(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the flat integer view, where entries are ±0 (all bits but the sign clear), and
    where they are -0 (only the sign bit set)."""
    bits = tensor.detach().contiguous().reshape(-1).view(_INT_VIEW[tensor.element_size()])
    magnitude_bits = 0x7F if bits.dtype == torch.uint8 else torch.iinfo(bits.dtype).max
    zero = bits.bitwise_and(magnitude_bits) == 0
    return bits, zero, zero & (bits != 0)


def _positions(mask: torch.Tensor, count: int) -> dict[str, torch.Tensor]:
    """Flat indices of the set entries of ``mask`` or the packed mask, whichever is smaller."""
    numel = mask.numel()
    index_dtype = torch.int32 if numel <= torch.iinfo(torch.int32).max else torch.int64
    if count * (4 if index_dtype == torch.int32 else 8) <= -(-numel // 8):
        return {"indices": mask.nonzero().reshape(-1).to(index_dtype)}
    return {"mask": _pack(mask)}


def _where(positions: dict[str, torch.Tensor], numel: int) -> torch.Tensor:
    if "indices" in positions:
        return positions["indices"].to(torch.int64)
    return _unpack(positions["mask"], numel)


def _pack(mask: torch.Tensor) -> torch.Tensor:
    padded = torch.zeros(-(-mask.numel() // 8) * 8, dtype=torch.uint8, device=mask.device)
    padded[: mask.numel()] = mask.to(torch.uint8)
    return (padded.view(-1, 8) * _BITS.to(mask.device)).sum(dim=1, dtype=torch.uint8)


def _unpack(packed: torch.Tensor, numel: int) -> torch.Tensor:
    bits = packed.unsqueeze(1).bitwise_and(_BITS.to(packed.device)) != 0
    return bits.reshape(-1)[:numel]


def _dense_copy(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor alone (a view would make torch.save write its whole storage)."""
    tensor = tensor.detach()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        return tensor.clone()
    return tensor


def _encode(tensor: torch.Tensor) -> dict[str, Any]:
    numel = tensor.numel()
    sparse_kind = (
        tensor.is_floating_point()
        and tensor.layout == torch.strided
        and numel > 0
        and tensor.element_size() in _INT_VIEW
    )
    if not sparse_kind:
        return {"kind": "dense", "tensor": _dense_copy(tensor)}
    bits, zero, negative = _zero_masks(tensor)
    count = numel - int(zero.sum())
    if 2 * count > numel:
        return {"kind": "dense", "tensor": _dense_copy(tensor)}
    nonzero = ~zero
    where = _positions(nonzero, count)
    entry: dict[str, Any] = {
        "kind": "indices" if "indices" in where else "bitmask",
        "shape": list(tensor.shape),
        "dtype": str(tensor.dtype).removeprefix("torch."),
        **where,
        "values": bits[nonzero].view(tensor.dtype).clone(),
    }
    negatives = int(negative.sum())
    if negatives:
        entry["negative_zeros"] = _positions(negative, negatives)
    return entry


def _decode(name: str, entry: Any, path: str) -> torch.Tensor:
    kind = entry.get("kind") if isinstance(entry, dict) else None
    if kind == "dense":
        return entry["tensor"]
    if kind not in ("indices", "bitmask"):
        raise ValueError(f"{path!r} holds an unknown entry for {name!r}; is it from save_sparse?")
    dtype = getattr(torch, entry["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{path!r} stores {name!r} with the unknown dtype {entry['dtype']!r}.")
    shape, values = entry["shape"], entry["values"]
    numel = 1
    for size in shape:
        numel *= size
    view = _INT_VIEW[values.element_size()]
    flat = torch.zeros(numel, dtype=view, device=values.device)
    flat[_where(entry, numel)] = values.contiguous().view(view)
    if "negative_zeros" in entry:
        sign = torch.iinfo(view).min if view != torch.uint8 else 0x80
        flat[_where(entry["negative_zeros"], numel).to(flat.device)] = sign
    return flat.view(dtype).reshape(shape)


def save_sparse(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike[str]
) -> SparseSaveInfo:
    """Save a state dict, storing mostly-zero floating-point tensors compactly.

    Each floating-point tensor with at least half of its entries exactly zero is stored as its
    shape, dtype, non-zero values and either the flat int32/int64 indices of those values or a
    bitmask of one bit per entry, whichever is smaller; all other tensors (integer buffers such
    as BatchNorm's ``num_batches_tracked`` included) are stored as they are. The file is written
    to a temporary file in the same folder and then moved over ``path`` with :func:`os.replace`,
    so a reader never sees a half-written file. It contains only dicts, lists, strings, ints and
    tensors: ``torch.load(path, weights_only=True)`` reads it, and :func:`load_sparse` rebuilds
    the state dict bitwise.

    Args:
        model_or_state_dict: A module (its ``state_dict()`` is saved) or a mapping of names to
            tensors.
        path: The file to write (``str`` or path-like).

    Returns:
        A :class:`SparseSaveInfo` with the file size, the size of a dense ``torch.save`` of the
        same state dict (measured in memory) and their ratio.

    Raises:
        TypeError: If ``model_or_state_dict`` is neither a module nor a mapping of str to
            tensors, or ``path`` is not a str or path-like.
        FileNotFoundError: If the folder of ``path`` does not exist.

    Examples:
        >>> info = save_sparse(model, "model.rts")  # doctest: +SKIP
        >>> model.load_state_dict(load_sparse("model.rts"))  # doctest: +SKIP
    """
    state = _state_dict(model_or_state_dict)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "The 'path' argument of save_sparse must be a str or os.PathLike; got "
            f"{type(path).__name__}."
        )
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"The 'path' argument of save_sparse must be in an existing folder; got {path!r} "
            f"but {folder!r} does not exist."
        )
    entries = {name: _encode(tensor) for name, tensor in state.items()}
    payload = {"format": FORMAT, "version": VERSION, "tensors": entries}
    temp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise
    dense = io.BytesIO()
    torch.save(state, dense)
    file_bytes, dense_bytes = os.path.getsize(path), dense.getbuffer().nbytes
    sparse = tuple(name for name, entry in entries.items() if entry["kind"] != "dense")
    return SparseSaveInfo(
        path, file_bytes, dense_bytes, file_bytes / dense_bytes, len(entries), sparse
    )


def load_sparse(
    path: str | os.PathLike[str], *, map_location: Any = None
) -> dict[str, torch.Tensor]:
    """Load a state dict written by :func:`save_sparse`, bitwise as it was saved.

    The file is read with ``torch.load(..., weights_only=True)``.

    Args:
        path: The file (``str`` or path-like).
        map_location: Passed to :func:`torch.load` (e.g. ``"cpu"``).

    Returns:
        The state dict, in the saved order, with the saved shapes and dtypes.

    Raises:
        TypeError: If ``path`` is not a str or path-like.
        ValueError: If the file was not written by :func:`save_sparse`.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "The 'path' argument of load_sparse must be a str or os.PathLike; got "
            f"{type(path).__name__}."
        )
    path = os.fspath(path)
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"The 'path' argument of load_sparse must name a file written by save_sparse; "
            f"{path!r} is not one (load it with torch.load)."
        )
    if payload.get("version") != VERSION:
        raise ValueError(
            f"{path!r} uses version {payload.get('version')!r} of the save_sparse format; this "
            f"regtorch reads version {VERSION}."
        )
    return {name: _decode(name, entry, path) for name, entry in payload["tensors"].items()}
