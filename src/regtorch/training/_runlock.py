"""One writer per run folder: an exclusive ``flock`` on ``RUN_DIR/.regtorch.lock``.

A process claims a folder before it writes anything into it and keeps the claim until its
command ends. The lock is an advisory ``fcntl.flock`` held on an open file: the kernel drops it
when the process dies, however it dies, so a lock file left behind by a killed run is stale and
the next run simply takes it over. While the lock is held, the process also owns every
temporary file in the folder: those left by a writer that was killed are removed.

``--overwrite`` moves the old run aside into ``RUN_DIR/.regtorch-replaced`` (see
:func:`set_aside`); the old run is deleted once the new one has written its first checkpoint
(:func:`checkpoint_saved`) and put back if the new one ends before that.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from regtorch.training._errors import UsageError
from regtorch.training._files import describe_os_error, remove_stale_temp_files

__all__ = [
    "ASIDE_NAME",
    "LOCK_NAME",
    "checkpoint_saved",
    "claim_run_dir",
    "release_all",
    "release_run_dir",
    "run_files",
    "set_aside",
]

LOCK_NAME = ".regtorch.lock"
ASIDE_NAME = ".regtorch-replaced"


@dataclass
class _Claim:
    folder: Path
    fd: int
    created: bool
    count: int = 1
    aside: Path | None = None


_claims: dict[str, _Claim] = {}


def run_files(folder: Path) -> list[Path]:
    """Return what ``folder`` holds, without the lock file and an old run set aside."""
    return [p for p in folder.iterdir() if p.name not in (LOCK_NAME, ASIDE_NAME)]


def _create_folder(path: Path) -> bool:
    """Create ``path`` (and its parents) if missing; return whether it was created."""
    if os.path.islink(path) and not path.exists():
        raise UsageError(
            f"the output folder '{path}' is a symbolic link to '{os.readlink(path)}', which does "
            "not exist; create that folder or choose another --out"
        )
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"--out '{path}' is a file, not a folder; choose another --out")
        return False
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        return False  # created by someone else in between: the lock decides
    except OSError as exc:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        reason = f"'{blocker}' is a file" if blocker is not None else describe_os_error(exc)
        raise UsageError(f"cannot create the output folder '{path}': {reason}; choose another --out") from exc
    return True


def _holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text(errors="replace").split()
    except OSError:
        return "another process"
    if len(text) >= 3:
        return f"process {text[0]} on {text[1]}, since {text[2].replace('T', ' ')}"
    return "another process"


def _lock(path: Path) -> int:
    lock_path = path / LOCK_NAME
    for _ in range(10):
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UsageError(f"'{lock_path}' is a symbolic link; remove it") from None
            raise UsageError(
                f"cannot write in the output folder '{path}' ({describe_os_error(exc)}); make it "
                "writable or choose another --out"
            ) from exc
        try:
            if _locked(fd, lock_path, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise UsageError(f"could not lock the run folder '{path}'; try again")  # pragma: no cover


def _locked(fd: int, lock_path: Path, path: Path) -> bool:
    """Take the lock on ``fd`` and sign it; False if the file was replaced in between."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError(
            f"the run folder '{path}' is in use by {_holder(lock_path)}; wait for that run to "
            "end or choose another --out (a lock left by a process that died is released "
            "by the system and taken over)"
        ) from None
    # The previous holder may have removed the file between our open and our flock.
    try:
        if not os.path.samestat(os.fstat(fd), os.lstat(lock_path)):
            return False
    except FileNotFoundError:
        return False
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()} {stamp}\n".encode())
    except OSError as exc:
        raise UsageError(f"cannot write '{lock_path}': {describe_os_error(exc)}") from exc
    return True


def claim_run_dir(path: Path) -> None:
    """Make this process the only writer of ``path`` (created if missing) until released.

    Claims are counted: a process may claim a folder it already holds (release it as often).

    Raises:
        UsageError: If another process holds the folder, or it cannot be created or written.
    """
    path = Path(path)
    created = _create_folder(path)
    key = os.path.realpath(path)
    claim = _claims.get(key)
    if claim is not None and _still_held(claim):
        claim.count += 1
        return
    if claim is not None:  # the folder was removed and made again since: the old lock is void
        del _claims[key]
        os.close(claim.fd)
    try:
        fd = _lock(path)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    _claims[key] = _Claim(path, fd, created)
    remove_stale_temp_files(path)
    _finish_interrupted_replacement(path)


def _still_held(claim: _Claim) -> bool:
    try:
        return os.path.samestat(os.fstat(claim.fd), os.lstat(claim.folder / LOCK_NAME))
    except FileNotFoundError:
        return False


def _has_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` or one of its subfolders (a comparison's runs) holds a checkpoint."""
    if (folder / "checkpoint.pt").is_file():
        return True
    return any(
        (p / "checkpoint.pt").is_file() for p in run_files(folder) if p.is_dir() and not p.is_symlink()
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _restore_aside(folder: Path, aside: Path) -> None:
    for child in run_files(folder):
        _remove(child)
    for child in aside.iterdir():
        os.replace(child, folder / child.name)
    aside.rmdir()
    print(
        f"warning: the new run in '{folder}' ended before its first checkpoint; the previous run "
        "is restored",
        file=sys.stderr,
        flush=True,
    )


def _finish_interrupted_replacement(folder: Path) -> None:
    """Settle an ``--overwrite`` whose process was killed: keep whichever run is safe."""
    aside = folder / ASIDE_NAME
    if not aside.is_dir() or aside.is_symlink():
        return
    if _has_checkpoint(folder):
        shutil.rmtree(aside)
    else:
        _restore_aside(folder, aside)


def set_aside(path: Path) -> None:
    """Move the run in ``path`` (a claimed folder) aside, to be replaced by a new one.

    The old run stays in ``path/.regtorch-replaced`` until the new run's first checkpoint; if
    the claim is released before that, it is put back.
    """
    claim = _claims[os.path.realpath(path)]
    aside = claim.folder / ASIDE_NAME
    aside.mkdir()
    for child in run_files(claim.folder):
        os.replace(child, aside / child.name)
    claim.aside = aside


def checkpoint_saved(path: Path) -> None:
    """Note that a checkpoint was written at ``path``: a run it replaces may now go."""
    where = os.path.realpath(path)
    for key, claim in _claims.items():
        if claim.aside is not None and where.startswith(key + os.sep):
            shutil.rmtree(claim.aside, ignore_errors=True)
            claim.aside = None


def release_run_dir(path: Path, *, completed: bool = False) -> None:
    """Release one claim of ``path``; the last one unlocks it.

    An old run set aside comes back if the new run neither completed nor saved a checkpoint.
    A folder the claim created and nothing was written into is removed again.
    """
    key = os.path.realpath(path)
    claim = _claims.get(key)
    if claim is None:
        return
    claim.count -= 1
    if claim.count > 0:
        return
    del _claims[key]
    try:
        if claim.aside is not None:
            if completed:
                shutil.rmtree(claim.aside, ignore_errors=True)
            else:
                _restore_aside(claim.folder, claim.aside)
        with contextlib.suppress(OSError):
            os.unlink(claim.folder / LOCK_NAME)
        if claim.created:
            with contextlib.suppress(OSError):
                claim.folder.rmdir()  # only if empty
    finally:
        os.close(claim.fd)


def release_all(*, completed: bool = False) -> None:
    """Release every claim this process holds (the end of a command)."""
    for claim in list(_claims.values()):
        claim.count = 1
        release_run_dir(claim.folder, completed=completed)
