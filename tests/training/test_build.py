"""The builders of a run refuse a config that was not resolved, naming the missing value."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regtorch.training import TrainConfig, build_optimizer, build_penalty


def test_build_optimizer_needs_a_resolved_config():
    with pytest.raises(ValueError, match=r"'cfg' argument of build_optimizer must be a resolved .* lr=None"):
        build_optimizer(TrainConfig(), nn.Linear(3, 2))
    optimizer = build_optimizer(TrainConfig(optimizer="sgd").resolved(), nn.Linear(3, 2))
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["lr"] == TrainConfig(optimizer="sgd").resolved().lr


@pytest.mark.parametrize(
    "options, missing",
    [({"penalty": "sparse-group"}, "l1"), ({"penalty": "elasticnet", "alpha": 0.1}, "l1_ratio")],
)
def test_build_penalty_needs_a_resolved_config(options, missing):
    with pytest.raises(ValueError, match=rf"'cfg' argument of build_penalty must be a resolved .* {missing}=None"):
        build_penalty(TrainConfig(**options))
    assert build_penalty(TrainConfig(**options).resolved()) is not None
