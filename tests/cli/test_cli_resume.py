"""Interrupted runs: ``--resume`` equals an uninterrupted run exactly; failures keep checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from cli_helpers import FAST, StopAfter, read_json, without_timing

from regtorch.training import Callback, Reporter, RunFailed, TrainConfig, run_train

ARGS = [
    "--hidden", "16,8", "--epochs", "3", "--no-plots", "--penalty", "elasticnet", "--l1",
    "1e-3", "--l2", "1e-3", "--mode", "prox", "--optimizer", "sgd", "--schedule", "cosine",
    "--log-every", "7", "--quiet",
]  # fmt: skip


def metric_rows(run_dir):
    """metrics.jsonl without the wall-clock column."""
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("time_s", None)
    return rows


def strip_time_column(text: str) -> list[list[str]]:
    return [line.split(",")[:-1] for line in text.splitlines()]


def test_resume_after_interrupt_equals_uninterrupted(cli, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert cli("train", *ARGS, "--out", full).status == 0
    config = TrainConfig(
        hidden=(16, 8), epochs=3, penalty="elasticnet", l1=1e-3, l2=1e-3, mode="prox",
        optimizer="sgd", schedule="cosine", log_every=7,
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt):  # in the middle of epoch 2
        run_train(config, cut, reporter=Reporter(quiet=True), callbacks=[StopAfter(50)],
                  plots=False)  # fmt: skip
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (cut / "summary.json").exists()
    assert len(metric_rows(cut)) > len(metric_rows(full)) // 3  # rows of the torn epoch 2

    result = cli("train", "--resume", "--out", cut, "--quiet")
    assert result.status == 0, result
    assert without_timing(read_json(cut / "summary.json")) == without_timing(read_json(full / "summary.json"))
    assert metric_rows(cut) == metric_rows(full)  # the torn epoch's rows were replaced
    assert strip_time_column((cut / "metrics.csv").read_text()) == strip_time_column(
        (full / "metrics.csv").read_text()
    )
    a = torch.load(full / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(cut / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_kill_9_equals_uninterrupted(cli, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = ["--hidden", "16,8", "--epochs", "4", "--batch-size", "2", "--no-plots",
            "--penalty", "l1", "--log-every", "0", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "regtorch", "train", *args, "--out", str(cut)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while not (cut / "checkpoint.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if (cut / "summary.json").exists():
        pytest.skip("the run finished before it could be killed")
    assert cli("train", *args, "--out", full).status == 0
    result = cli("train", "--resume", "--out", cut, "--quiet")
    assert result.status == 0, result
    assert without_timing(read_json(cut / "summary.json")) == without_timing(read_json(full / "summary.json"))
    assert metric_rows(cut) == metric_rows(full)


def test_resume_of_a_finished_run_reports_it(cli, tmp_path):
    assert cli("train", *FAST, "--out", tmp_path).status == 0
    result = cli("train", "--resume", "--out", tmp_path)
    assert result.status == 0
    assert "already complete" in result.out


def test_resume_can_extend_epochs_but_not_change_the_config(cli, tmp_path):
    assert cli("train", *FAST, "--out", tmp_path, "--quiet").status == 0
    changed = cli("train", "--resume", "--out", tmp_path, "--lr", "0.5")
    assert changed.status == 2
    assert "--lr 0.5 differs from the run's configuration" in changed.err
    more = cli("train", "--resume", "--out", tmp_path, "--epochs", "2", "--quiet")
    assert more.status == 0, more
    assert read_json(tmp_path / "summary.json")["epochs"] == 2


class PoisonAt(Callback):
    """Turns the weights into NaN during epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_step_end(self, trainer, loss):
        if trainer.state.epoch + 1 == self.epoch:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.fill_(float("nan"))


def test_nan_keeps_the_last_good_checkpoint(tmp_path):
    config = TrainConfig(hidden=(16, 8), epochs=3, log_every=5)
    with pytest.raises(RunFailed, match=r"the loss became nan in epoch 2 .*the last good "
                       r"checkpoint \(epoch 1\) is kept; lower --lr"):  # fmt: skip
        run_train(config, tmp_path, reporter=Reporter(quiet=True), callbacks=[PoisonAt(2)],
                  plots=False)  # fmt: skip
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert not (tmp_path / "summary.json").exists()
    assert (tmp_path / "metrics.jsonl").read_text().count('"kind": "epoch"') == 1


def test_nan_loss_from_the_command_line(cli, tmp_path):
    result = cli("train", *FAST, "--optimizer", "sgd", "--lr", "1e12", "--out", tmp_path,
                 "--quiet")  # fmt: skip
    assert result.status == 1
    assert result.err.count("\n") == 1
    assert "training diverged" in result.err and "lower --lr (now 1e+12)" in result.err
    assert "Traceback" not in result.err
