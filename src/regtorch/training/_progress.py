"""What a run prints: plain lines, or lines above a progress bar when attached to a terminal."""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["Reporter"]


class Reporter:
    """Prints a run's lines and, on a terminal, a progress bar (rich, else tqdm, else none).

    Args:
        stream: Where lines go (stdout; stderr when ``--json`` keeps stdout for the summary).
        quiet: Print nothing but warnings and :meth:`result` lines.
        progress: Show a bar; default: when ``stream`` is a terminal and not quiet.
        silent: Print nothing at all, results included (warnings still go to stderr).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        quiet: bool = False,
        progress: bool | None = None,
        silent: bool = False,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.quiet = quiet or silent
        self.silent = silent
        if progress is None:
            isatty = getattr(self.stream, "isatty", None)
            progress = bool(isatty and isatty()) and not self.quiet
        self.progress = progress
        self._bar: Any = None
        self._task: Any = None
        self._kind = ""

    # ----------------------------------------------------------------- lines
    def _write(self, text: str) -> None:
        if self._kind == "rich":
            self._bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        elif self._kind == "tqdm":
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def line(self, text: str) -> None:
        """Print a progress line (not in quiet mode)."""
        if not self.quiet:
            self._write(text)

    def result(self, text: str) -> None:
        """Print a result line (also in quiet mode; not when silent)."""
        if not self.silent:
            self._write(text)

    def warn(self, text: str) -> None:
        """Print a one-line warning on stderr, always."""
        self.close_bar()
        print(f"warning: {text}", file=sys.stderr, flush=True)

    # ----------------------------------------------------------------- bar
    def start_bar(self, description: str, total: int) -> None:
        """Start a bar of ``total`` steps (no-op without a terminal or a bar library)."""
        self.close_bar()
        if not self.progress:
            return
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )
        except ImportError:
            pass
        else:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(description, total=total)
            self._kind = "rich"
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, desc=description, file=self.stream, leave=False)
        self._kind = "tqdm"

    def advance(self, steps: int) -> None:
        """Move the bar ``steps`` forward."""
        if self._kind == "rich":
            self._bar.update(self._task, advance=steps)
        elif self._kind == "tqdm":
            self._bar.update(steps)

    def close_bar(self) -> None:
        """Remove the bar, if any."""
        if self._kind == "rich":
            self._bar.stop()
        elif self._kind == "tqdm":
            self._bar.close()
        self._bar = self._task = None
        self._kind = ""
