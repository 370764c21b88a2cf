"""Tests for save_sparse / load_sparse: bitwise round trips, compactness, safe loading."""

from __future__ import annotations

import io
import os

import pytest
import torch
from torch import nn

from regtorch.sparse._sparse_io import SparseSaveInfo, load_sparse, save_sparse


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor, to compare bitwise (NaN payloads and -0.0 included)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def assert_bitwise_equal(expected: dict, got: dict) -> None:
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert torch.equal(bits(got[name]), bits(tensor)), name


def sparse_model(zero_fraction: float = 0.7) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip
    model(torch.randn(4, 3, 6, 6))  # non-trivial running stats and num_batches_tracked
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.mul_(torch.rand(param.shape, generator=gen) >= zero_fraction)
    return model


def test_round_trip_bitwise_with_70_percent_zeros(tmp_path) -> None:
    model = sparse_model()
    state = model.state_dict()
    path = tmp_path / "model.rts"
    info = save_sparse(model, path)
    loaded = load_sparse(path)
    assert_bitwise_equal(state, loaded)
    assert loaded["1.num_batches_tracked"].dtype == torch.int64
    assert int(loaded["1.num_batches_tracked"]) == 1
    assert isinstance(info, SparseSaveInfo)
    assert set(info.sparse_tensors) >= {"0.weight", "4.weight", "6.weight"}
    assert "1.running_var" not in info.sparse_tensors
    assert info.tensors == len(state)
    fresh = sparse_model(0.0)
    fresh.load_state_dict(loaded)
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


def test_file_smaller_than_dense_and_info(tmp_path) -> None:
    model = sparse_model()
    path = tmp_path / "model.rts"
    info = save_sparse(model, str(path))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert info.file_bytes == os.path.getsize(path)
    assert info.dense_bytes == buffer.getbuffer().nbytes
    assert info.file_bytes < info.dense_bytes
    assert info.ratio == pytest.approx(info.file_bytes / info.dense_bytes)
    assert info.ratio < 0.6
    assert info.path == str(path)


def test_loads_with_weights_only(tmp_path) -> None:
    path = tmp_path / "model.rts"
    save_sparse(sparse_model(), path)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "regtorch.sparse" and payload["version"] == 1
    kinds = {entry["kind"] for entry in payload["tensors"].values()}
    assert kinds <= {"dense", "indices", "bitmask"} and "dense" in kinds


def test_indices_or_bitmask_whichever_is_smaller(tmp_path) -> None:
    very_sparse = torch.zeros(10_000)
    very_sparse[[3, 500, 9_999]] = torch.tensor([1.0, -2.0, 3.0])
    half = torch.zeros(1_000, dtype=torch.float64)
    half[::2] = torch.arange(500, dtype=torch.float64) + 1
    mostly_dense = torch.arange(1, 101, dtype=torch.float32)
    state = {"very_sparse": very_sparse, "half": half, "dense": mostly_dense}
    path = tmp_path / "t.rts"
    info = save_sparse(state, path)
    entries = torch.load(path, weights_only=True)["tensors"]
    assert entries["very_sparse"]["kind"] == "indices"
    assert entries["very_sparse"]["indices"].dtype == torch.int32
    assert entries["very_sparse"]["indices"].tolist() == [3, 500, 9_999]
    assert entries["half"]["kind"] == "bitmask" and entries["half"]["mask"].numel() == 125
    assert entries["dense"]["kind"] == "dense"
    assert info.sparse_tensors == ("very_sparse", "half")
    assert_bitwise_equal(state, load_sparse(path))


def test_special_values_and_dtypes_round_trip(tmp_path) -> None:
    state = {}
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        tensor = torch.zeros(7, 9, dtype=dtype)
        tensor[0, 0] = float("nan")
        tensor[1, 2] = float("-inf")
        tensor[2, 3] = -0.0  # bitwise different from 0.0: must come back as -0.0
        tensor[3, 4] = 1.5
        state[f"t_{dtype}"] = tensor
    pruned = torch.randn(50, 40)
    state["pruned"] = pruned * (torch.rand(50, 40) > 0.8)  # -0.0 where negatives were masked
    state["scalar"] = torch.tensor(0.0)
    state["empty"] = torch.zeros(0, 3)
    state["ints"] = torch.zeros(10, dtype=torch.int64)
    state["bools"] = torch.zeros(10, dtype=torch.bool)
    state["view"] = torch.zeros(100)[10:20]
    path = tmp_path / "special.rts"
    info = save_sparse(state, path)
    assert "pruned" in info.sparse_tensors and "ints" not in info.sparse_tensors
    loaded = load_sparse(path)
    assert_bitwise_equal(state, loaded)
    assert torch.signbit(loaded["t_torch.float32"][2, 3])


def test_atomic_write_leaves_no_temporary_files(tmp_path) -> None:
    path = tmp_path / "model.rts"
    path.write_bytes(b"old")
    save_sparse({"w": torch.zeros(4)}, path)
    assert sorted(os.listdir(tmp_path)) == ["model.rts"]
    assert_bitwise_equal({"w": torch.zeros(4)}, load_sparse(path))


def test_failed_write_keeps_old_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "model.rts"
    path.write_bytes(b"old")

    def broken_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_sparse({"w": torch.zeros(4)}, path)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.rts"]


def test_bad_inputs(tmp_path) -> None:
    with pytest.raises(TypeError, match="'model_or_state_dict' argument of save_sparse must be"):
        save_sparse([torch.zeros(2)], tmp_path / "a.rts")
    with pytest.raises(TypeError, match="got int under the key 'step'"):
        save_sparse({"step": 3}, tmp_path / "a.rts")
    with pytest.raises(TypeError, match="'path' argument of save_sparse must be a str"):
        save_sparse({"w": torch.zeros(2)}, 42)
    with pytest.raises(FileNotFoundError, match="'path' argument of save_sparse must be in an"):
        save_sparse({"w": torch.zeros(2)}, tmp_path / "missing" / "a.rts")
    with pytest.raises(TypeError, match="'path' argument of load_sparse must be a str"):
        load_sparse(None)
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match="must name a file written by save_sparse"):
        load_sparse(plain)
    newer = tmp_path / "newer.rts"
    torch.save({"format": "regtorch.sparse", "version": 99, "tensors": {}}, newer)
    with pytest.raises(ValueError, match="version 99"):
        load_sparse(newer)


def _indices_entry(shape, values, indices) -> dict:
    return {"kind": "indices", "shape": shape, "dtype": "float32", "indices": indices, "values": values}


def _bitmask_entry(shape, values, mask) -> dict:
    return {"kind": "bitmask", "shape": shape, "dtype": "float32", "mask": mask, "values": values}


ONE = torch.ones(1)
FIRST = torch.tensor([0], dtype=torch.int32)

# (crafted entry of the tensor "w", what the message must say): each is refused before any tensor
# of its declared shape is allocated.
CRAFTED = [
    (_indices_entry([100_000, 100_000], torch.ones(0), torch.zeros(0, dtype=torch.int32)),
     r"declares sparse tensors that need 40\.0 GB of memory, more than"),
    (_indices_entry([10**9, 10**9], ONE, FIRST), r"need 4000\.0 PB of memory"),
    (_indices_entry([-4], ONE, FIRST), r"'w' with the shape \[-4\]; expected sizes >= 0"),
    (_indices_entry([4.5], ONE, FIRST), r"'w' with the shape \[4\.5\]"),
    (_indices_entry("4", ONE, FIRST), r"'w' with the shape '4'"),
    (_indices_entry([4], torch.ones(2), FIRST), r"'w' \(shape \[4\]\) with 1 indices for 2 values"),
    (_indices_entry([4], ONE, torch.tensor([4], dtype=torch.int32)), r"with indices outside \[0, 4\)"),
    (_indices_entry([4], ONE, torch.tensor([-1], dtype=torch.int64)), r"with indices outside \[0, 4\)"),
    (_indices_entry([4], ONE, torch.tensor([0.0])), r"indices that are not a 1-D int32/int64 tensor"),
    (_indices_entry([4], torch.ones(1, dtype=torch.float64), FIRST), r"the values of 'w' as something else"),
    (_indices_entry([4], "1", FIRST), r"the values of 'w' as something else than a 1-D torch\.float32"),
    ({**_indices_entry([4], ONE, FIRST), "dtype": "Tensor"}, r"'w' with the unknown dtype 'Tensor'"),
    ({**_indices_entry([4], ONE, FIRST), "dtype": "int64"}, r"'w' with the unknown dtype 'int64'"),
    ({**_indices_entry([4], ONE, FIRST), "negative_zeros": {"indices": torch.tensor([9])}},
     r"with indices outside \[0, 4\)"),
    (_bitmask_entry([20], ONE, torch.zeros(2, dtype=torch.uint8)), r"a mask of 2 bytes for 20 entries \(expected 3\)"),
    (_bitmask_entry([20], ONE, torch.tensor([0, 0, 0xFF], dtype=torch.uint8)), r"mask bits set beyond the last"),
    (_bitmask_entry([20], ONE, torch.tensor([3, 0, 0], dtype=torch.uint8)),
     r"a mask whose set bits do not number the 1 stored values"),
    (_bitmask_entry([20], ONE, torch.ones(3)), r"a mask that is not a 1-D uint8 tensor"),
    ({"kind": "dense", "tensor": "zeros"}, r"stores 'w' as dense without a tensor"),
    ({"kind": "mystery"}, r"holds an unknown entry for 'w'"),
]


@pytest.mark.parametrize(("entry", "message"), CRAFTED, ids=range(len(CRAFTED)))
def test_crafted_files_are_refused_before_allocating(tmp_path, monkeypatch, entry, message) -> None:
    import regtorch._untrusted as untrusted

    monkeypatch.setattr(untrusted, "available_memory", lambda: 20 * 10**9)  # the same on every machine
    path = tmp_path / "crafted.rts"
    torch.save({"format": "regtorch.sparse", "version": 1, "tensors": {"w": entry}}, path)
    zeros = torch.zeros
    monkeypatch.setattr(torch, "zeros", lambda *a, **k: pytest.fail("allocated") if a and a[0] > 10**6 else zeros(*a, **k))
    with pytest.raises(ValueError, match=message):
        load_sparse(path)


class _Code:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"The file '.*' is empty or truncated$"),
        (b"not a torch file", r"is damaged or not a torch file \(.*\)$"),
        ("code", r"holds objects other than tensors.*\(it refers to (posix|os)\.system\); regtorch does not load"),
        ("no-tensors", r"holds no mapping of tensor names to entries"),
    ],
)
def test_damaged_files_are_one_clear_error(tmp_path, content, message) -> None:
    path = tmp_path / "bad.rts"
    if content == "code":
        torch.save({"format": "regtorch.sparse", "version": 1, "tensors": {"w": _Code()}}, path)
    elif content == "no-tensors":
        torch.save({"format": "regtorch.sparse", "version": 1, "tensors": [1, 2]}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as caught:
        load_sparse(path)
    assert "weights_only" not in str(caught.value)
