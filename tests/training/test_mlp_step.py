"""The hand-written MLP step: the same gradients and trajectories as autograd."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import regtorch as rt
from regtorch.training import Trainer
from regtorch.training._mlp_step import mlp_grads_, mlp_layers


def _mlp(*sizes: int, flatten: bool = True, bias: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    for k, (i, o) in enumerate(itertools.pairwise(sizes)):
        if k:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(i, o, bias=bias or k == 0))
    return nn.Sequential(*layers).double()


def _data(n: int = 24, shape=(2, 3, 4), classes: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(
        0, classes, (n,), generator=g
    )


@pytest.mark.parametrize(
    "sizes, flatten, bias",
    [
        ((24, 16, 8, 5), True, True),
        ((24, 5), True, True),
        ((24, 7, 5), True, False),
        ((24, 9, 9, 9, 5), True, True),
    ],
)
def test_gradients_equal_autograd(sizes, flatten, bias):
    torch.manual_seed(1)
    model = _mlp(*sizes, flatten=flatten, bias=bias)
    x, y = _data()
    if not flatten:
        x = x.flatten(1)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    found = mlp_layers(model)
    assert found is not None
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)  # overwritten, not accumulated into
    value = mlp_grads_(*found, x, y)
    torch.testing.assert_close(value, loss.detach(), rtol=1e-14, atol=0)
    for p, g in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-15)


def test_dead_relu_units_get_zero_gradient_like_autograd():
    torch.manual_seed(2)
    model = _mlp(24, 6, 5)
    with torch.no_grad():
        model[1].bias[:3] = -100.0  # three hidden units never fire
    x, y = _data()
    F.cross_entropy(model(x), y).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    mlp_grads_(*mlp_layers(model), x, y)
    assert torch.count_nonzero(model[1].weight.grad[:3]) == 0
    for p, g in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-15)


def test_float32_gradients_match_autograd():
    torch.manual_seed(3)
    model = _mlp(24, 16, 5).float()
    x, y = _data()
    x = x.float()
    F.cross_entropy(model(x), y).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    mlp_grads_(*mlp_layers(model), x, y)
    for p, g in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


class _Subclass(nn.Sequential):
    pass


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(24, 8), nn.Tanh(), nn.Linear(8, 5)),
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(24, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 5)),
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(24, 8), nn.ReLU()),
        lambda: nn.Sequential(nn.Flatten(0), nn.Linear(24, 8)),
        lambda: _Subclass(nn.Flatten(), nn.Linear(24, 5)),
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(24, 8), nn.ReLU(), nn.Linear(8, 5)).requires_grad_(
            False
        ),
        lambda: torch.nn.utils.parametrizations.weight_norm(nn.Linear(24, 5)),
        lambda: nn.Sequential(torch.nn.utils.parametrizations.weight_norm(nn.Linear(24, 5))),
        lambda: (lambda shared: nn.Sequential(shared, nn.ReLU(), shared))(nn.Linear(8, 8)),
        lambda: (lambda a, b: (setattr(b, "weight", a.weight), nn.Sequential(a, nn.ReLU(), b))[1])(
            nn.Linear(8, 8), nn.Linear(8, 8)
        ),
    ],
)
def test_other_models_are_not_plain_mlps(make):
    assert mlp_layers(make()) is None


def test_module_hooks_disqualify():
    model = _mlp(24, 8, 5)
    assert mlp_layers(model) is not None
    handle = model[2].register_forward_hook(lambda *a: None)
    assert mlp_layers(model) is None
    handle.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert mlp_layers(model) is None
    finally:
        handle.remove()
    assert mlp_layers(model) is not None


def _train(mode: str | None, penalty, optimizer: str, fast: bool, steps_model=None):
    torch.manual_seed(4)
    model = _mlp(24, 16, 8, 5)
    x, y = _data(n=40)
    params = model.parameters()
    opt = (
        torch.optim.Adam(params, lr=1e-2)
        if optimizer == "adam"
        else torch.optim.SGD(params, lr=0.1, momentum=0.9)
    )
    reg = None
    if mode is not None:
        reg = rt.Regularizer(model, penalty, mode=mode)
        reg.attach(opt)
    trainer = Trainer(
        model, opt, x, y, regularizer=reg, epochs=3, batch_size=8,
        generator=torch.Generator().manual_seed(0),
        forward=None if fast else (lambda inputs: model(inputs)),
    )  # fmt: skip
    trainer.fit()
    assert (trainer._mlp is not None) == fast
    return [p.detach() for p in model.parameters()], trainer.history


@pytest.mark.parametrize(
    "mode, penalty",
    [
        (None, None),
        ("loss", rt.ElasticNet(l1=1e-3, l2=1e-3)),
        ("grad", rt.ElasticNet(l1=1e-3, l2=1e-3)),
        ("prox", rt.ElasticNet(l1=1e-2, l2=1e-3)),
        ("loss", rt.GroupLasso(1e-2)),
        ("prox", rt.GroupLasso(1e-1)),
        ("loss", rt.Lp(1.5, 1e-3)),
    ],
)
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_trainer_fast_path_follows_the_autograd_trajectory(mode, penalty, optimizer):
    fast, fast_rows = _train(mode, penalty, optimizer, fast=True)
    slow, slow_rows = _train(mode, penalty, optimizer, fast=False)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for key in ("train_loss", "penalty", "zero_fraction"):
        assert fast_rows[-1][key] == pytest.approx(slow_rows[-1][key], rel=1e-9, abs=1e-12)


def test_trainer_uses_autograd_when_the_optimizer_holds_other_parameters():
    model = _mlp(24, 8, 5)
    extra = nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([*model.parameters(), extra], lr=0.1)
    x, y = _data()
    trainer = Trainer(model, opt, x, y, epochs=1, batch_size=8, generator=torch.Generator().manual_seed(0))
    trainer.fit()
    assert trainer._mlp is None
    assert extra.grad is None  # autograd's zero_grad path ran


def test_a_hook_added_during_training_is_honoured():
    model = _mlp(24, 8, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    calls = []
    trainer = Trainer(model, opt, x, y, epochs=1, batch_size=8, generator=torch.Generator().manual_seed(0))
    trainer.train_step(x[:8], y[:8])
    assert trainer._mlp is not None
    model[2].register_forward_hook(lambda *a: calls.append(1))
    trainer.train_step(x[:8], y[:8])
    assert calls == [1]


@pytest.mark.parametrize(
    "penalty, params",
    [
        (rt.L1(1e-2), "weights"),
        (rt.L2(1e-2), "weights"),
        (rt.ElasticNet(l1=1e-2, l2=1e-2), "all"),
        ([("0.weight", rt.L1(1e-2)), ("2.weight", rt.ElasticNet(l1=1e-3, l2=5e-3))], None),
    ],
)
def test_loss_mode_folded_penalty_gradient_equals_autograd(penalty, params):
    torch.manual_seed(5)
    model = _mlp(24, 16, 5)
    x, y = _data()
    kwargs = {} if params is None else {"params": params}
    model_nf = nn.Sequential(*list(model.children())[1:])  # 2-d inputs: no Flatten
    reg = rt.Regularizer(model_nf, penalty, mode="loss", **kwargs)
    reg.scale = 0.5
    xf = x.flatten(1)
    (F.cross_entropy(model_nf(xf), y) + reg.penalty()).backward()
    expected = [p.grad.clone() for p in model_nf.parameters()]
    terms = reg.grad_coefficients()
    assert terms is not None and len(terms) == len(reg.parameters())
    mlp_grads_(*mlp_layers(model_nf), xf, y, terms)
    for p, g in zip(model_nf.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-15)


def test_group_and_lp_penalties_have_no_elementwise_terms():
    model = _mlp(24, 16, 5)
    assert rt.Regularizer(model, rt.GroupLasso(1e-2)).grad_coefficients() is None
    assert rt.Regularizer(model, rt.Lp(1.5, 1e-2)).grad_coefficients() is None
    assert rt.Regularizer(model, rt.L1(1e-2) + rt.L2(1e-3)).grad_coefficients() is not None


def _grad_mode_trainer(attach: str):
    torch.manual_seed(6)
    model = _mlp(24, 16, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg = rt.Regularizer(model, rt.L1(1e-2), mode="grad")
    if attach in ("once", "removed"):
        handle = reg.attach(opt)
        if attach == "removed":
            handle.remove()
    elif attach == "twice":
        reg.attach(opt)
        reg.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = _data()
    trainer = Trainer(
        model, opt, x, y, regularizer=reg, epochs=1, batch_size=8, generator=torch.Generator().manual_seed(0)
    )
    return trainer, model, reg, x, y


@pytest.mark.parametrize(
    "attach, folds", [("once", True), ("removed", False), ("twice", False), ("never", False)]
)
def test_grad_mode_folds_only_when_its_one_hook_would_add_the_gradient(attach, folds):
    trainer, model, reg, x, y = _grad_mode_trainer(attach)
    trainer.train_step(x[:8], y[:8])
    assert trainer._can_fold() is folds
    assert reg._grad_added is False  # consumed by the hook, or never set
    # the gradient the optimizer saw: data gradient + L1 subgradient iff a hook is attached
    reference = _mlp(24, 16, 5)
    reference.load_state_dict(model.state_dict())
    w_before = reference[1].weight.detach()
    trainer.train_step(x[8:16], y[8:16])
    F.cross_entropy(reference(x[8:16]), y[8:16]).backward()
    hooks = {"once": 1, "removed": 0, "twice": 1, "never": 0}[attach]  # only this optimizer steps
    expected = reference[1].weight.grad + hooks * 1e-2 * torch.sign(w_before)
    torch.testing.assert_close(model[1].weight.grad, expected, rtol=1e-12, atol=1e-15)


def test_fit_flushes_denormals_while_training_and_restores_the_setting():
    from regtorch.training._loop import flush_denormal_enabled

    seen = []

    from regtorch.training import Callback

    class Record(Callback):
        def on_step_end(self, trainer, loss):
            seen.append(flush_denormal_enabled())

    model = _mlp(24, 8, 5)
    x, y = _data()
    for flush in (True, False):
        seen.clear()
        assert not flush_denormal_enabled()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        trainer = Trainer(
            model, opt, x, y, epochs=1, batch_size=8, generator=torch.Generator().manual_seed(0),
            callbacks=[Record()], flush_denormal=flush,
        )  # fmt: skip
        trainer.fit()
        assert seen and all(s is flush for s in seen)
        assert not flush_denormal_enabled()


@pytest.mark.parametrize("kind", ["hook", "post-accumulate"])
def test_parameter_gradient_hooks_disqualify_and_are_honoured(kind):
    model = _mlp(24, 8, 5)
    w = model[3].weight

    def zero_after_accumulation(p: torch.Tensor) -> None:
        p.grad.zero_()

    handle = (
        w.register_hook(lambda g: g * 0)
        if kind == "hook"
        else w.register_post_accumulate_grad_hook(zero_after_accumulation)
    )
    assert mlp_layers(model) is None
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    trainer = Trainer(model, opt, x, y, epochs=1, batch_size=8, generator=torch.Generator().manual_seed(0))
    trainer.train_step(x[:8], y[:8])
    assert torch.count_nonzero(w.grad) == 0  # the hook ran
    handle.remove()
    assert mlp_layers(model) is not None


def test_freeze_zeros_hooks_run_in_the_trainer():
    model = _mlp(24, 8, 5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        model[1].weight[:4] = 0.0
    frozen = rt.freeze_zeros(model, opt)
    x, y = _data()
    trainer = Trainer(model, opt, x, y, epochs=1, batch_size=8, generator=torch.Generator().manual_seed(0))
    trainer.train_step(x[:8], y[:8])
    assert trainer._mlp is None
    assert torch.count_nonzero(model[1].weight.grad[:4]) == 0
    frozen.remove()


def test_a_parameter_frozen_during_training_is_left_alone():
    model = _mlp(24, 8, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    trainer = Trainer(model, opt, x, y, epochs=1, batch_size=8, generator=torch.Generator().manual_seed(0))
    trainer.train_step(x[:8], y[:8])
    assert trainer._mlp is not None
    model[1].weight.requires_grad_(False)
    before = model[1].weight.detach().clone()
    trainer.train_step(x[8:16], y[8:16])
    assert trainer._mlp is None
    assert torch.equal(model[1].weight, before) and model[1].weight.grad is None
