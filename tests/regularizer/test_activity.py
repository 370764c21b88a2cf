"""ActivityRegularizer: penalties on module outputs through forward hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import regtorch as rt
from regtorch.regularizer._activity import ActivityRegularizer, ActivityStats

DT = torch.float64


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)


def _batch(n: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=DT), torch.randint(0, 3, (n,), generator=g)


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "penalty",
    [rt.L1(0.03), rt.L2(0.2), rt.ElasticNet(l1=0.01, l2=0.05), rt.Lp(3, 0.1), rt.GroupLasso(0.1, "columns")],
    ids=["L1", "L2", "ElasticNet", "Lp3", "GroupLasso-columns"],
)
def test_value_and_gradient_equal_a_hand_written_loss(penalty) -> None:
    x, y = _batch()
    model, twin = _model(), _model()
    act = ActivityRegularizer([model[1], model[3]], penalty)
    loss = nn.functional.cross_entropy(model(x), y) + act.penalty()
    loss.backward()

    def hand(h: torch.Tensor) -> torch.Tensor:
        if isinstance(penalty, rt.L1):
            return penalty.strength * h.abs().sum()
        if isinstance(penalty, rt.L2):
            return penalty.strength * (h**2).sum()
        if isinstance(penalty, rt.ElasticNet):
            return penalty.l1 * h.abs().sum() + penalty.l2 * (h**2).sum()
        if isinstance(penalty, rt.Lp):
            return penalty.strength * (h.abs() ** 3).sum()
        return penalty.strength * h.norm(dim=0).sum()  # one group per feature (column)

    h1 = twin[1](twin[0](x))
    h2 = twin[3](twin[2](h1))
    expected = nn.functional.cross_entropy(twin[4](h2), y) + (hand(h1) + hand(h2)) / len(x)
    expected.backward()
    assert torch.allclose(loss, expected, rtol=1e-6)
    for a, b in zip(_grads(model), _grads(twin), strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)


def test_penalty_is_divided_by_the_batch_size() -> None:
    model = _model()
    act = ActivityRegularizer(model[0], rt.L1(1.0))
    x, _ = _batch(8)
    model(x)
    p8 = act.penalty()
    model(torch.cat([x, x]))
    assert torch.allclose(act.penalty(), p8)  # twice the batch, twice R, same mean
    assert torch.allclose(p8, model[0](x).abs().sum() / 8)


def test_batch_dim_selects_the_divisor() -> None:
    layer = nn.Linear(3, 2).to(DT)
    act = ActivityRegularizer(layer, rt.L1(1.0), batch_dim=1)
    x = torch.randn(5, 4, 3, dtype=DT)  # (T, B, F)
    out = layer(x)
    assert torch.allclose(act.penalty(), out.abs().sum() / 4)


def test_no_accumulation_across_forwards_and_modules_add_up() -> None:
    model = _model()
    act = ActivityRegularizer({"relu": model[1], "tanh": model[3]}, rt.L1(0.5))
    x1, _ = _batch(seed=1)
    x2, _ = _batch(seed=2)
    model(x1)
    model(x2)
    h1 = model[1](model[0](x2))
    h2 = model[3](model[2](h1))
    expected = 0.5 * (h1.abs().sum() + h2.abs().sum()) / len(x2)
    assert torch.allclose(act.penalty(), expected)
    assert torch.allclose(act.penalty(), expected)  # reading it does not change it
    stats = act.stats()
    assert [m.name for m in stats.modules] == ["relu", "tanh"]
    assert stats.penalty == pytest.approx(float(expected.detach()))
    assert sum(m.penalty for m in stats.modules) == pytest.approx(float(expected.detach()))


def test_nothing_collected_without_grad() -> None:
    model = _model()
    act = ActivityRegularizer(model[1], rt.L1(0.5))
    x, _ = _batch()
    model(x)
    assert act.penalty().requires_grad
    with torch.no_grad():
        model(x)
    assert act.penalty().item() == 0.0
    assert not act.penalty().requires_grad
    assert act.stats().modules[0].penalty is None
    assert act.stats().modules[0].zero_fraction is not None  # sparsity is still measured
    for p in model.parameters():
        p.requires_grad_(False)
    model(x)  # grad mode on, but nothing upstream requires grad
    assert act.penalty().item() == 0.0


def test_activation_sparsity_stats() -> None:
    model = _model()
    act = ActivityRegularizer([model[1], model[3]], rt.L1(0.1))
    assert act.stats().zero_fraction is None
    assert act.stats().modules[0].shape is None
    x, _ = _batch(20)
    with torch.no_grad():
        h1 = model[1](model[0](x))
        h2 = model[3](model[2](h1))
    model(x)
    stats = act.stats()
    assert isinstance(stats, ActivityStats)
    z1 = float((h1 == 0).double().mean())
    z2 = float((h2 == 0).double().mean())
    assert stats.modules[0].zero_fraction == pytest.approx(z1)
    assert stats.modules[1].zero_fraction == pytest.approx(z2)
    assert stats.zero_fraction == pytest.approx((z1 + z2) / 2)
    assert stats.modules[0].shape == (20, 7)
    assert stats.modules[0].name == "0:ReLU"
    assert stats.to_dict()["modules"][0]["name"] == "0:ReLU"


def test_l1_activity_penalty_makes_activations_sparse() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    x = torch.randn(256, 10)
    y = x[:, :1] - x[:, 1:2]
    act = ActivityRegularizer(model[1], rt.L1(0.05))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(x)
    before = act.stats().zero_fraction
    for _ in range(300):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean() + act.penalty()
        loss.backward()
        opt.step()
    assert act.stats().zero_fraction > before + 0.2


def test_combined_with_a_parameter_regularizer_in_one_loop() -> None:
    x, y = _batch()
    model, twin = _model(), _model()
    act = ActivityRegularizer(model[1], rt.L1(0.02))
    reg = rt.Regularizer(model, rt.L2(0.01))
    loss = nn.functional.cross_entropy(model(x), y) + act.penalty() + reg.penalty()
    loss.backward()
    h = twin[1](twin[0](x))
    weights = [twin[0].weight, twin[2].weight, twin[4].weight]
    expected = (
        nn.functional.cross_entropy(twin[4](twin[3](twin[2](h))), y)
        + 0.02 * h.abs().sum() / len(x)
        + 0.01 * sum((w**2).sum() for w in weights)
    )
    expected.backward()
    assert torch.allclose(loss, expected)
    for a, b in zip(_grads(model), _grads(twin), strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)


def test_remove_and_context_manager() -> None:
    model = _model()
    x, _ = _batch()
    with ActivityRegularizer(model[1], rt.L1(0.5)) as act:
        model(x)
        assert act.penalty().item() > 0
        assert act.active
    assert not act.active
    assert act.penalty().item() == 0.0
    model(x)
    assert act.penalty().item() == 0.0
    assert not model[1]._forward_hooks
    act.remove()  # idempotent
    assert "removed" in repr(act)


def test_tuple_outputs_are_refused_with_a_clear_error() -> None:
    lstm = nn.LSTM(3, 4, batch_first=True)
    act = ActivityRegularizer(lstm, rt.L1(0.1))
    with pytest.raises(TypeError, match=r"module '0:LSTM' \(LSTM\) returned tuple"):
        lstm(torch.randn(2, 5, 3))
    act.remove()


def test_outputs_without_a_batch_dimension_are_refused() -> None:
    class Total(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum()

    module = Total()
    ActivityRegularizer(module, rt.L1(0.1))
    with pytest.raises(ValueError, match=r"output.shape\[0\].*shape \(\)"):
        module(torch.randn(3, requires_grad=True))


@pytest.mark.parametrize(
    ("modules", "penalty", "kwargs", "error", "match"),
    [
        ([], rt.L1(0.1), {}, ValueError, "at least one module"),
        ("relu", rt.L1(0.1), {}, TypeError, "must be an nn.Module, a list of modules"),
        ([nn.ReLU(), 3], rt.L1(0.1), {}, TypeError, "entry '1:int' is of type int"),
        (nn.ReLU(), 0.1, {}, TypeError, "'penalty' argument of ActivityRegularizer must be a Penalty"),
        (nn.ReLU(), rt.L1(0.1), {"batch_dim": -1}, ValueError, "'batch_dim' argument .* int >= 0; got -1"),
    ],
)
def test_bad_input(modules, penalty, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        ActivityRegularizer(modules, penalty, **kwargs)


def test_same_module_twice_is_refused() -> None:
    relu = nn.ReLU()
    with pytest.raises(ValueError, match="same module twice"):
        ActivityRegularizer([relu, relu], rt.L1(0.1))
