"""Run folders: default names, the rules for reusing one (--resume, --overwrite), config.json."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import regtorch
from regtorch.training._checkpoint import write_json
from regtorch.training._errors import UsageError

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
    """Read a JSON file written by regtorch.

    Raises:
        UsageError: If it is missing or not valid JSON.
    """
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"'{path}' does not exist") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read '{path}': {exc}") from exc


def _is_run_dir(path: Path) -> bool:
    try:
        data = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "command" in data and "regtorch_version" in data


def check_out_dir(path: Path, *, resume: bool, overwrite: bool, command: str) -> str:
    """Check that ``path`` may receive a run; nothing is created or removed here.

    Returns:
        ``"new"`` (missing or empty), ``"resume"`` (holds a run to continue) or ``"overwrite"``
        (holds a regtorch run to replace: call :func:`empty_run_dir` once the new run is ready
        to start, so bad input never costs the old run).

    Raises:
        UsageError: If ``path`` is a file, or a non-empty folder without ``resume`` or
            ``overwrite``, or a foreign folder with ``overwrite``.
    """
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other; give one of them")
    if not path.exists():
        return "new"
    if not path.is_dir():
        raise UsageError(f"--out '{path}' is a file, not a folder")
    if not any(path.iterdir()):
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
    """Remove everything inside ``path`` (a folder :func:`check_out_dir` approved)."""
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def write_run_config(path: Path, command: str, **content: Any) -> None:
    """Write ``path/config.json``: the command, regtorch's version and ``content``."""
    path.mkdir(parents=True, exist_ok=True)
    write_json(
        path / "config.json",
        {"command": command, "regtorch_version": regtorch.__version__, **content},
    )
