"""Fixtures of the command-line tests: run ``regtorch.cli.main`` and capture its output."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from regtorch.cli import main


class Result:
    """What one ``main([...])`` call returned and printed."""

    def __init__(self, status: int, out: str, err: str) -> None:
        self.status, self.out, self.err = status, out, err

    def __repr__(self) -> str:
        return f"Result(status={self.status}, out={self.out[-400:]!r}, err={self.err!r})"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run ``regtorch.cli.main`` with string arguments; return status and captured output."""

    def run(*args: Any) -> Result:
        capsys.readouterr()
        status = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(status, captured.out, captured.err)

    return run
