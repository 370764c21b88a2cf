"""``regtorch train`` sparse-model options: --shrink, --finetune-epochs, --layer-l1, --prox-metric,
and --tensorboard; ``compare``'s shrunk-parameter column."""

from __future__ import annotations

import csv

import pytest
import torch
from cli_helpers import FAST, read_json

import regtorch

# Group lasso in prox mode strong enough to kill about a third of the neurons of a 64-32 MLP.
GROUP = ["--hidden", "64,32", "--lr", "0.01", "--penalty", "group", "--strength", "2.5", "--mode", "prox"]


def test_shrink_reports_before_and_after(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("train", *GROUP, "--epochs", "3", "--no-plots", "--shrink", "--out", out)
    assert result.status == 0, result
    s = read_json(out / "summary.json")["shrink"]
    assert s["parameters_after"] < s["parameters_before"]
    assert s["removed_units"] > 0
    assert s["file_bytes_after"] < s["file_bytes_before"]
    assert s["test_accuracy_after"] == s["test_accuracy_before"]
    assert s["max_logit_difference"] < 1e-4
    assert s["inference_ms_before"] > 0 and s["inference_ms_after"] > 0
    for line in ("parameters", "file size", "test accuracy", "CPU inference"):
        assert line in result.out
    # The files it wrote load back.
    dense = torch.load(out / "model.pt", weights_only=True)
    assert dense["fc1.weight"].shape == (64, 64)
    shrunk = regtorch.load_sparse(out / "model-shrunk.rts")
    assert list(shrunk["fc1.weight"].shape) == s["shapes_after"]["fc1.weight"]
    assert read_json(out / "summary.json")["shrunk_parameters"] == s["parameters_after"]


def test_finetune_keeps_zeros(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("train", *GROUP, "--epochs", "3", "--finetune-epochs", "1", "--no-plots", "--out", out)
    assert result.status == 0, result
    summary = read_json(out / "summary.json")
    assert summary["epochs"] == 4 and summary["status"] == "completed"
    ft = summary["finetune"]
    assert ft["epochs"] == 1
    assert ft["zero_fraction_before"] > 0
    assert ft["zero_fraction_after"] == pytest.approx(ft["zero_fraction_before"])
    assert "Fine-tuning 1 epoch(s) without the penalty" in result.out
    # Resuming the finished run says so; the summary stays.
    again = cli("train", "--resume", "--out", out)
    assert again.status == 0 and "already complete" in again.out


def test_finetune_resume_equals_uninterrupted(cli, tmp_path):
    from regtorch.training._config import TrainConfig
    from regtorch.training._loop import Callback
    from regtorch.training._progress import Reporter
    from regtorch.training._run import run_train

    class StopAt(Callback):
        def on_epoch_end(self, trainer, row):
            if trainer.state.epoch == 3:  # one epoch into the fine-tuning
                trainer.should_stop = True

    cfg = TrainConfig(
        hidden=(64, 32), lr=0.01, penalty="group", strength=2.5, mode="prox", epochs=2, finetune_epochs=2
    )
    quiet = Reporter(quiet=True)
    a = run_train(cfg, tmp_path / "a", reporter=quiet, plots=False)
    stopped = run_train(cfg, tmp_path / "b", reporter=quiet, plots=False, callbacks=[StopAt()])
    assert stopped["status"] == "stopped" and stopped["epochs"] == 3
    result = cli("train", "--resume", "--out", tmp_path / "b", "--no-plots")
    assert result.status == 0, result
    b = read_json(tmp_path / "b" / "summary.json")
    for key in ("test_accuracy", "train_loss", "zero_fraction", "finetune", "epochs"):
        assert b[key] == a[key], key
    # finetune_epochs is part of the configuration: changing it on resume is refused.
    refused = cli("train", "--resume", "--out", tmp_path / "b", "--finetune-epochs", "1")
    assert refused.status == 2 and "--finetune-epochs" in refused.err


def test_layer_l1_rules(cli, tmp_path):
    out = tmp_path / "run"
    result = cli(
        "train", "--hidden", "32,16", "--epochs", "2", "--lr", "0.01", "--mode", "prox",
        "--layer-l1", "fc1.*=0.5,fc3.*=0", "--no-plots", "--out", out,
    )  # fmt: skip
    assert result.status == 0, result
    layers = {row["name"]: row for row in read_json(out / "summary.json")["layers"]}
    assert layers["fc1.weight"]["zero_fraction"] > 0.3
    assert layers["fc2.weight"]["zeros"] == 0  # no rule: not regularized
    assert layers["fc3.weight"]["zeros"] == 0
    assert read_json(out / "config.json")["config"]["layer_l1"] == "fc1.*=0.5,fc3.*=0"


def test_layer_l1_with_a_base_penalty(cli, tmp_path):
    out = tmp_path / "run"
    result = cli(
        "train", *FAST, "--penalty", "l2", "--layer-l1", "fc1.*=1e-3", "--out", out, "--log-every", "10",
    )  # fmt: skip
    assert result.status == 0, result
    assert "L1 loss" in result.out and "L2 loss" in result.out
    summary = read_json(out / "summary.json")
    assert summary["penalty_parts"]["l1"] > 0 and summary["penalty_parts"]["l2"] > 0


def test_prox_metric_adam(cli, tmp_path):
    out = tmp_path / "run"
    args = ["--penalty", "l1", "--l1", "1e-3", "--mode", "prox", "--lr", "0.01", "--out", out]
    result = cli("train", *FAST, *args, "--prox-metric", "adam")
    assert result.status == 0, result
    assert read_json(out / "config.json")["config"]["prox_metric"] == "adam"
    assert read_json(out / "summary.json")["zero_fraction"] > 0


def test_tensorboard_writes_events(cli, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = ["--penalty", "elasticnet", "--log-every", "10", "--tensorboard", "--out", out]
    result = cli("train", *FAST, *args)
    assert result.status == 0, result
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"histograms": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"step/loss", "step/l1", "step/l2", "epoch/train_accuracy", "epoch/zero_fraction"} <= scalars
    assert "weights/fc1.weight" in acc.Tags()["histograms"]


def test_compare_has_shrunk_parameters(cli, tmp_path):
    out = tmp_path / "cmp"
    result = cli("compare", "none", "group:prox,strength=2.5,label=gl", *FAST, "--out", out)
    assert result.status == 0, result
    assert "shrunk params" in result.out
    with (out / "compare.csv").open() as f:
        rows = {r["config"]: r for r in csv.DictReader(f)}
    assert int(rows["none"]["shrunk_parameters"]) == int(rows["none"]["parameters"])
    assert int(rows["gl"]["shrunk_parameters"]) <= int(rows["gl"]["parameters"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer-l1", "fc1.*"], "PATTERN=STRENGTH"),
        (["--layer-l1", "fc1.*=-1"], "PATTERN=STRENGTH"),
        (["--layer-l1", "fc1.*=abc"], "PATTERN=STRENGTH"),
        (["--prox-metric", "manhattan"], "invalid choice"),
        (["--finetune-epochs", "-1"], "must be >= 0"),
        (["--penalty", "l1", "--mode", "loss", "--prox-metric", "adam"], "prox_metric"),
    ],
)
def test_bad_values(cli, tmp_path, args, message):
    result = cli("train", *FAST, *args, "--out", tmp_path / "run")
    assert result.status == 2, result
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
