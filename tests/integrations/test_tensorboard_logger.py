"""The TensorBoard helper writes event files with scalars and histograms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("tensorboard", reason="needs the tensorboard package")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from regtorch import L1, Regularizer
from regtorch.integrations.tensorboard import TensorBoardLogger


def test_writes_scalars_and_histograms(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    reg = Regularizer(model, L1(0.1), mode="prox")
    with torch.no_grad():
        model[0].weight[:2].zero_()
    with TensorBoardLogger(tmp_path / "tb") as tb:
        for step in range(3):
            tb.log_scalars(
                step,
                {
                    "loss": 1.0 / (step + 1),
                    "penalty": reg.penalty(),
                    "sparsity": reg.stats().zero_fraction,
                    "skip": None,
                },
                prefix="train/",
            )
            assert tb.log_weight_histograms(step, model) == 2

    files = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(files) == 1
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) == {"train/loss", "train/penalty", "train/sparsity"}
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    assert events.Scalars("train/penalty")[0].value == pytest.approx(float(reg.penalty()), rel=1e-6)
    assert set(tags["histograms"]) == {"weights/0.weight", "weights/2.weight"}
    histogram = events.Histograms("weights/0.weight")[-1].histogram_value
    assert histogram.num == model[0].weight.numel()


def test_rejects_non_scalars(tmp_path):
    with TensorBoardLogger(tmp_path / "tb") as tb:
        with pytest.raises(ValueError, match="one-element tensor; got a tensor of shape"):
            tb.log_scalars(0, {"w": torch.ones(3)})
        with pytest.raises(TypeError, match=r"'name' given to TensorBoardLogger\.log_scalars"):
            tb.log_scalars(0, {"name": "text"})
