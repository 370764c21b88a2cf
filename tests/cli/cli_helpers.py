"""Shared helpers of the command-line tests (imported by the test modules)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from regtorch.training import Callback

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: Fast settings for tests: the digits set, a tiny MLP, few epochs, no plots unless asked.
FAST = ["--hidden", "16,8", "--epochs", "1", "--no-plots"]


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > 1000


def without_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "timing"}


class StopAfter(Callback):
    """Raises KeyboardInterrupt after ``steps`` optimizer steps, like Ctrl-C would."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_end(self, trainer, loss):
        if trainer.state.step == self.steps:
            raise KeyboardInterrupt
