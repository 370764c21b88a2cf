"""The path's first strength: the dual norm of the data loss's gradient at the initial weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from regtorch.training import TrainConfig
from regtorch.training._path import estimate_max_strength


class _WithUnusedLayer(nn.Module):
    """A classifier holding a weight matrix that its forward never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_estimate_counts_a_parameter_without_gradient_as_zero():
    torch.manual_seed(0)
    model, x, y = _WithUnusedLayer(), torch.randn(16, 4), torch.randint(0, 3, (16,))
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), [model.fc.weight])
    cfg = TrainConfig(penalty="l1", optimizer="sgd").resolved()
    # L1(1) has slope 1 at zero; the unused weight's zero gradient does not change max |g|.
    expected = 0.5 * float(grad.abs().max())
    assert abs(estimate_max_strength(cfg, model, x, y) - expected) <= 1e-6 * expected
    assert model.unused.weight.grad is None
