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
import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from regtorch._untrusted import check_fits_in_memory, load_weights_only
from regtorch.regularizer._selection import unwrap_model

__all__ = ["SparseSaveInfo", "load_sparse", "save_sparse"]

FORMAT = "regtorch.sparse"
VERSION = 1
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_POPCOUNT = torch.tensor([bin(b).count("1") for b in range(256)], dtype=torch.int64)
_INDEX_DTYPES = (torch.int32, torch.int64)


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


def _positions_problem(positions: Any, numel: int, count: int | None) -> str | None:
    """What is wrong with stored ``{"indices": i}`` or ``{"mask": m}`` positions (None: fine).

    ``count``: how many positions must be set (the number of stored values), if known.
    """
    if not isinstance(positions, dict):
        return "positions that are not a dict"
    if "indices" in positions:
        indices = positions["indices"]
        if not isinstance(indices, torch.Tensor) or indices.ndim != 1 or indices.dtype not in _INDEX_DTYPES:
            return "indices that are not a 1-D int32/int64 tensor"
        if count is not None and indices.numel() != count:
            return f"{indices.numel()} indices for {count} values"
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= numel):
            return f"indices outside [0, {numel})"
        return None
    mask = positions.get("mask")
    if not isinstance(mask, torch.Tensor) or mask.ndim != 1 or mask.dtype != torch.uint8:
        return "a mask that is not a 1-D uint8 tensor"
    if mask.numel() != -(-numel // 8):
        return f"a mask of {mask.numel()} bytes for {numel} entries (expected {-(-numel // 8)})"
    if numel % 8 and int(mask[-1]) >> (numel % 8):
        return "mask bits set beyond the last entry"
    if count is not None and int(_POPCOUNT[mask.to(torch.int64)].sum()) != count:
        return f"a mask whose set bits do not number the {count} stored values"
    return None


def _entry_bytes(name: str, entry: Any, path: str) -> int:
    """Check one stored entry against itself; return the bytes its dense tensor will take.

    Raises:
        ValueError: Naming the tensor and what does not match.
    """
    kind = entry.get("kind") if isinstance(entry, dict) else None
    if kind == "dense":
        if not isinstance(entry.get("tensor"), torch.Tensor):
            raise ValueError(f"{path!r} stores {name!r} as dense without a tensor; the file is damaged.")
        return 0
    if kind not in ("indices", "bitmask"):
        raise ValueError(f"{path!r} holds an unknown entry for {name!r}; is it from save_sparse?")
    dtype = getattr(torch, entry["dtype"], None) if isinstance(entry.get("dtype"), str) else None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{path!r} stores {name!r} with the unknown dtype {entry.get('dtype')!r}.")
    shape = entry.get("shape")
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ValueError(f"{path!r} stores {name!r} with the shape {shape!r}; expected sizes >= 0.")
    numel = math.prod(shape)
    values = entry.get("values")
    if not isinstance(values, torch.Tensor) or values.ndim != 1 or values.dtype != dtype:
        raise ValueError(f"{path!r} stores the values of {name!r} as something else than a 1-D {dtype}.")
    positions = {k: entry[k] for k in ("indices", "mask") if k in entry}
    problem = _positions_problem(positions, numel, values.numel())
    if problem is None and "negative_zeros" in entry:
        problem = _positions_problem(entry["negative_zeros"], numel, None)
    if problem is not None:
        raise ValueError(f"{path!r} stores {name!r} (shape {list(shape)}) with {problem}; it is damaged.")
    return numel * values.element_size()


def _decode(entry: dict[str, Any]) -> torch.Tensor:
    if entry["kind"] == "dense":
        return entry["tensor"]
    dtype = getattr(torch, entry["dtype"])
    shape, values = entry["shape"], entry["values"]
    numel = math.prod(shape)
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

    Every stored entry is checked against itself before any tensor is rebuilt: shape, dtype,
    number of values, indices within the shape, mask length and set bits; and the tensors
    together must fit in the memory available.

    Raises:
        TypeError: If ``path`` is not a str or path-like.
        ValueError: If the file was not written by :func:`save_sparse`, is damaged or crafted
            (the message names the tensor and what does not match), holds objects other than
            tensors and plain containers, or declares more than the memory available.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "The 'path' argument of load_sparse must be a str or os.PathLike; got "
            f"{type(path).__name__}."
        )
    path = os.fspath(path)
    payload = load_weights_only(path, f"The file {path!r}", map_location=map_location)
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
    tensors = payload.get("tensors")
    if not isinstance(tensors, dict) or not all(isinstance(k, str) for k in tensors):
        raise ValueError(f"{path!r} holds no mapping of tensor names to entries; the file is damaged.")
    total = sum(_entry_bytes(name, entry, path) for name, entry in tensors.items())
    check_fits_in_memory(total, f"{path!r} declares sparse tensors that")
    return {name: _decode(entry) for name, entry in tensors.items()}
