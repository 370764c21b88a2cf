"""The benchmark suite runs end to end (tiny sizes): its tables keep their shape. No timings asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_suite_runs_and_writes_json(tmp_path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "run.py"),
            "--sizes",
            "0.05M",
            "--repeats",
            "1",
            "--no-memory",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    tables = json.loads(out.read_text())
    assert set(tables) == {"machine", "grad_prox", "loss", "accuracy", "many_tensors"}
    variants = {row["variant"] for row in tables["grad_prox"]}
    assert {"grad: regtorch fused", "prox: regtorch auto", "training step (fwd+bwd+Adam)"} <= variants
    regtorch_error = next(r for r in tables["accuracy"] if r["variant"] == "L1: regtorch value")
    assert regtorch_error["relative_error"] < 1e-6
    assert "## 2. loss mode" in result.stdout


def test_small_model_benchmark_prints_every_operation_and_variant() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "small_model.py"), "--rounds", "1", "--calls", "3"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert len(rows) == 13
    assert all(row[-1].endswith("x") and float(row[-1][:-1]) > 0 for row in rows)
    assert "automatic choice: foreach" in result.stdout
