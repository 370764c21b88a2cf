"""The Regularizer in its three modes, with every optimizer, schedules, state and bad input."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import regtorch as rt

DT = torch.float64


def _model(seed: int = 0, dtype=DT) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 3)).to(dtype)


def _batch(seed: int = 1, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 6, generator=g, dtype=dtype), torch.randn(32, 3, generator=g, dtype=dtype)


def _data_loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


def _optimizer_cases():
    cases = []
    specs = {
        "SGD": dict(lr=0.05),
        "SGD-momentum": dict(lr=0.05, momentum=0.9),
        "SGD-nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
        "Adam": dict(lr=0.01),
        "AdamW": dict(lr=0.01, weight_decay=0.01),
        "RMSprop": dict(lr=0.01),
        "Adagrad": dict(lr=0.05),
        "Adamax": dict(lr=0.01),
        "NAdam": dict(lr=0.01),
        "RAdam": dict(lr=0.01),
    }
    fused_ok = {"SGD", "SGD-momentum", "SGD-nesterov", "Adam", "AdamW", "Adagrad"}
    for name, kwargs in specs.items():
        cls = getattr(torch.optim, name.split("-")[0])
        for impl in ("for-loop", "foreach", "fused"):
            if impl == "fused" and name not in fused_ok:
                continue
            extra = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[
                impl
            ]
            cases.append(pytest.param(cls, {**kwargs, **extra}, id=f"{name}-{impl}"))
    return cases


@pytest.mark.parametrize(("opt_cls", "opt_kwargs"), _optimizer_cases())
def test_grad_mode_equals_loss_mode_for_every_optimizer(opt_cls, opt_kwargs) -> None:
    penalty = rt.ElasticNet(l1=0.01, l2=0.02) + rt.GroupLasso(0.005)
    x, y = _batch()
    model_loss, model_grad = _model(), _model()
    opt_loss = opt_cls(model_loss.parameters(), **opt_kwargs)
    opt_grad = opt_cls(model_grad.parameters(), **opt_kwargs)
    reg_loss = rt.Regularizer(model_loss, penalty, mode="loss")
    reg_grad = rt.Regularizer(model_grad, penalty, mode="grad")
    reg_grad.attach(opt_grad)
    for _ in range(5):
        opt_loss.zero_grad()
        (_data_loss(model_loss, x, y) + reg_loss.penalty()).backward()
        opt_loss.step()
        opt_grad.zero_grad()
        _data_loss(model_grad, x, y).backward()
        opt_grad.step()
    for a, b in zip(model_loss.parameters(), model_grad.parameters(), strict=False):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam, torch.optim.RMSprop])
def test_from_weight_decay_equals_pytorch_weight_decay(opt_cls) -> None:
    wd = 0.1
    x, y = _batch()
    ours, theirs = _model(), _model()
    opt_ours = opt_cls(ours.parameters(), lr=0.01)
    opt_theirs = opt_cls(theirs.parameters(), lr=0.01, weight_decay=wd)
    rt.regularize(ours, opt_ours, rt.L2.from_weight_decay(wd), mode="grad", params="all")
    for _ in range(6):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            _data_loss(model, x, y).backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=False):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_prox_mode_with_sgd_is_ista() -> None:
    x, y = _batch()
    model = _model()
    reference = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rt.regularize(model, opt, rt.L1(0.05), mode="prox")
    for _ in range(4):
        opt.zero_grad()
        _data_loss(model, x, y).backward()
        opt.step()
        # by hand: gradient step on the data loss, then soft-threshold the weights by lr·λ
        reference.zero_grad()
        _data_loss(reference, x, y).backward()
        with torch.no_grad():
            for name, p in reference.named_parameters():
                p.sub_(0.1 * p.grad)
                if p.ndim >= 2 and not name.startswith("2."):
                    p.copy_(torch.sign(p) * (p.abs() - 0.1 * 0.05).clamp_min(0))
    for a, b in zip(model.parameters(), reference.parameters(), strict=False):
        assert torch.allclose(a, b, rtol=0, atol=1e-14)


def test_prox_step_follows_lr_scheduler_and_step_factor() -> None:
    w = nn.Parameter(torch.tensor([[1.0, -1.0, 0.5]], dtype=DT))
    module = nn.Module()
    module.w = w
    opt = torch.optim.SGD([w], lr=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.2)
    rt.regularize(module, opt, rt.L1(0.2), mode="prox", step_factor=2.0)
    for threshold in (0.5 * 2 * 0.2, 0.1 * 2 * 0.2):
        before = w.detach().clone()
        w.grad = torch.zeros_like(w)  # a step with a zero data gradient: only the prox acts
        opt.step()
        sched.step()
        expected = torch.sign(before) * (before.abs() - threshold).clamp_min(0)
        assert torch.allclose(w, expected)


def test_prox_only_touches_parameters_the_step_updated() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rt.regularize(model, opt, rt.L1(10.0), mode="prox")
    first = model[0].weight.detach().clone()
    model[3].weight.grad = torch.zeros_like(model[3].weight)
    opt.step()
    assert torch.equal(model[0].weight, first)  # no grad: not updated, not shrunk
    assert torch.count_nonzero(model[3].weight) == 0


@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD])
def test_prox_mode_gives_exact_zeros_that_stay(opt_cls) -> None:
    x, y = _batch()
    model = _model()
    opt = opt_cls(model.parameters(), lr=0.01)
    reg = rt.regularize(model, opt, rt.L1(0.5), mode="prox")
    for _ in range(60):
        opt.zero_grad()
        _data_loss(model, x, y).backward()
        opt.step()
    zeros = [p == 0 for p in reg.parameters()]
    assert sum(int(z.sum()) for z in zeros) > 0
    assert reg.stats().zeros == sum(int(z.sum()) for z in zeros)


def test_loss_mode_penalty_is_differentiable_and_others_are_detached() -> None:
    model = _model()
    assert rt.Regularizer(model, rt.L1(0.1)).penalty().requires_grad
    assert not rt.Regularizer(model, rt.L1(0.1), mode="grad").penalty().requires_grad
    loss_value = rt.Regularizer(model, rt.L1(0.1)).penalty().item()
    prox_value = rt.Regularizer(model, rt.L1(0.1), mode="prox").penalty().item()
    assert loss_value == pytest.approx(prox_value)


def test_schedule_scale_and_state_dict_round_trip() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    reg = rt.Regularizer(model, rt.L1(0.1), mode="grad", schedule=lambda step: min(1.0, step / 4))
    reg.attach(opt)
    assert reg.factor() == 0.0
    x, y = _batch()
    for _ in range(2):
        opt.zero_grad()
        _data_loss(model, x, y).backward()
        opt.step()
    assert reg.num_steps == 2 and reg.factor() == pytest.approx(0.5)
    reg.scale = 3.0
    reg.penalties[0].strength = 0.25
    state = reg.state_dict()
    other = rt.Regularizer(_model(), rt.L1(0.1), mode="grad", schedule=lambda step: min(1.0, step / 4))
    other.load_state_dict(state)
    assert other.penalties[0].strength == 0.25 and other.scale == 3.0 and other.num_steps == 2
    assert other.factor() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="mode='grad' and 1 rule"):
        rt.Regularizer(model, rt.L1(0.1), mode="prox").load_state_dict(state)


def test_per_layer_rules_and_conflicts() -> None:
    model = _model()
    reg = rt.Regularizer(model, [("0.weight", rt.L1(0.1)), ("3.*", rt.L2(0.2))])
    assert [n for n, _ in reg.named_parameters()] == ["0.weight", "3.weight", "3.bias"]
    expected = (
        0.1 * model[0].weight.abs().sum()
        + 0.2 * (model[3].weight ** 2).sum()
        + 0.2 * (model[3].bias ** 2).sum()
    )
    assert torch.allclose(reg.penalty(), expected)
    with pytest.raises(
        ValueError,
        match=r"Parameter '0.weight' is claimed by two rules .* rule 0 \('\*.weight'\) and rule 1 \(Linear\)",
    ):
        rt.Regularizer(model, [("*.weight", rt.L1(0.1)), (nn.Linear, rt.L2(0.1))])
    with pytest.raises(ValueError, match="'params' argument of Regularizer must be left out"):
        rt.Regularizer(model, [("*.weight", rt.L1(0.1))], params="all")


def test_group_penalty_on_unsuitable_parameter_is_refused() -> None:
    with pytest.raises(ValueError, match=r"parameter '0.bias' has shape \(8,\)"):
        rt.Regularizer(_model(), rt.GroupLasso(0.1, groups="columns"), params="all")


def test_attach_refuses_lbfgs_foreign_optimizer_and_loss_mode_counts_steps() -> None:
    model = _model()
    reg = rt.Regularizer(model, rt.L1(0.1), mode="prox")
    with pytest.raises(ValueError, match="LBFGS re-evaluates a closure"):
        reg.attach(torch.optim.LBFGS(model.parameters()))
    with pytest.raises(ValueError, match=r"must hold the regularized parameters; it lacks 2 of 2"):
        reg.attach(torch.optim.SGD(_model().parameters(), lr=0.1))
    partial_opt = torch.optim.SGD(model[0].parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"lacks 1 of 2: '3.weight'"):
        reg.attach(partial_opt)
    handle = reg.attach(partial_opt, partial=True)
    handle.remove()
    with pytest.raises(TypeError, match=r"must be a torch.optim.Optimizer; got list"):
        reg.attach([])
    loss_reg = rt.Regularizer(model, rt.L1(0.1))
    loss_reg.attach(torch.optim.LBFGS(model.parameters()))  # loss mode works inside a closure


def test_handle_remove_stops_regularization() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg = rt.Regularizer(model, rt.L1(100.0), mode="prox")
    with reg.attach(opt):
        pass
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=False))


def test_sparse_gradients_refused_in_grad_mode() -> None:
    emb = nn.Embedding(10, 4, sparse=True)
    opt = torch.optim.SGD(emb.parameters(), lr=0.1)
    rt.regularize(emb, opt, rt.L1(0.1), mode="grad")
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="cannot add it to the sparse gradient"):
        opt.step()


def test_mixed_dtypes_accumulate_in_float32() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].to(torch.bfloat16)
    reg = rt.Regularizer(model, rt.L1(0.1))
    expected = 0.1 * (model[0].weight.float().abs().sum() + model[1].weight.abs().sum())
    value = reg.penalty()
    assert value.dtype == torch.float32 and torch.allclose(value, expected)
    value.backward()
    assert model[0].weight.grad.dtype == torch.bfloat16
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rt.regularize(model, opt, rt.L1(10.0), mode="prox")
    opt.step()
    assert torch.count_nonzero(model[0].weight) == 0


def test_compiled_model_names_and_training() -> None:
    model = _model(dtype=torch.float32)
    compiled = torch.compile(model)
    opt = torch.optim.Adam(compiled.parameters(), lr=0.01)
    reg = rt.regularize(compiled, opt, rt.L1(0.01), mode="prox")
    assert [n for n, _ in reg.named_parameters()] == ["0.weight", "3.weight"]
    x, y = _batch(dtype=torch.float32)
    for _ in range(2):
        opt.zero_grad()
        _data_loss(compiled, x, y).backward()
        opt.step()
    assert reg.num_steps == 2


def test_stats_and_sparsity() -> None:
    model = _model()
    with torch.no_grad():
        model[0].weight[:3] = 0  # three dead neurons
        model[0].weight[3, 0] = 0
    reg = rt.Regularizer(model, rt.L1(0.5))
    stats = reg.stats()
    first = stats.parameters[0]
    assert (first.name, first.zeros, first.zero_groups, first.groups) == ("0.weight", 19, 3, 8)
    assert stats.numel == 48 + 24 and stats.zeros == 19
    assert stats.penalty == pytest.approx(reg.penalty().item())
    assert first.l1_norm == pytest.approx(model[0].weight.abs().sum().item())
    assert "0.weight" in stats.format() and stats.to_dict()["zeros"] == 19
    plain = rt.sparsity(model)
    assert plain.zeros == 19 and plain.penalty is None
    group_stats = rt.Regularizer(model, rt.GroupLasso(0.1, groups="columns")).stats()
    assert group_stats.parameters[0].group_spec == "columns" and group_stats.parameters[0].groups == 6


def test_stats_name_nonfinite_parameters() -> None:
    model = _model()
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="These parameters hold NaN or inf: 3.weight"):
        stats = rt.sparsity(model)
    assert stats.nonfinite == ["3.weight"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rt.sparsity(_model())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            dict(penalty=rt.L1(0.1), mode="decay"),
            ValueError,
            r"'mode' argument of Regularizer must be one of 'loss', 'grad', 'prox'; got 'decay'",
        ),
        (dict(penalty="l1"), TypeError, r"'penalty' argument of Regularizer must be a Penalty"),
        (
            dict(penalty=rt.L1(0.1), params="conv*"),
            ValueError,
            r"must select at least one trainable parameter; got 'conv\*'.*include: '0.weight'",
        ),
        (dict(penalty=rt.Lp(3, 0.1, root=True), mode="prox"), ValueError, r"use mode='loss' or mode='grad'"),
        (dict(penalty=rt.L1(0.1), step_factor=-1), ValueError, r"'step_factor' argument of Regularizer"),
        (
            dict(penalty=rt.L1(0.1), params=3),
            TypeError,
            r"'params' argument of Regularizer must be 'weights', 'all'",
        ),
        (
            dict(penalty=rt.L1(0.1), params=torch.ones(2, requires_grad=True)),
            ValueError,
            r"not a trainable parameter of the model",
        ),
        (
            dict(penalty=rt.L1(0.1), schedule=5),
            TypeError,
            r"'schedule' argument of Regularizer must be a callable",
        ),
    ],
)
def test_regularizer_bad_input(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        rt.Regularizer(_model(), **kwargs)


def test_complex_parameters_refused() -> None:
    model = nn.Linear(2, 2)
    model.weight = nn.Parameter(torch.randn(2, 2, dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"parameter 'weight' has dtype torch.complex64"):
        rt.Regularizer(model, rt.L1(0.1))


@pytest.mark.parametrize("as_keyword", [False, True])
def test_grad_mode_with_step_closure_adds_the_penalty_after_the_closure(as_keyword) -> None:
    x, y = _batch()
    ours, reference = _model(), _model()
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    rt.regularize(ours, opt, rt.L2(0.5), mode="grad")
    ref_reg = rt.Regularizer(reference, rt.L2(0.5))

    def closure():
        opt.zero_grad()
        loss = _data_loss(ours, x, y)
        loss.backward()
        return loss

    for _ in range(3):
        loss = opt.step(closure=closure) if as_keyword else opt.step(closure)
        assert loss is not None
        ref_opt.zero_grad()
        (_data_loss(reference, x, y) + ref_reg.penalty()).backward()
        ref_opt.step()
    for a, b in zip(ours.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- custom training loops
@pytest.mark.parametrize("holds", ["all", "some", None])
def test_add_grad_adds_what_the_grad_hook_adds(holds):
    model, reference = _model(), _model()
    x, y = _batch()
    for m in (model, reference):
        _data_loss(m, x, y).backward()
    reg = rt.Regularizer(model, rt.ElasticNet(l1=1e-2, l2=1e-2), mode="grad")
    ref_reg = rt.Regularizer(reference, rt.ElasticNet(l1=1e-2, l2=1e-2), mode="grad")
    pick = {"all": lambda m: list(m.parameters()), "some": lambda m: [m[0].weight], None: None}[holds]
    opt = None if pick is None else torch.optim.SGD(pick(model), lr=0.0)
    ref_opt = torch.optim.SGD(list(reference.parameters()) if pick is None else pick(reference), lr=0.0)
    ref_reg.attach(ref_opt, partial=True)
    reg.add_grad_(opt)
    ref_opt.step()  # lr 0: only the hook's addition changes anything
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_optimizers_lists_the_attachments_in_force():
    model = _model()
    first, second = (torch.optim.SGD(model.parameters(), lr=0.1) for _ in range(2))
    reg = rt.Regularizer(model, rt.L1(1e-2), mode="prox")
    assert reg.optimizers == []
    handle = reg.attach(first)
    reg.attach(second)
    assert reg.optimizers == [first, second]
    handle.remove()
    assert reg.optimizers == [second]
