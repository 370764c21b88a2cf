"""Griffe extension for the docs build: read regtorch's ``Example:`` docstring sections as examples.

regtorch's docstrings follow the Google style with a singular ``Example:`` heading. Griffe's
Google parser knows only ``Examples:`` as the section whose ``>>>`` lines are code; any other
heading becomes an admonition whose text is read as Markdown (so ``['0.weight']`` in an output
line looks like a link). This extension renames the heading when docstrings are loaded; the
sources are not changed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section headings to ``Examples:`` in every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the heading of ``obj``'s docstring, if it has one."""
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
