"""Files of a run folder: replaced atomically, opened without following links, errors as one line.

Every file regtorch writes into a run folder is either replaced whole (:func:`atomic_write`: a
temporary file in the same folder, fsync, :func:`os.replace`) or opened by :func:`open_regular`,
which refuses symbolic links and anything but a regular file. A link planted in the folder is
therefore never written through, and a FIFO or a device is never read from.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from regtorch.training._errors import UsageError

__all__ = [
    "atomic_write",
    "describe_os_error",
    "open_append",
    "open_regular",
    "read_regular_bytes",
    "remove_stale_temp_files",
]

# atomic_write's temporary files: ".<name>.<8 characters from tempfile>.tmp".
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def describe_os_error(exc: OSError) -> str:
    """Return the reason of ``exc`` in words (``No space left on device``, …)."""
    if exc.errno in _DISK_FULL:
        return "no space left on the device"
    return exc.strerror or str(exc)


def open_regular(path: Path, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
    """Open ``path`` without following a symbolic link; return the descriptor of a regular file.

    Args:
        path: The file.
        flags: :func:`os.open` flags; ``O_NOFOLLOW`` and ``O_NONBLOCK`` are added (so a FIFO
            never blocks the open; it is refused right after).
        mode: Permissions of a file created by ``O_CREAT``.

    Raises:
        FileNotFoundError: If ``path`` does not exist (and ``flags`` lack ``O_CREAT``).
        UsageError: If ``path`` is a symbolic link or not a regular file, or cannot be opened.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(
                f"'{path}' is a symbolic link; regtorch never reads or writes a run's files "
                "through links: replace it by the file itself or remove it"
            ) from None
        raise UsageError(f"cannot open '{path}': {describe_os_error(exc)}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"'{path}' is not a regular file; remove it or choose another folder")
    if flags & os.O_NONBLOCK == 0:
        os.set_blocking(fd, True)
    return fd


def read_regular_bytes(path: Path) -> bytes:
    """Return the content of the regular file ``path`` (see :func:`open_regular`)."""
    with os.fdopen(open_regular(path), "rb") as f:
        return f.read()


def open_append(path: Path, *, text: bool = True) -> IO[Any]:
    """Open ``path`` for appending (created if missing), never through a symbolic link."""
    fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "a", newline="") if text else os.fdopen(fd, "ab")


class _RecordingFile:
    """A file object that remembers the OSError a write raised.

    ``torch.save`` reports a failed write as a ``RuntimeError`` of its own; the recorded error
    says what happened (a full disk, a quota).
    """

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write a file atomically: a temporary file in the same folder, fsync, then rename.

    A reader (or a run killed at any moment) sees the old file or the new one, never half of one;
    a symbolic link at ``path`` is replaced, never written through.

    Args:
        path: The file to write.
        write: Writes the content into the binary file object it is given (what it returns,
            e.g. a byte count, is ignored).

    Raises:
        UsageError: If the file cannot be written (a full disk, a read-only folder); the previous
            file at ``path``, if any, is then unchanged.
    """
    path = Path(path)
    tmp = None
    recorder = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            recorder = _RecordingFile(f)
            write(recorder)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        cause = recorder.error if recorder is not None and recorder.error is not None else _os_error(exc)
        if cause is not None and isinstance(exc, Exception):  # an interrupt stays an interrupt
            raise UsageError(
                f"cannot write '{path}': {describe_os_error(cause)}; the previous '{path.name}', if "
                "any, is unchanged"
            ) from cause
        raise
    _fsync_folder(path.parent)


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError ``exc`` is, or was raised while handling (torch.save wraps failed writes)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _fsync_folder(folder: Path) -> None:
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)


def remove_stale_temp_files(folder: Path) -> list[str]:
    """Remove the temporary files :func:`atomic_write` left in ``folder`` when it was killed.

    Call this only while holding the folder's lock: no other writer can be using them then.

    Returns:
        The names removed.
    """
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if _TEMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return removed
