"""download(): served from memory through a monkeypatched opener; never the network."""

from __future__ import annotations

import hashlib
import io
import re
import urllib.error
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from regtorch.data import DataError, download, load_dataset, write_idx
from regtorch.data import _download as dl

MNIST_GZ = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


class FakeOpener:
    """Serves ``files`` (name -> bytes) for any mirror, recording every URL asked for."""

    def __init__(
        self, files: dict[str, bytes], error: Callable[[str], Exception] | None = None
    ) -> None:
        self.files = files
        self.error = error
        self.urls: list[str] = []

    def __call__(self, url: str, timeout: float) -> io.BytesIO:
        assert timeout > 0
        self.urls.append(url)
        if self.error is not None:
            raise self.error(url)
        return io.BytesIO(self.files[url.rsplit("/", 1)[1]])


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(url: str, timeout: float) -> io.BytesIO:
        raise AssertionError(f"a test tried to open {url}")

    monkeypatch.setattr(dl, "open_url", refuse)


def _synthetic_mnist_files(tmp_path: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(20) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(10) % 10).astype(np.uint8),
    }
    src = tmp_path / "src"
    src.mkdir()
    files = {}
    for name, array in arrays.items():
        write_idx(src / name, array)
        files[name] = (src / name).read_bytes()
    return files


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Synthetic MNIST files, with the md5 table of 'mnist' replaced by theirs."""
    files = _synthetic_mnist_files(tmp_path)
    source = dl._SOURCES["mnist"]
    table = tuple((name, hashlib.md5(files[name]).hexdigest()) for name in MNIST_GZ)
    monkeypatch.setitem(dl._SOURCES, "mnist", dl._Source(source.title, source.mirrors, table))
    return files


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_checksums_ok_files_written(
    tmp_path: Path, served: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    opener = FakeOpener(served)
    monkeypatch.setattr(dl, "open_url", opener)
    folder = download("mnist", tmp_path / "data")
    assert folder == tmp_path / "data" / "mnist"
    assert _listing(folder) == sorted(MNIST_GZ)  # no temporary files left
    for name in MNIST_GZ:
        assert (folder / name).read_bytes() == served[name]
    assert opener.urls == [dl._SOURCES["mnist"].mirrors[0] + name for name in MNIST_GZ]


def test_real_mnist_checksums(
    tmp_path: Path, shared_mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {name: (shared_mnist_dir / name).read_bytes() for name in MNIST_GZ}
    monkeypatch.setattr(dl, "open_url", FakeOpener(files))
    folder = download("mnist", tmp_path)
    assert _listing(folder) == sorted(MNIST_GZ)


def test_wrong_checksum_raises_and_leaves_no_file(
    tmp_path: Path, served: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    corrupted = dict(served)
    corrupted["t10k-images-idx3-ubyte.gz"] = b"corrupted"
    monkeypatch.setattr(dl, "open_url", FakeOpener(corrupted))
    bad_md5 = hashlib.md5(b"corrupted").hexdigest()
    with pytest.raises(DataError) as info:
        download("mnist", tmp_path)
    message = str(info.value)
    assert "'t10k-images-idx3-ubyte.gz'" in message
    assert f"its md5 is {bad_md5}, expected " in message and "the file was deleted" in message
    assert "t10k-images-idx3-ubyte.gz" not in _listing(tmp_path / "mnist")
    assert not [n for n in _listing(tmp_path / "mnist") if n.endswith(".part")]


@pytest.mark.parametrize(
    "error",
    [
        lambda url: urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
        lambda url: TimeoutError("timed out"),
        lambda url: ConnectionRefusedError(111, "Connection refused"),
    ],
    ids=["urlerror", "timeout", "refused"],
)
def test_unreachable_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Callable[[str], Exception]
) -> None:
    opener = FakeOpener({}, error=error)
    monkeypatch.setattr(dl, "open_url", opener)
    with pytest.raises(DataError) as info:
        download("fashion-mnist", tmp_path)
    message = str(info.value)
    assert "the network is unreachable" in message
    assert "Fashion-MNIST" in message and "train-images-idx3-ubyte.gz" in message
    assert f"place them in '{tmp_path / 'fashion-mnist'}'" in message
    assert len(opener.urls) == 1  # one mirror, then give up
    assert _listing(tmp_path / "fashion-mnist") == []


def test_all_mirrors_are_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opener = FakeOpener({}, error=lambda url: urllib.error.URLError("down"))
    monkeypatch.setattr(dl, "open_url", opener)
    with pytest.raises(DataError, match=r"network is unreachable \(https://.*: down; http://"):
        download("mnist", tmp_path)
    assert opener.urls == [m + "train-images-idx3-ubyte.gz" for m in dl._SOURCES["mnist"].mirrors]


def test_http_error_is_not_called_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_found(url: str) -> Exception:
        return urllib.error.HTTPError(url, 404, "Not Found", None, None)  # type: ignore[arg-type]

    monkeypatch.setattr(dl, "open_url", FakeOpener({}, error=not_found))
    with pytest.raises(
        DataError, match=r"the server refused it \(.*cifar-10-python.tar.gz: HTTP 404"
    ):
        download("cifar10", tmp_path)


def test_present_files_are_not_fetched_again(
    tmp_path: Path, served: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in MNIST_GZ[:3]:
        (folder / name).write_bytes(served[name])
    (folder / MNIST_GZ[3]).write_bytes(b"stale")  # wrong md5: fetched again
    opener = FakeOpener(served)
    monkeypatch.setattr(dl, "open_url", opener)
    download("mnist", tmp_path)
    assert [url.rsplit("/", 1)[1] for url in opener.urls] == [MNIST_GZ[3]]
    assert (folder / MNIST_GZ[3]).read_bytes() == served[MNIST_GZ[3]]
    opener.urls.clear()
    download("mnist", tmp_path)
    assert opener.urls == []


def test_load_dataset_downloads_when_asked(
    tmp_path: Path, served: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    opener = FakeOpener(served)
    monkeypatch.setattr(dl, "open_url", opener)
    with pytest.raises(DataError, match=r"MNIST files not found"):
        load_dataset("mnist", data_dir=tmp_path)
    assert opener.urls == []
    ds = load_dataset("mnist", data_dir=tmp_path, download=True)
    assert (ds.n_train, ds.n_test) == (20, 10)
    assert len(opener.urls) == 4
    load_dataset("mnist", data_dir=tmp_path, download=True)  # found: nothing fetched
    assert len(opener.urls) == 4


def test_unknown_name(tmp_path: Path) -> None:
    expected = "Cannot download data set 'digits': only mnist, fashion-mnist, cifar10 can be"
    with pytest.raises(DataError, match=re.escape(expected)):
        download("digits", tmp_path)


def test_uncreatable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DataError, match=r"Cannot create the data folder"):
        download("mnist", blocker)


def test_default_folder_is_regtorch_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGTORCH_DATA", str(tmp_path / "env"))
    assert dl.default_data_dir() == tmp_path / "env"
    monkeypatch.delenv("REGTORCH_DATA")
    assert dl.default_data_dir() == Path.home() / ".cache" / "regtorch"


def test_checksum_table_is_well_formed() -> None:
    assert dl.DOWNLOADABLE == ("mnist", "fashion-mnist", "cifar10")
    for source in dl._SOURCES.values():
        assert source.mirrors and all(m.endswith("/") for m in source.mirrors)
        for _, md5 in source.files:
            assert re.fullmatch(r"[0-9a-f]{32}", md5)
    assert dict(dl._SOURCES["mnist"].files) == {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
