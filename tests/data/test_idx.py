"""read_idx / write_idx: exact round trips and precise error messages."""

from __future__ import annotations

import gzip
import re
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regtorch.data import DataError, read_idx, write_idx

DTYPES = ["uint8", "int8", "int16", "int32", "float32", "float64"]


def _sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip_is_exact(tmp_path: Path, dtype: str, suffix: str) -> None:
    array = _sample(dtype, (3, 4, 5))
    path = tmp_path / f"array-idx3{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)
    assert back.dtype.isnative
    assert back.shape == (3, 4, 5)
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable and back.flags.c_contiguous


def test_gz_file_is_really_gzip_and_raw_file_is_not(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "a", array)
    raw = (tmp_path / "a").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 2])
    assert raw[4:12] == (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
    assert raw[12:] == array.tobytes()
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == raw


def test_multibyte_values_are_big_endian_on_disk(tmp_path: Path) -> None:
    write_idx(tmp_path / "v", np.array([1, -2], dtype=np.int32))
    raw = (tmp_path / "v").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0C, 1])
    assert raw[8:] == (1).to_bytes(4, "big") + (-2).to_bytes(4, "big", signed=True)


def test_gzip_content_without_gz_suffix_is_detected(tmp_path: Path) -> None:
    array = np.arange(6, dtype=np.int16)
    write_idx(tmp_path / "x.gz", array)
    (tmp_path / "x.gz").rename(tmp_path / "x-idx1")
    np.testing.assert_array_equal(read_idx(tmp_path / "x-idx1"), array)


@settings(max_examples=30, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=4).map(tuple),
    gz=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(dtype: str, shape: tuple[int, ...], gz: bool, seed: int) -> None:
    array = _sample(dtype, shape, seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("f.gz" if gz else "f")
        write_idx(path, array)
        back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_accepts_non_native_and_non_contiguous_input(tmp_path: Path) -> None:
    array = np.arange(24, dtype=">f8").reshape(4, 6)[:, ::2]
    write_idx(tmp_path / "f", array)
    back = read_idx(tmp_path / "f")
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("dtype", ["int64", "bool", "complex64", "uint16"])
def test_write_refuses_dtypes_without_type_code(tmp_path: Path, dtype: str) -> None:
    with pytest.raises(ValueError, match=r"'array' argument of write_idx must have dtype uint8"):
        write_idx(tmp_path / "f", np.zeros(3, dtype=dtype))


def test_write_refuses_scalars(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"between 1 and 255 dimensions; got 0"):
        write_idx(tmp_path / "f", np.uint8(3))


def test_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    write_idx(tmp_path / "f.gz", np.zeros((2, 2), dtype=np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.gz"]


# ---- errors ----------------------------------------------------------------------------------


def test_labels_expected_but_images_found(tmp_path: Path) -> None:
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(path, np.zeros((2, 28, 28), dtype=np.uint8))
    expected = (
        f"IDX file '{path}' has a bad magic number 0x00000803 (expected 0x00000801 for labels"
    )
    with pytest.raises(DataError, match=re.escape(expected)):
        read_idx(path, expected_ndim=1)


def test_garbage_magic(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"\x01\x02\x08\x01" + bytes(8))
    expected = (
        f"IDX file '{path}' has a bad magic number 0x01020801 "
        "(expected 0x00000801 for labels or 0x00000803 for images"
    )
    with pytest.raises(DataError, match=re.escape(expected)):
        read_idx(path)


def test_unknown_type_code(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes([0, 0, 0x0A, 1]) + (0).to_bytes(4, "big"))
    with pytest.raises(DataError, match=r"bad magic number 0x00000A01 .*type code 0x08"):
        read_idx(path)


def test_truncated_payload(tmp_path: Path) -> None:
    path = tmp_path / "images-idx3-ubyte"
    write_idx(path, np.zeros((3, 4, 5), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:50])
    expected = (
        f"IDX file '{path}' is truncated: expected 76 bytes of data for shape (3, 4, 5), found 50."
    )
    with pytest.raises(DataError, match=re.escape(expected)):
        read_idx(path)


def test_truncated_payload_in_gzip(tmp_path: Path) -> None:
    path = tmp_path / "t.gz"
    payload = bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big") + bytes(4)
    path.write_bytes(gzip.compress(payload))
    with pytest.raises(
        DataError, match=r"is truncated: expected 18 bytes of data for shape \(10,\)"
    ):
        read_idx(path)


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "h"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + bytes(5))
    with pytest.raises(DataError, match=r"truncated: expected a 16-byte header .*found 9 bytes"):
        read_idx(path)


def test_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_idx(path, np.zeros(4, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"xx")
    with pytest.raises(DataError, match=r"has trailing bytes: expected 12 bytes .* found 14"):
        read_idx(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"truncated: expected at least a 4-byte header, found 0"):
        read_idx(path)


def test_gz_name_but_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(b"hello world")
    with pytest.raises(DataError, match=r"not a valid gzip file: expected the gzip magic bytes"):
        read_idx(path)


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    write_idx(path, np.arange(1000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match=re.escape(f"IDX file '{path}' is not a valid gzip file")):
        read_idx(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"IDX file '.*nope' does not exist"):
        read_idx(tmp_path / "nope")


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)


def test_gzip_bomb_is_cut_at_the_declared_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.gz"
    header = bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big")
    path.write_bytes(gzip.compress(header + bytes(10 + 50 * 2**20)))  # 50 MB of trailing zeros
    read = gzip.GzipFile.read
    sizes = []
    monkeypatch.setattr(gzip.GzipFile, "read", lambda self, n=-1: sizes.append(n) or read(self, n))
    with pytest.raises(DataError, match=r"has trailing bytes: expected 18 bytes of data for shape \(10,\), "
                       r"found more than 18\."):  # fmt: skip
        read_idx(path)
    assert all(0 <= n <= 11 for n in sizes)  # never decompressed it all


def test_header_beyond_memory_is_refused_before_decompressing(tmp_path: Path, monkeypatch) -> None:
    import regtorch._untrusted as untrusted

    monkeypatch.setattr(untrusted, "available_memory", lambda: 10**9)
    path = tmp_path / "huge.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 100_000, 100_000)))
    with pytest.raises(DataError, match=r"IDX file '.*huge\.gz' declares 10,000,000,012 bytes of data that "
                       r"need 20\.0 GB of memory, more than the 1\.0 GB this machine has available\."):  # fmt: skip
        read_idx(path)
