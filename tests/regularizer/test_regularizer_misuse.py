"""A regularizer refuses what would silently go wrong: double hooks, foreign states, stale parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import regtorch as rt


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_attaching_twice_to_one_optimizer_is_refused() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg = rt.Regularizer(model, rt.L1(0.1), mode="prox")
    handle = reg.attach(opt)
    with pytest.raises(ValueError, match=r"already attached to this regularizer .* applied twice"):
        reg.attach(opt)
    handle.remove()
    reg.attach(opt)  # after remove() it may attach again
    assert reg.optimizers == [opt]


@pytest.mark.parametrize(
    ("saved", "match"),
    [
        (rt.L2(0.5), r"holds a 'L2' penalty for rule 0; this regularizer has L1\(strength=0.1\)"),
        (rt.L1(0.1) + rt.L2(0.1), r"holds a 'Sum' penalty"),
        (rt.GroupLasso(0.1, "columns"), r"holds a 'GroupLasso' penalty"),
    ],
)
def test_a_state_of_another_penalty_is_refused_and_changes_nothing(saved, match) -> None:
    model = _model()
    other = rt.Regularizer(model, saved)
    reg = rt.Regularizer(model, rt.L1(0.1))
    reg.scale = 0.5
    with pytest.raises(ValueError, match=match):
        reg.load_state_dict(other.state_dict())
    assert reg.penalties == [rt.L1(0.1)] and reg.scale == 0.5


def test_a_state_with_other_groups_is_refused() -> None:
    model = _model()
    state = rt.Regularizer(model, rt.GroupLasso(0.3, "columns")).state_dict()
    reg = rt.Regularizer(model, rt.GroupLasso(0.1, "rows"))
    with pytest.raises(ValueError, match=r"has groups='columns' for rule 0; .* Only strengths are loaded"):
        reg.load_state_dict(state)
    assert reg.penalties[0].strength == 0.1


def test_strengths_load_into_the_same_penalty_objects() -> None:
    model = _model()
    reg = rt.Regularizer(model, rt.L1(0.1) + rt.GroupLasso(0.2))
    source = rt.Regularizer(model, rt.L1(0.4) + rt.GroupLasso(0.7))
    source.scale, source.num_steps = 0.25, 12
    penalty = reg.penalties[0]
    reg.load_state_dict(source.state_dict())
    assert reg.penalties[0] is penalty and penalty == rt.L1(0.4) + rt.GroupLasso(0.7)
    assert (reg.scale, reg.num_steps) == (0.25, 12)


@pytest.mark.parametrize(
    ("change", "match"),
    [({"num_steps": -1}, r"'num_steps' entry .* int >= 0; got -1"), ({"scale": float("nan")}, r"'scale' argument")],
)
def test_damaged_states_are_refused(change, match) -> None:
    reg = rt.Regularizer(_model(), rt.L1(0.1))
    with pytest.raises(ValueError, match=match):
        reg.load_state_dict({**reg.state_dict(), **change})


def test_meta_parameters_are_refused_with_what_to_do() -> None:
    with torch.device("meta"):
        model = _model()
    with pytest.raises(ValueError, match=r"Parameter '0.weight' is on the 'meta' device .* after the model is"):
        rt.Regularizer(model, rt.L1(0.1))


def test_parameters_replaced_after_construction_are_refused_at_first_use() -> None:
    model = _model()
    reg = rt.Regularizer(model, rt.L1(0.1))
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    with pytest.raises(ValueError, match=r"no longer holds 2 of the regularized parameters .* Build the Regularizer"):
        reg.penalty()
