"""The benchmark suite runs end to end (tiny sizes): its tables keep their shape. No timings asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


# --------------------------------------------------------------------------------------------
# The MNIST sparsity recipes: tiny runs, the JSON line, and the exported program measured again
# --------------------------------------------------------------------------------------------

SHARED_MNIST = REPO_ROOT.parent / "shared" / "datasets" / "mnist"
TINY = ["--limit", "300", "--epochs", "1", "--ramp-epochs", "1", "--finetune-epochs", "1", "--teacher-epochs", "1"]
SPARSITY_RUNS = {
    "sparsity_lenet300.py": [*TINY, "--stages", "2", "--stage-epochs", "1", "--distill-alpha", "0.5"],
    "sparsity_lenet5.py": TINY,
    "structured_lenet300.py": [*TINY, "--stage-epochs", "1", "--keep", "100", "20", "10"],
}
DATASETS = [
    pytest.param("digits", id="digits"),
    pytest.param(
        "mnist",
        id="mnist",
        marks=pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="../shared/datasets/mnist is not present"),
    ),
]


def _load_splits(dataset: str):
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from mnist_tools import load_pixels
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    return load_pixels(dataset, str(SHARED_MNIST), 0.0, 0, 300)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("script", sorted(SPARSITY_RUNS))
def test_sparsity_recipe_exports_the_model_it_measured(tmp_path, script: str, dataset: str) -> None:
    exported = tmp_path / "model.pt2"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / script), "--dataset", dataset, "--json", "--quiet"]
    if dataset == "mnist":
        command += ["--data-dir", str(SHARED_MNIST)]
    command += ["--threads", "1", "--seed", "3", "--export", str(exported), *SPARSITY_RUNS[script]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"zero_fraction", "test_error", "weights", "zeros", "timings_s", "settings"} <= set(line)
    assert line["settings"]["seed"] == 3 and line["dataset"] == dataset and line["n_train"] == 300
    assert line["export_max_abs_diff"] < 1e-5

    import torch

    program = torch.export.load(str(exported))
    params = set(program.graph_signature.parameters)
    weights = {n: t for n, t in program.state_dict.items() if n in params and t.ndim >= 2}
    assert sum(t.numel() for t in weights.values()) == line["weights"]
    assert sum(int((t == 0).sum()) for t in weights.values()) == line["zeros"]
    assert line["zero_fraction"] == line["zeros"] / line["weights"]
    if script == "structured_lenet300.py":
        assert line["architecture"] == [100, 20, 10]
        assert line["weights"] == 100 * 20 + 20 * 10 + 10 * 10
    else:
        assert line["weights"] == {"sparsity_lenet300.py": 266_200, "sparsity_lenet5.py": 430_500}[script]
        assert line["zero_fraction"] > 0.5  # the clean-up's per-layer targets hold

    splits = _load_splits(dataset)
    module = program.module()
    with torch.no_grad():
        logits = module(splits.x_test)
        one = module(splits.x_test[:1])  # the batch dimension is dynamic
    assert logits.shape == (len(splits.x_test), 10)
    torch.testing.assert_close(one, logits[:1], rtol=1e-5, atol=1e-5)
    wrong = int((logits.argmax(1) != splits.y_test).sum())
    assert line["test_error"] == wrong / len(splits.y_test)
