"""The README's example runs as written, and the README stays short and about the product."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_example_runs() -> None:
    text = README.read_text()
    example = text.split("## Example", 1)[1]
    code = re.search(r"```python\n(.*?)```", example, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["reg"].mode == "prox"
    assert sum(p.numel() for p in namespace["small"].parameters()) <= sum(
        p.numel() for p in namespace["model"].parameters()
    )


def test_it_is_short_and_links_pages_that_exist() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (README.parent / link).exists(), link
    assert not re.search(r"\bissues? \d|\bsession\b", text)
    assert "```bash\nmake demo\nmake test\n```" in text
