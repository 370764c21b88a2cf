"""The two ways a run ends badly: bad input (exit status 2) or a failure mid-way (exit status 1)."""

from __future__ import annotations

__all__ = ["RunError", "RunFailed", "Terminated", "UsageError"]


class RunError(Exception):
    """Base of the errors the command line prints as one line on stderr.

    Attributes:
        status: The process exit status the command line uses for this error.
    """

    status: int = 2


class UsageError(RunError):
    """Bad input: an unknown name, a bad value, an occupied output folder (exit status 2)."""

    status = 2


class RunFailed(RunError):
    """A run that started and failed mid-way, e.g. a NaN loss (exit status 1).

    What was written before the failure (the last good checkpoint, metrics) is kept.
    """

    status = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it ends like an interrupt (Ctrl-C): the
    last checkpoint kept, the run folder released, one line on stderr (exit status 143)."""
