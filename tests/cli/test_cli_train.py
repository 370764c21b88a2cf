"""``regtorch train`` end to end on digits: output lines, run folder files, JSON, checkpoint."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest
import torch
from cli_helpers import FAST, assert_png, read_json

from regtorch.training._metrics import metric_columns

TUTORIAL_LINE = re.compile(
    r"^Loss after mini-batch +(\d+): (\d+\.\d{3}) \(of which (\d+\.\d{3}) L1 loss; "
    r"(\d+\.\d{3}) L2 loss\)$",
    re.MULTILINE,
)
SUMMARY_KEYS = {
    "test_accuracy", "train_accuracy", "val_accuracy", "zero_fraction", "penalty", "data_loss",
    "generalization_gap", "zero_neurons", "neurons", "weight_l2", "layers", "epochs", "steps",
    "timing", "status",
}  # fmt: skip


def test_train_writes_every_file(cli, tmp_path):
    out = tmp_path / "run"
    result = cli(
        "train", "--penalty", "elasticnet", "--l1", "1e-3", "--l2", "1e-3", "--hidden", "16,8",
        "--epochs", "2", "--lr", "0.01", "--log-every", "10", "--out", out,
    )  # fmt: skip
    assert result.status == 0, result
    assert result.err == ""
    names = {p.name for p in out.iterdir()}
    assert {"summary.json", "config.json", "metrics.jsonl", "metrics.csv", "checkpoint.pt"} <= names
    for png in ("loss.png", "accuracy.png", "sparsity.png", "weights.png"):
        assert_png(out / png)
    summary = read_json(out / "summary.json")
    assert set(summary) >= SUMMARY_KEYS
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert 0.5 < summary["test_accuracy"] <= 1
    assert summary["penalty"] > 0
    assert [layer["name"] for layer in summary["layers"]] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    config = read_json(out / "config.json")
    assert config["command"] == "train" and config["config"]["penalty"] == "elasticnet"
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == metric_columns()
    assert {"l1", "l2", "grouplasso", "mcp", "scad"} <= set(rows[0])  # a column per registered penalty
    assert [r["kind"] for r in rows].count("epoch") == 2
    steps = [r for r in rows if r["kind"] == "step"]
    assert len(steps) == 2 * (38 // 10)  # 1212 examples / 32 = 38 batches a epoch
    jsonl = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(jsonl) == len(rows)
    # The tutorial's line, with the L1 and L2 parts of the elastic net.
    lines = TUTORIAL_LINE.findall(result.out)
    assert [int(n) for n, *_ in lines] == [10, 20, 30] * 2
    for (_, total, l1, l2), step in zip(lines, steps, strict=True):
        assert float(l1) == pytest.approx(float(step["l1"]), abs=1e-3)
        assert float(l2) == pytest.approx(float(step["l2"]), abs=1e-3)
        assert float(total) >= float(l1) + float(l2)
    assert "Epoch 2/2: train loss" in result.out
    assert re.search(r"fc1\.weight +16x64 +1,024", result.out)  # per-layer table
    assert "test accuracy" in result.out.splitlines()[-1]


def test_checkpoint_loads_with_weights_only(cli, tmp_path):
    out = tmp_path / "run"
    assert cli("train", *FAST, "--penalty", "l1", "--mode", "prox", "--out", out).status == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 38
    assert set(state) >= {"model", "optimizer", "regularizer", "scheduler", "rng", "history"}
    assert isinstance(state["rng"]["batches"], torch.Tensor)
    assert state["regularizer"]["mode"] == "prox"
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


def test_log_line_of_other_penalties(cli, tmp_path):
    result = cli("train", *FAST, "--penalty", "sparse-group", "--log-every", "19", "--out", tmp_path / "a")
    assert result.status == 0, result
    assert re.search(
        r"^Loss after mini-batch +19: \d+\.\d{3} \(of which \d+\.\d{3} L1 loss; \d+\.\d{3} "
        r"GroupLasso loss\)$",
        result.out,
        re.MULTILINE,
    )
    result = cli("train", *FAST, "--log-every", "19", "--out", tmp_path / "b")
    assert re.search(r"^Loss after mini-batch +38: \d+\.\d{3}$", result.out, re.MULTILINE)


def test_json_and_quiet(cli, tmp_path):
    result = cli("train", *FAST, "--penalty", "l2", "--json", "--out", tmp_path / "run")
    assert result.status == 0
    summary = json.loads(result.out)
    assert summary == read_json(tmp_path / "run" / "summary.json")
    assert "Loss after mini-batch" in result.err  # human lines moved to stderr
    quiet = cli("train", *FAST, "--quiet", "--out", tmp_path / "quiet")
    assert quiet.status == 0
    assert quiet.out.count("\n") == 1 and quiet.out.startswith("test accuracy")


def test_warns_when_the_penalty_dominates(cli, tmp_path):
    # The tutorial's strengths: l1 = 0.3, l2 = 0.7 on a sum over all weights.
    result = cli(
        "train", *FAST, "--penalty", "elasticnet", "--l1", "0.3", "--l2", "0.7", "--quiet",
        "--out", tmp_path / "run",
    )  # fmt: skip
    assert result.status == 0
    warnings = result.err.strip().splitlines()
    assert len(warnings) == 1
    assert re.match(
        r"warning: at the start the penalty \(.+\) is \d+x the data loss \(.+\): the "
        r"regularization will dominate; weights will collapse — lower --l1/--l2$",
        warnings[0],
    )
    calm = cli("train", *FAST, "--penalty", "l1", "--quiet", "--out", tmp_path / "calm")
    assert calm.err == ""


def test_options_reach_the_run(cli, tmp_path):
    out = tmp_path / "run"
    result = cli(
        "train", "--hidden", "8", "--epochs", "2", "--no-plots", "--optimizer", "sgd",
        "--lr", "0.05", "--schedule", "cosine", "--seed", "3", "--penalty", "group",
        "--strength", "0.01", "--mode", "prox", "--batch-size", "64", "--val-fraction", "0.2",
        "--quiet", "--out", out,
    )  # fmt: skip
    assert result.status == 0, result
    config = read_json(out / "config.json")["config"]
    assert config["hidden"] == [8] and config["optimizer"] == "sgd" and config["seed"] == 3
    summary = read_json(out / "summary.json")
    assert summary["n_val"] == 269 and summary["steps"] == 2 * 17
    assert summary["penalty_name"] == "GroupLasso(strength=0.01, groups='rows')"
    epochs = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "epoch"]  # fmt: skip
    assert [r["lr"] for r in epochs] == pytest.approx([0.05, 0.025])  # cosine over 2 epochs


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "rmsprop"])
def test_every_optimizer(cli, tmp_path, optimizer):
    result = cli(
        "train", *FAST, "--optimizer", optimizer, "--penalty", "l1", "--mode", "grad",
        "--quiet", "--out", tmp_path,
    )  # fmt: skip
    assert result.status == 0, result


def test_cnn_on_digits(cli, tmp_path):
    result = cli("train", *FAST, "--model", "cnn", "--hidden", "16", "--quiet", "--out", tmp_path)
    assert result.status == 0, result
    names = [layer["name"] for layer in read_json(tmp_path / "summary.json")["layers"]]
    assert names == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]


def test_python_dash_m(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "regtorch", "train", *FAST, "--penalty", "l2", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Loss after mini-batch" in done.stdout
    assert read_json(out / "summary.json")["status"] == "completed"
    help_text = subprocess.run(
        [sys.executable, "-m", "regtorch", "--help"], capture_output=True, text=True, timeout=60
    )
    assert help_text.returncode == 0
    assert "train" in help_text.stdout and "compare" in help_text.stdout


def test_compile_option_compiles_the_training_forward(cli, tmp_path, monkeypatch):
    compiled = []

    def fake_compile(model, **kwargs):  # the real one costs ~10 s here; check the wiring only
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    result = cli("train", *FAST, "--compile", "--quiet", "--out", tmp_path)
    assert result.status == 0, result
    assert len(compiled) == 1 and type(compiled[0]).__name__ == "Sequential"
    assert read_json(tmp_path / "config.json")["config"]["compile"] is True


def test_keep_denormals_is_recorded_and_default_flushes(cli, tmp_path):
    flushed, kept = tmp_path / "flushed", tmp_path / "kept"
    assert cli("train", *FAST, "--no-plots", "--out", flushed).status == 0
    assert cli("train", *FAST, "--no-plots", "--keep-denormals", "--out", kept).status == 0
    assert read_json(flushed / "config.json")["config"]["flush_denormal"] is True
    assert read_json(kept / "config.json")["config"]["flush_denormal"] is False
    # digits never reach denormals in a few epochs: the same run either way
    assert read_json(flushed / "summary.json")["test_accuracy"] == read_json(kept / "summary.json")["test_accuracy"]
