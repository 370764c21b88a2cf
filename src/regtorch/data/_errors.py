"""The exception raised for every user-facing data problem."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A data set could not be found, read, parsed or downloaded.

    The message is a complete sentence meant for the person running the program: it names
    the file or data set, says what was expected and what was found, and where it helps,
    what to do next. The command-line interface prints it as one line on stderr and exits
    with status 2. It subclasses :class:`ValueError` so callers that catch ``ValueError``
    keep working.
    """
