"""Each script in examples/ runs to completion as a user would run it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

CASES = [
    ("plain_loop.py", (), "prox"),
    ("linear_vs_sklearn.py", (), "largest coefficient difference"),
    ("lightning_example.py", ("lightning",), "dead hidden neurons"),
    ("hf_example.py", ("transformers", "accelerate"), "regularized tensors"),
    ("structured_sparsity.py", ("transformers", "torch_pruning", "sklearn"), "fewer); saved"),
]


@pytest.mark.parametrize(("script", "needs", "expected"), CASES, ids=[c[0] for c in CASES])
def test_example_runs(script, needs, expected):
    missing = [name for name in needs if importlib.util.find_spec(name) is None]
    if missing and not os.environ.get("CI"):
        pytest.skip(f"needs {', '.join(missing)}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=EXAMPLES.parent,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert expected in result.stdout
