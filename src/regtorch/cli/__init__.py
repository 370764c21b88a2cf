"""The ``regtorch`` command line: ``train``, ``compare``, ``path`` and ``report``.

Every error a user can cause ends as one line on stderr and exit status 2 (1 for a run that
failed mid-way, such as a NaN loss; 130 for Ctrl-C and 143 for SIGTERM, both with the command
that continues the run); set ``REGTORCH_DEBUG=1`` to see tracebacks instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from regtorch.training._errors import RunError, Terminated

__all__ = ["main"]


def _say(prefix: str, message: str) -> None:
    text = " ".join(str(message).split())
    rank = os.environ.get("RANK")
    if os.environ.get("WORLD_SIZE") and rank not in (None, "0"):
        prefix = f"{prefix} [rank {rank}]"  # one of several torchrun processes
    print(f"{prefix}: error: {text}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``regtorch`` command with ``argv`` (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for bad input, 1 for a run that failed mid-way,
        130 when interrupted, 143 when stopped by SIGTERM. A ``torchrun`` rank does not return:
        it exits with that status once its output is flushed (see
        :func:`regtorch.training._distributed.end_rank`).
    """
    status = _run(argv)
    distributed = sys.modules.get("regtorch.training._distributed")
    if distributed is not None and distributed.joined_process_group():
        distributed.end_rank(status)
    return status


def _run(argv: Sequence[str] | None) -> int:
    from regtorch.cli._commands import stop_advice
    from regtorch.cli._parser import build_parser

    debug = bool(os.environ.get("REGTORCH_DEBUG"))
    prefix = "regtorch"
    args = None
    try:
        args = build_parser().parse_args(None if argv is None else list(argv))
        prefix = f"regtorch {args.command}"
        return _command(args)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except RunError as exc:
        if debug:
            raise
        _say(getattr(exc, "prog", prefix), str(exc))
        return exc.status
    except (ValueError, TypeError) as exc:
        if debug:
            raise
        _say(prefix, str(exc))
        return 2
    except KeyboardInterrupt as exc:
        if debug:
            raise
        terminated = isinstance(exc, Terminated)
        _say(prefix, ("stopped by SIGTERM" if terminated else "interrupted") + stop_advice(args))
        return 143 if terminated else 130
    except BrokenPipeError:
        return 1
    except OSError as exc:  # the disk, permissions: the environment, not the program
        if debug:
            raise
        where = f": '{exc.filename}'" if exc.filename else ""
        _say(prefix, f"{exc.strerror or exc}{where}")
        return 2
    except MemoryError:
        if debug:
            raise
        _say(prefix, "out of memory; use a smaller data set (--limit), model (--hidden) or --batch-size")
        return 2
    except Exception as exc:
        if debug:
            raise
        _say(prefix, f"internal error: {type(exc).__name__}: {exc} (set REGTORCH_DEBUG=1 for the traceback)")
        return 1


def _command(args: Any) -> int:
    """Run the parsed command with SIGTERM as an interrupt; release its run folders at the end
    (putting back a run that ``--overwrite`` set aside when the new one has no checkpoint)."""
    from regtorch.cli._commands import COMMANDS, sigterm_raises

    completed = False
    try:
        with sigterm_raises(Terminated):
            status = COMMANDS[args.command](args)
        completed = status == 0
        return status
    finally:
        runlock = sys.modules.get("regtorch.training._runlock")
        if runlock is not None:
            runlock.release_all(completed=completed)
