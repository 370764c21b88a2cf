"""Run folders: default names, the rules for reusing one (--resume, --overwrite), config.json."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import regtorch
from regtorch.training._checkpoint import write_json
from regtorch.training._errors import UsageError
from regtorch.training._files import read_regular_bytes
from regtorch.training._runlock import claim_run_dir, run_files, set_aside

__all__ = [
    "check_out_dir",
    "default_out_dir",
    "empty_run_dir",
    "read_json",
    "write_run_config",
]


def default_out_dir(command: str, root: Path | str = "runs") -> Path:
    """Return a new folder name ``runs/<command>-<YYYYmmdd-HHMMSS>`` (``-2``, … if taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{command}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def read_json(path: Path) -> Any:
    """Read a JSON file written by regtorch (never through a symbolic link).

    Raises:
        UsageError: If it is missing, a link, not a regular file or not valid JSON.
    """
    try:
        return json.loads(read_regular_bytes(Path(path)))
    except FileNotFoundError:
        raise UsageError(f"'{path}' does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read '{path}': {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UsageError(
            f"'{path}' is not valid JSON ({exc}); it was damaged or not written by regtorch"
        ) from exc


def _is_run_dir(path: Path) -> bool:
    try:
        data = read_json(path / "config.json")
    except UsageError:
        return False
    return isinstance(data, dict) and "command" in data and "regtorch_version" in data


def check_out_dir(path: Path, *, resume: bool, overwrite: bool, command: str) -> str:
    """Claim ``path`` for this process and check that it may receive the run.

    The claim (:func:`~regtorch.training._runlock.claim_run_dir`: the folder is created if
    missing and locked) lasts until :func:`~regtorch.training._runlock.release_run_dir`, or
    until the process ends; nothing else is created or removed here.

    Returns:
        ``"new"`` (missing or empty), ``"resume"`` (holds a run to continue) or ``"overwrite"``
        (holds a regtorch run to replace: call :func:`empty_run_dir` once the new run is ready
        to start, so bad input never costs the old run).

    Raises:
        UsageError: If ``path`` is a file, or is in use by another process, or is a non-empty
            folder without ``resume`` or ``overwrite``, or a foreign folder with ``overwrite``.
    """
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other; give one of them")
    claim_run_dir(path)
    if not run_files(path):
        return "new"
    if resume:
        if not (path / "config.json").exists():
            raise UsageError(
                f"--resume: '{path}' holds no run to resume (no config.json); choose an empty or new --out"
            )
        previous = read_json(path / "config.json")
        if not isinstance(previous, dict) or previous.get("command") != command:
            other = previous.get("command") if isinstance(previous, dict) else None
            raise UsageError(f"--resume: '{path}' holds a regtorch {other} run, not {command}")
        return "resume"
    if overwrite:
        if not _is_run_dir(path):
            raise UsageError(
                f"--overwrite refuses to empty '{path}': it does not hold a regtorch run (no "
                "regtorch config.json); remove it yourself or choose another --out"
            )
        return "overwrite"
    raise UsageError(
        f"the output folder '{path}' is not empty; pass --resume to continue the run in it, "
        "--overwrite to replace it, or choose another --out"
    )


def empty_run_dir(path: Path) -> None:
    """Make room for a new run in ``path`` (a folder :func:`check_out_dir` approved).

    The old run is moved aside, not deleted: it is deleted once the new run has written its
    first checkpoint, and put back if the new run ends before that.
    """
    set_aside(path)


def write_run_config(path: Path, command: str, **content: Any) -> None:
    """Write ``path/config.json``: the command, regtorch's version and ``content``."""
    path.mkdir(parents=True, exist_ok=True)
    write_json(
        path / "config.json",
        {"command": command, "regtorch_version": regtorch.__version__, **content},
    )
