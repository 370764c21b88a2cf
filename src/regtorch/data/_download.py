"""Downloading the standard image data sets, with md5 checks and atomic writes.

Tests (and users behind a proxy or with their own mirror) can replace the module-level
:func:`open_url` function; :func:`download` looks it up at call time.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ._errors import DataError

__all__ = ["DOWNLOADABLE", "default_data_dir", "download", "file_md5", "open_url"]

logger = logging.getLogger("regtorch.data")

_CHUNK_SIZE = 1 << 20
_USER_AGENT = "regtorch (https://pypi.org/project/regtorch/)"


@dataclass(frozen=True)
class _Source:
    """Where a data set's files come from and what they must hash to."""

    title: str
    mirrors: tuple[str, ...]
    files: tuple[tuple[str, str], ...]  # (file name, md5 hex digest)


# Checksums as published with the data sets (and listed by torchvision's dataset classes).
_SOURCES: dict[str, _Source] = {
    "mnist": _Source(
        title="MNIST",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        files=(
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
    ),
    "fashion-mnist": _Source(
        title="Fashion-MNIST",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files=(
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
    ),
    "cifar10": _Source(
        title="CIFAR-10",
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        files=(("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
    ),
}

#: Names of the data sets :func:`download` can fetch.
DOWNLOADABLE: tuple[str, ...] = tuple(_SOURCES)


def default_data_dir() -> Path:
    """Return the default root folder for data sets.

    Returns:
        ``$REGTORCH_DATA`` when that environment variable is set and not empty, otherwise
        ``~/.cache/regtorch`` (with ``~`` expanded).
    """
    env = os.environ.get("REGTORCH_DATA", "").strip()
    return Path(env).expanduser() if env else Path("~/.cache/regtorch").expanduser()


def open_url(url: str, timeout: float) -> BinaryIO:
    """Open ``url`` for reading; the single place where this package touches the network.

    Replace this module attribute (for example with ``monkeypatch.setattr``) to serve files
    from elsewhere; the replacement must return a binary file-like object usable as a
    context manager, and raise :class:`urllib.error.URLError` or :class:`OSError` when the
    network fails.

    Args:
        url: The address to fetch.
        timeout: Seconds to wait for the connection and for each read.

    Returns:
        The HTTP response, a readable binary file object.

    Raises:
        urllib.error.URLError: If the host cannot be reached (``HTTPError`` for an HTTP
            error status).
        OSError: On other socket errors, including timeouts.
    """
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    response: BinaryIO = urllib.request.urlopen(request, timeout=timeout)
    return response


def file_md5(path: str | os.PathLike[str]) -> str:
    """Return the hexadecimal md5 digest of a file, read in 1 MiB chunks.

    Args:
        path: The file.

    Returns:
        The 32-character lowercase hex digest.

    Raises:
        OSError: If the file cannot be read.
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class _Failure:
    url: str
    kind: str  # "network", "http" or "checksum"
    detail: str


class _FetchFailed(Exception):
    def __init__(self, failure: _Failure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


def _network_chunks(url: str, timeout: float) -> Iterator[bytes]:
    """Yield the body of ``url`` in chunks; network problems become :class:`_FetchFailed`."""
    try:
        with open_url(url, timeout) as response:
            while chunk := response.read(_CHUNK_SIZE):
                yield chunk
    except urllib.error.HTTPError as exc:
        raise _FetchFailed(_Failure(url, "http", f"HTTP {exc.code} {exc.reason}")) from exc
    except urllib.error.URLError as exc:
        raise _FetchFailed(_Failure(url, "network", str(exc.reason))) from exc
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, short reads
        raise _FetchFailed(_Failure(url, "network", str(exc) or type(exc).__name__)) from exc


def _fetch_one(url: str, dest: Path, md5: str, timeout: float) -> _Failure | None:
    """Download ``url`` to ``dest`` via a temporary file; ``None`` on success.

    Local file errors (creating or writing the temporary file) propagate as ``OSError``.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out:
            try:
                for chunk in _network_chunks(url, timeout):
                    digest.update(chunk)
                    out.write(chunk)
            except _FetchFailed as exc:
                return exc.failure
        got = digest.hexdigest()
        if got != md5:
            return _Failure(url, "checksum", got)
        os.replace(tmp, dest)
        return None
    finally:
        tmp.unlink(missing_ok=True)


def _raise_failures(source: _Source, filename: str, folder: Path, failures: list[_Failure]) -> None:
    by_hand = (
        f"Download the {source.title} files by hand ("
        + ", ".join(name for name, _ in source.files)
        + f") from {source.mirrors[0]} and place them in '{folder}', or point --data-dir "
        "(or $REGTORCH_DATA) at a folder that holds them."
    )
    checksum = [f for f in failures if f.kind == "checksum"]
    if checksum:
        expected = dict(source.files)[filename]
        raise DataError(
            f"Downloaded {source.title} file '{filename}' from {checksum[0].url} but its md5 is "
            f"{checksum[0].detail}, expected {expected}; the file was deleted. The mirror may "
            f"serve a corrupted or different file; try again later. {by_hand}"
        )
    http_errors = [f for f in failures if f.kind == "http"]
    if http_errors:
        tried = "; ".join(f"{f.url}: {f.detail}" for f in http_errors)
        raise DataError(
            f"Could not download {source.title} file '{filename}': the server refused it "
            f"({tried}). {by_hand}"
        )
    tried = "; ".join(f"{f.url}: {f.detail}" for f in failures)
    raise DataError(
        f"Could not download {source.title} file '{filename}': the network is unreachable "
        f"({tried}). {by_hand}"
    )


def download(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, timeout: float = 30.0
) -> Path:
    """Download a standard data set's files into ``<data_dir>/<name>/``.

    Files already there with the right md5 are not fetched again. Each file is streamed to a
    temporary file in the destination folder, its md5 is checked, and only then is it moved
    into place with :func:`os.replace`, so an interrupted or corrupted download never leaves
    a file under the final name. Mirrors are tried in order. Progress is logged at INFO level
    on the ``regtorch.data`` logger.

    ==================  =========================================================
    name                files written
    ==================  =========================================================
    ``mnist``           the four ``*-ubyte.gz`` IDX files
    ``fashion-mnist``   the four ``*-ubyte.gz`` IDX files
    ``cifar10``         ``cifar-10-python.tar.gz`` (read directly, not extracted)
    ==================  =========================================================

    Args:
        name: ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.
        data_dir: Root folder; defaults to :func:`default_data_dir`.
        timeout: Seconds to wait for a connection and for each read.

    Returns:
        The folder holding the files, ``<data_dir>/<name>``.

    Raises:
        DataError: If ``name`` cannot be downloaded, the folder cannot be created, the
            network is unreachable (the message says where to place the files by hand), a
            server refuses a file, or a downloaded file has the wrong md5 (it is deleted).
    """
    source = _SOURCES.get(name)
    if source is None:
        raise DataError(
            f"Cannot download data set {name!r}: only {', '.join(DOWNLOADABLE)} can be downloaded."
        )
    root = default_data_dir() if data_dir is None else Path(data_dir).expanduser()
    folder = root / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"Cannot create the data folder '{folder}' for {source.title}: "
            f"{exc.strerror or exc}. Choose another one with --data-dir or $REGTORCH_DATA."
        ) from exc
    for filename, md5 in source.files:
        dest = folder / filename
        if dest.is_file():
            if file_md5(dest) == md5:
                logger.info("%s is present with the right md5; not downloading it", dest)
                continue
            logger.warning("%s has the wrong md5; downloading it again", dest)
        failures: list[_Failure] = []
        for mirror in source.mirrors:
            url = mirror + filename
            logger.info("Downloading %s to %s", url, dest)
            try:
                failure = _fetch_one(url, dest, md5, timeout)
            except OSError as exc:
                raise DataError(
                    f"Cannot write {source.title} file '{dest}': {exc.strerror or exc}."
                ) from exc
            if failure is None:
                break
            logger.warning("Download of %s failed: %s (%s)", url, failure.kind, failure.detail)
            failures.append(failure)
        else:
            _raise_failures(source, filename, folder, failures)
    return folder
