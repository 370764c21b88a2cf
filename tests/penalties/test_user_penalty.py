"""The "Writing a penalty" guide's example works as written: registered, validated, everywhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import regtorch as rt
from regtorch.penalties import _base
from regtorch.training._penalty_spec import parse_spec

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "extending.md"


@pytest.fixture
def huber():
    code = re.search(r"```python\n(.*?)```", GUIDE.read_text(), re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, str(GUIDE), "exec"), namespace)  # the guide's code, unchanged
    yield namespace["Huber"]
    _base._REGISTRY.pop("Huber")  # leave the registry as the other tests expect it


def test_the_guides_penalty_is_registered_and_complete(huber) -> None:
    assert "Huber" in rt.list_penalties() and rt.penalty_class("huber") is huber
    penalty = huber(0.3, delta=0.5)
    w = [torch.randn(4, 3, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda t: penalty.value([t]), w)
    x = w[0].detach().clone()
    penalty.prox([x], 0.2)
    y = x.clone().requires_grad_()
    objective = 0.5 * (y - w[0].detach()).pow(2).sum() + 0.2 * penalty.value([y])
    objective.backward()
    assert y.grad.abs().max() < 1e-12  # the prox output is the minimiser (a smooth objective)
    assert rt.penalty_from_config(penalty.get_config()) == penalty
    assert parse_spec("huber:strength=1e-3,delta=0.1").build() == huber(1e-3, delta=0.1)
    with pytest.raises(ValueError, match=r"'delta' argument of Huber must be a finite float > 0; got 0"):
        huber(0.1, delta=0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    reg = rt.Regularizer(model, huber(1e-2), mode="prox")
    assert reg.stats().penalty == pytest.approx(float(reg.penalty()))
