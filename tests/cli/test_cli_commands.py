"""``compare``, ``path`` and ``report`` end to end, and training on MNIST, npz and CSV files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import FAST, assert_png, read_json

from regtorch.training._compare import COMPARE_COLUMNS, DEFAULT_CONFIGS
from regtorch.training._path import PATH_COLUMNS

SHARED_MNIST = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "mnist"
SMALL = ["--hidden", "16,8", "--epochs", "2"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_compare_default_configurations(cli, tmp_path):
    out = tmp_path / "cmp"
    result = cli("compare", *SMALL, "--out", out)
    assert result.status == 0, result
    rows = read_csv(out / "compare.csv")
    assert tuple(rows[0]) == COMPARE_COLUMNS
    assert [r["config"] for r in rows] == [
        "none", "l1", "l2", "elasticnet", "elasticnet-prox", "group-prox"
    ]  # fmt: skip
    assert len(DEFAULT_CONFIGS) == 6
    assert [r["mode"] for r in rows] == ["-", "loss", "loss", "loss", "prox", "prox"]
    assert_png(out / "compare.png")
    for row in rows:
        summary = read_json(out / row["run_dir"] / "summary.json")
        assert float(row["test_accuracy"]) == summary["test_accuracy"]
    # The printed table: a header, a rule and one line per configuration.
    table = result.out[result.out.index("config ") :].splitlines()
    assert table[0].split()[:4] == ["config", "mode", "train", "acc"]
    assert [line.split()[0] for line in table[2:8]] == [r["config"] for r in rows]
    # Exact zeros only where a prox step makes them.
    zeros = {r["config"]: float(r["zero_fraction"]) for r in rows}
    assert zeros["none"] == zeros["l1"] == zeros["elasticnet"] == 0.0
    assert zeros["elasticnet-prox"] > 0.01
    config = read_json(out / "config.json")
    assert config["command"] == "compare" and config["base"]["optimizer"] == "sgd"


def test_compare_given_configurations_json_and_report(cli, tmp_path):
    out = tmp_path / "cmp"
    result = cli(
        "compare", "l1:prox,l1=1e-3,label=lasso", "group:grad,strength=0.01", *SMALL,
        "--optimizer", "adam", "--json", "--no-plots", "--out", out,
    )  # fmt: skip
    assert result.status == 0, result
    rows = json.loads(result.out)
    assert [r["config"] for r in rows] == ["lasso", "group-grad"]
    assert rows[0]["penalty_name"] == "L1(strength=0.001)"
    assert not (out / "compare.png").exists()
    report = cli("report", out)
    assert report.status == 0, report
    assert "lasso" in report.out and "group-grad" in report.out
    assert_png(out / "compare.png")
    # Each configuration is a run folder that report can redraw.
    single = cli("report", out / "lasso", "--json")
    assert single.status == 0
    assert json.loads(single.out)["label"] == "lasso"
    for png in ("loss.png", "accuracy.png", "sparsity.png", "weights.png"):
        assert_png(out / "lasso" / png)


def test_compare_resume_keeps_finished_configurations(cli, tmp_path):
    out = tmp_path / "cmp"
    assert cli("compare", "none", "l2", *SMALL, "--no-plots", "--out", out, "--quiet").status == 0
    first = read_json(out / "none" / "summary.json")
    (out / "l2" / "summary.json").unlink()  # as if killed before l2 finished
    again = cli("compare", "--resume", "--out", out, "--quiet", "--no-plots")
    assert again.status == 0, again
    assert read_json(out / "none" / "summary.json") == first
    assert [r["config"] for r in read_csv(out / "compare.csv")] == ["none", "l2"]


def test_path(cli, tmp_path):
    out = tmp_path / "path"
    result = cli("path", "--steps", "3", "--epochs", "1", "--hidden", "16,8", "--out", out)
    assert result.status == 0, result
    rows = read_csv(out / "path.csv")
    assert tuple(rows[0]) == PATH_COLUMNS and len(rows) == 3
    strengths = [float(r["strength"]) for r in rows]
    assert strengths[0] > strengths[1] > strengths[2]
    assert strengths[0] / strengths[2] == pytest.approx(1000)
    zeros = [float(r["zero_fraction"]) for r in rows]
    assert zeros[0] > 0.2  # sparse at the top of the path
    assert_png(out / "path.png")
    config = read_json(out / "config.json")
    assert config["base"]["penalty"] == "l1" and config["base"]["mode"] == "prox"
    report = cli("report", out, "--quiet")
    assert report.status == 0 and "strength" in report.out


def test_path_given_strengths_and_resume(cli, tmp_path):
    out = tmp_path / "path"
    args = ["--penalty", "group", "--steps", "2", "--max", "0.1", "--min", "0.01",
            "--epochs", "1", "--hidden", "16,8", "--no-plots", "--quiet", "--out", out]  # fmt: skip
    assert cli("path", *args).status == 0
    rows = read_csv(out / "path.csv")
    assert [float(r["strength"]) for r in rows] == pytest.approx([0.1, 0.01])
    resumed = cli("path", "--resume", "--out", out, "--quiet", "--no-plots")
    assert resumed.status == 0
    assert read_csv(out / "path.csv") == rows


def test_report_of_a_training_run(cli, tmp_path):
    assert cli("train", *FAST, "--penalty", "l1", "--out", tmp_path, "--quiet").status == 0
    for png in ("loss.png", "accuracy.png"):
        assert not (tmp_path / png).exists()
    result = cli("report", tmp_path)
    assert result.status == 0, result
    assert "fc1.weight" in result.out and "test accuracy" in result.out
    for png in ("loss.png", "accuracy.png", "sparsity.png", "weights.png"):
        assert_png(tmp_path / png)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("report", empty).status == 2


def test_npz_data_set(cli, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    result = cli("train", *FAST, "--dataset", f"npz:{tmp_path / 'd.npz'}", "--epochs", "5",
                 "--lr", "0.01", "--quiet", "--out", tmp_path / "run")  # fmt: skip
    assert result.status == 0, result
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["n_test"] == 24 and summary["test_accuracy"] > 0.7


def test_csv_data_set(cli, tmp_path):
    rng = np.random.default_rng(1)
    lines = ["f1,f2,species"]
    for _ in range(60):
        a, b = rng.normal(size=2)
        lines.append(f"{a:.4f},{b:.4f},{'setosa' if a + b > 0 else 'virginica'}")
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    result = cli("train", *FAST, "--dataset", f"csv:{tmp_path / 'd.csv'}", "--target", "species",
                 "--penalty", "l1", "--quiet", "--out", tmp_path / "run")  # fmt: skip
    assert result.status == 0, result
    assert read_json(tmp_path / "run" / "summary.json")["layers"][0]["shape"] == [16, 2]


def test_synthetic_idx_files(cli, tmp_path):
    from regtorch.data import write_idx

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))  # fmt: skip
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    result = cli("train", *FAST, "--dataset", "mnist", "--data-dir", tmp_path, "--quiet",
                 "--out", tmp_path / "run")  # fmt: skip
    assert result.status == 0, result
    assert read_json(tmp_path / "run" / "summary.json")["n_test"] == 20


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="../shared/datasets/mnist is not present")
def test_mnist_slice(cli, tmp_path):
    result = cli(
        "train", "--dataset", "mnist", "--data-dir", SHARED_MNIST, "--limit", "2000",
        "--epochs", "1", "--penalty", "elasticnet", "--log-every", "20", "--no-plots",
        "--out", tmp_path,
    )  # fmt: skip
    assert result.status == 0, result
    assert "Loss after mini-batch    20:" in result.out
    summary = read_json(tmp_path / "summary.json")
    assert summary["n_train"] == 1800 and summary["n_test"] == 2000
    assert summary["layers"][0]["shape"] == [64, 784]
    assert summary["test_accuracy"] > 0.5


@pytest.mark.slow
def test_compare_with_no_arguments_is_the_readme_job(cli, tmp_path, monkeypatch):
    """The README's main job: defaults only, a new folder under runs/, the table and the plot."""
    monkeypatch.chdir(tmp_path)
    result = cli("compare")
    assert result.status == 0, result
    (out,) = (tmp_path / "runs").iterdir()
    assert out.name.startswith("compare-")
    assert_png(out / "compare.png")
    rows = {r["config"]: r for r in read_csv(out / "compare.csv")}
    assert list(rows) == ["none", "l1", "l2", "elasticnet", "elasticnet-prox", "group-prox"]
    for row in rows.values():
        assert float(row["test_accuracy"]) > 0.9
    zeros = {name: float(r["zero_fraction"]) for name, r in rows.items()}
    assert zeros["none"] == zeros["l1"] == zeros["l2"] == zeros["elasticnet"] == 0.0
    assert zeros["elasticnet-prox"] > 0.3 and int(rows["group-prox"]["zero_neurons"]) > 20
    # Loss and prox modes minimize the same objective: same accuracy within a point.
    gap = float(rows["elasticnet"]["test_accuracy"]) - float(rows["elasticnet-prox"]["test_accuracy"])
    assert abs(gap) < 0.01
    assert f"Wrote {Path('runs') / out.name / 'compare.csv'}" in result.out
