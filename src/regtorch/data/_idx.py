"""Reader and writer for IDX files, the binary format of the MNIST distribution files.

An IDX file is a 4-byte magic number, one big-endian unsigned 32-bit size per dimension, then
the values in C order, big-endian. The magic is two zero bytes, a type code and the number of
dimensions:

==========  ==============================
type code   element type
==========  ==============================
``0x08``    unsigned byte (``uint8``)
``0x09``    signed byte (``int8``)
``0x0B``    signed short (``>i2``)
``0x0C``    signed int (``>i4``)
``0x0D``    float (``>f4``)
``0x0E``    double (``>f8``)
==========  ==============================

MNIST's label files have magic ``0x00000801`` (unsigned bytes, one dimension) and its image
files ``0x00000803`` (unsigned bytes, three dimensions).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from regtorch._untrusted import check_fits_in_memory

from ._errors import DataError

__all__ = ["read_idx", "write_idx"]

_GZIP_MAGIC = b"\x1f\x8b"

# type code -> big-endian numpy dtype
_CODE_TO_DTYPE: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# numpy dtype (native or either byte order) -> type code, keyed by kind and item size
_KIND_SIZE_TO_CODE: dict[tuple[str, int], int] = {
    ("u", 1): 0x08,
    ("i", 1): 0x09,
    ("i", 2): 0x0B,
    ("i", 4): 0x0C,
    ("f", 4): 0x0D,
    ("f", 8): 0x0E,
}

_MNIST_MAGIC_HINT = "expected 0x00000801 for labels or 0x00000803 for images"


def _read_bytes(path: Path) -> tuple[bytes, bool]:
    """Return the decompressed content of ``path`` and whether it was decompressed.

    A file whose name ends in ``.gz`` must be gzip-compressed; any other file is read as is,
    unless it starts with the gzip magic bytes, in which case it is decompressed too.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file '{path}' does not exist.") from None
    except IsADirectoryError:
        raise DataError(f"IDX file '{path}' is a directory, not a file.") from None
    except OSError as exc:
        raise DataError(f"IDX file '{path}' could not be read: {exc.strerror or exc}.") from exc
    is_gz_name = path.name.lower().endswith(".gz")
    if not is_gz_name and not raw.startswith(_GZIP_MAGIC):
        return raw, False
    if not raw.startswith(_GZIP_MAGIC):
        raise DataError(
            f"IDX file '{path}' is not a valid gzip file: expected the gzip magic bytes "
            f"1f 8b at the start, found {raw[:2].hex(' ') or 'an empty file'}."
        )
    try:
        return _gunzip_bounded(raw, path), True
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"IDX file '{path}' is not a valid gzip file (it is corrupt or truncated): {exc}."
        ) from exc


def _declared_size(header: bytes) -> int | None:
    """The file size an IDX header announces (None if the header is incomplete or invalid)."""
    if len(header) < 4 or header[2] not in _CODE_TO_DTYPE or header[3] == 0:
        return None
    ndim = header[3]
    if len(header) < 4 + 4 * ndim:
        return None
    shape = struct.unpack(f">{ndim}I", header[4 : 4 + 4 * ndim])
    return 4 + 4 * ndim + math.prod(shape) * _CODE_TO_DTYPE[header[2]].itemsize


def _gunzip_bounded(raw: bytes, path: Path) -> bytes:
    """Decompress ``raw`` no further than one byte past the size its IDX header announces.

    A file that decompresses to more (a gzip bomb) is cut there and reported as having trailing
    bytes ("found more than"); a header announcing more than the memory available is refused
    before decompressing.
    """
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
        head = stream.read(4)
        head += stream.read(4 * head[3]) if len(head) == 4 else b""
        size = _declared_size(head)
        if size is None:
            return head
        try:
            check_fits_in_memory(2 * size, f"IDX file '{path}' declares {size:,} bytes of data that")
        except ValueError as exc:
            raise DataError(f"{exc}.") from None
        return head + stream.read(size - len(head) + 1)


def _magic_hint(expected_ndim: int | None) -> str:
    if expected_ndim == 1:
        return "expected 0x00000801 for labels"
    if expected_ndim == 3:
        return "expected 0x00000803 for images"
    if expected_ndim is not None:
        return f"expected 0x{0x0800 + expected_ndim:08X} for a {expected_ndim}-dimensional array"
    return _MNIST_MAGIC_HINT


def read_idx(path: str | os.PathLike[str], *, expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a numpy array.

    Args:
        path: The file. A name ending in ``.gz`` is decompressed with gzip; other files are
            read as they are (or decompressed if they start with the gzip magic bytes).
        expected_ndim: If given, the number of dimensions the magic number must announce
            (1 for MNIST label files, 3 for image files); a different number is reported
            as a bad magic number.

    Returns:
        A C-contiguous array in native byte order whose dtype follows the type code
        (``uint8``, ``int8``, ``int16``, ``int32``, ``float32`` or ``float64``) and whose
        shape is the one stored in the header.

    Raises:
        DataError: If the file is missing or unreadable, is not valid gzip when it should be,
            has a bad magic number, or its size does not match the header (truncated or
            with trailing bytes). The message names the file, what was expected and what was
            found.
    """
    p = Path(path)
    data, decompressed = _read_bytes(p)
    if len(data) < 4:
        raise DataError(
            f"IDX file '{p}' is truncated: expected at least a 4-byte header, "
            f"found {len(data)} bytes."
        )
    magic = int.from_bytes(data[:4], "big")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or code not in _CODE_TO_DTYPE or ndim == 0:
        raise DataError(
            f"IDX file '{p}' has a bad magic number 0x{magic:08X} ({_magic_hint(expected_ndim)}; "
            "an IDX magic number is two zero bytes, a type code 0x08, 0x09, 0x0B, 0x0C, 0x0D "
            "or 0x0E, and the number of dimensions)."
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(
            f"IDX file '{p}' has a bad magic number 0x{magic:08X} "
            f"({_magic_hint(expected_ndim)}; this file holds a {ndim}-dimensional array)."
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(
            f"IDX file '{p}' is truncated: expected a {header_size}-byte header for "
            f"{ndim} dimensions, found {len(data)} bytes."
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _CODE_TO_DTYPE[code]
    expected_size = header_size + math.prod(shape) * dtype.itemsize
    if len(data) != expected_size:
        problem = "is truncated" if len(data) < expected_size else "has trailing bytes"
        found = f"more than {expected_size}" if decompressed else str(len(data))  # decompression stops
        raise DataError(
            f"IDX file '{p}' {problem}: expected {expected_size} bytes of data for shape "
            f"{tuple(shape)}, found {found}."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    # A copy in native byte order: writable, and independent of the decompressed buffer.
    return array.astype(dtype.newbyteorder("="), order="C")


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write an array to an IDX file, gzip-compressed when ``path`` ends with ``.gz``.

    The file is written to a temporary name next to ``path`` and then moved into place, so a
    reader never sees a half-written file. Gzip output is reproducible (its timestamp is 0).

    Args:
        path: Destination file.
        array: Array (or anything :func:`numpy.asarray` accepts, such as a CPU tensor) with
            at least one dimension, each below 2**32, of dtype ``uint8``, ``int8``,
            ``int16``, ``int32``, ``float32`` or ``float64``.

    Raises:
        ValueError: If the dtype has no IDX type code, or the array is 0-dimensional, has
            more than 255 dimensions, or a dimension too large for the header.
        OSError: If the file cannot be written.
    """
    arr = np.asarray(array)
    code = _KIND_SIZE_TO_CODE.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None:
        raise ValueError(
            "The 'array' argument of write_idx must have dtype uint8, int8, int16, int32, "
            f"float32 or float64; got {arr.dtype}."
        )
    if not 1 <= arr.ndim <= 255:
        raise ValueError(
            "The 'array' argument of write_idx must have between 1 and 255 dimensions; "
            f"got {arr.ndim}."
        )
    if any(d >= 2**32 for d in arr.shape):
        raise ValueError(
            "The 'array' argument of write_idx must have every dimension below 2**32; "
            f"got shape {arr.shape}."
        )
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder(">")).tobytes()
    p = Path(path)
    if p.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
