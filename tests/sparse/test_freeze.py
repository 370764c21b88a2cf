"""Tests for freeze_zeros: masked fine-tuning keeps planted zeros exactly zero."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regtorch.sparse._freeze import FrozenZeros, freeze_zeros


def pruned_model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight[:, :3] = 0
        model[0].weight[5] = 0
        model[3].weight.mul_(torch.rand(4, 16) > 0.5)
    return model


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5) -> None:
    x, y = torch.randn(32, 8), torch.randn(32, 4)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def test_zeros_stay_exactly_zero_with_adam() -> None:
    model = pruned_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    train(model, optimizer, 3)  # Adam moments are now non-zero everywhere
    with torch.no_grad():  # prune again after some training, as in prune-and-retrain
        model[0].weight[:, :3] = 0
        model[3].weight[:, ::2] = 0
    assert optimizer.state[model[0].weight]["exp_avg"][:, :3].abs().sum() > 0
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    frozen = freeze_zeros(model, optimizer)
    assert set(frozen.masks) == {"0.weight", "3.weight"}
    masks = {name: mask.clone() for name, mask in frozen.masks.items()}
    assert masks["0.weight"][:, :3].all() and masks["3.weight"][:, ::2].all()
    state = optimizer.state[model[0].weight]
    assert state["exp_avg"][masks["0.weight"]].abs().sum() == 0  # stale momentum cleared
    train(model, optimizer, 5)
    for name, param in model.named_parameters():
        if name in masks:
            assert torch.all(param[masks[name]] == 0), name
            assert torch.all(param[~masks[name]] != before[name][~masks[name]]), name
            assert torch.all(optimizer.state[param]["exp_avg"][masks[name]] == 0), name
        else:
            assert not torch.equal(param, before[name]), name  # biases, LayerNorm train freely
    assert frozen.frozen == sum(int(mask.sum()) for mask in masks.values())
    assert frozen.frozen_fraction == pytest.approx(frozen.frozen / (8 * 16 + 16 * 4))
    assert "active" in repr(frozen)


def test_gradient_of_frozen_entries_is_zero() -> None:
    model = pruned_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    frozen = freeze_zeros(model, optimizer, "0.weight")
    model(torch.randn(4, 8)).sum().backward()
    grad = model[0].weight.grad
    assert torch.all(grad[frozen.masks["0.weight"]] == 0)
    assert grad[~frozen.masks["0.weight"]].abs().sum() > 0


def test_remove_stops_it() -> None:
    model = pruned_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    frozen = freeze_zeros(model, optimizer)
    mask = frozen.masks["0.weight"].clone()
    train(model, optimizer, 2)
    assert torch.all(model[0].weight[mask] == 0)
    frozen.remove()
    frozen.remove()  # idempotent
    assert not frozen.active and "removed" in repr(frozen)
    train(model, optimizer, 2)
    moved = model[0].weight[mask] != 0
    assert moved.float().mean() > 0.5  # (a dead ReLU unit can leave a few at zero)


def test_context_manager_and_weight_decay() -> None:
    model = pruned_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    with freeze_zeros(model, optimizer, params="all") as frozen:
        assert isinstance(frozen, FrozenZeros)
        mask = frozen.masks["3.weight"]
        train(model, optimizer, 3)
        assert torch.all(model[3].weight[mask] == 0)
    assert not frozen.active


def test_atol_freezes_and_zeroes_small_entries() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].weight[0, 0] = 1e-9
        model[0].weight[1, 1] = -1e-9
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    frozen = freeze_zeros(model, optimizer, atol=1e-8)
    assert int(frozen.masks["0.weight"].sum()) == 2
    assert model[0].weight[0, 0] == 0 and model[0].weight[1, 1] == 0
    assert frozen.frozen_fraction == pytest.approx(2 / 16)


def test_bad_inputs() -> None:
    model = pruned_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"'atol' argument of freeze_zeros must be a finite float"):
        freeze_zeros(model, optimizer, atol=-1)
    with pytest.raises(TypeError, match=r"'model' argument of freeze_zeros must be an nn\.Module"):
        freeze_zeros("model", optimizer)
    with pytest.raises(TypeError, match="'optimizer' argument of freeze_zeros must be a torch"):
        freeze_zeros(model, "adam")
    with pytest.raises(ValueError, match="'params' argument of freeze_zeros must select"):
        freeze_zeros(model, optimizer, "nothing.*")
    other = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match="'optimizer' argument of freeze_zeros must update"):
        freeze_zeros(model, other)


def test_fraction_zeroes_the_smallest_entries_of_each_tensor() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    frozen = freeze_zeros(model, optimizer, fraction=0.7)
    for name in ("0.weight", "2.weight"):
        weight, original = model.get_parameter(name), before[name]
        k = round(0.7 * original.numel())
        order = original.abs().flatten().argsort()
        expected = torch.zeros(original.numel(), dtype=torch.bool)
        expected[order[:k]] = True  # numpy-free reference: the k smallest magnitudes
        assert torch.equal(frozen.masks[name].flatten(), expected)
        assert torch.equal(weight.detach().flatten() == 0, expected)
        torch.testing.assert_close(weight.detach().flatten()[~expected], original.flatten()[~expected])
    assert torch.equal(model[0].bias, before["0.bias"])  # biases are not selected by default
    x = torch.randn(8, 10)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        optimizer.step()
    assert int((model[0].weight == 0).sum()) == round(0.7 * 200)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_fraction_counts_existing_zeros_and_combines_with_atol(fraction: float) -> None:
    model = nn.Sequential(nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1.0, 17.0).reshape(4, 4))
        model[0].weight[0, :3] = 0  # 3 zeros already: below the 4 that 0.25 asks for
        model[0].weight[3, 3] = 1e-9
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    frozen = freeze_zeros(model, optimizer, atol=1e-8, fraction=fraction)
    expected = {0.0: 4, 0.25: 4, 1.0: 16}[fraction]  # the 3 zeros and 1e-9; 0.25 adds nothing more
    assert frozen.frozen == expected
    assert int((model[0].weight == 0).sum()) == expected


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_fraction_outside_the_unit_interval_is_refused(fraction: float) -> None:
    model = pruned_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"'fraction' argument of freeze_zeros must be a finite float in \[0, 1\]"):
        freeze_zeros(model, optimizer, fraction=fraction)


def test_fraction_with_groups_zeroes_the_weakest_columns_and_filters() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    with torch.no_grad():
        model[3].weight[:, 5] = 0  # an all-zero column counts among the weakest
    conv, fc = model[0].weight.detach().clone(), model[3].weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    columns = freeze_zeros(model, optimizer, params="3.weight", fraction=0.25, groups="columns")
    filters = freeze_zeros(model, optimizer, params="0.weight", fraction=0.5, groups="filters")
    weakest_columns = fc.norm(dim=0).argsort()[: round(0.25 * 128)]
    assert 5 in weakest_columns.tolist()
    zero_columns = (model[3].weight == 0).all(0).nonzero().flatten()
    assert sorted(zero_columns.tolist()) == sorted(weakest_columns.tolist())
    weakest_filters = conv.flatten(1).norm(dim=1).argsort()[:4]
    zero_filters = (model[0].weight == 0).flatten(1).all(1).nonzero().flatten()
    assert sorted(zero_filters.tolist()) == sorted(weakest_filters.tolist())
    assert columns.frozen == 32 * 10 and filters.frozen == 4 * 27
    kept = [i for i in range(128) if i not in weakest_columns.tolist()]
    torch.testing.assert_close(model[3].weight.detach()[:, kept], fc[:, kept])
    x = torch.randn(4, 3, 6, 6)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        optimizer.step()
    assert (model[3].weight[:, weakest_columns] == 0).all() and (model[0].weight[weakest_filters] == 0).all()


def test_fraction_with_explicit_groups() -> None:
    model = nn.Sequential(nn.Linear(5, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0, 0.1, 0.1, 3.0], [1.0, 1.0, 0.1, 0.1, 3.0]]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    freeze_zeros(model, optimizer, fraction=1 / 3, groups=[[0, 1], [2, 3], [4]])
    assert model[0].weight.tolist() == [[1.0, 1.0, 0.0, 0.0, 3.0], [1.0, 1.0, 0.0, 0.0, 3.0]]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"groups": "columns"}, ValueError, r"'groups' argument of freeze_zeros goes with 'fraction'"),
        ({"groups": "coupled", "fraction": 0.5}, ValueError, r"'groups' argument of freeze_zeros cannot be"),
        ({"groups": "bogus", "fraction": 0.5}, ValueError, r"'groups' argument of freeze_zeros must be one of"),
        ({"groups": 1.5, "fraction": 0.5}, TypeError, r"'groups' argument of freeze_zeros must be one of"),
        ({"groups": "filters", "fraction": 0.5}, ValueError,
         r"'groups' argument of freeze_zeros does not fit a selected parameter: .*'0\.weight' has shape"),
    ],
)
def test_bad_groups_are_refused_before_anything_changes(options, error, message) -> None:
    model = pruned_model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(error, match=message):
        freeze_zeros(model, optimizer, **options)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
