"""Prox mode in Adam's diagonal metric: Regularizer(prox_metric="adam")."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import regtorch as rt
from regtorch.penalties import ProxPlan
from regtorch.regularizer._metric_prox import ADAM_FAMILY, adam_denominators, metric_prox_

DT = torch.float64


class FakeAdam(torch.optim.Adam):
    """An Adam whose step leaves the parameters alone and writes a chosen state.

    The step post-hooks (the prox) still run, so the prox alone can be checked.
    """

    def __init__(self, params, v: dict[int, torch.Tensor], step: int, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.v = v
        self.step_count = step

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p] = {
                    "step": torch.tensor(float(self.step_count)),
                    "exp_avg": torch.zeros_like(p),
                    "exp_avg_sq": self.v[id(p)].clone(),
                }


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).to(DT)


def _backward(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 6, generator=g, dtype=DT), torch.randn(16, 3, generator=g, dtype=DT)
    model.zero_grad()
    ((model(x) - y) ** 2).mean().backward()


def _second_moments(model: nn.Module, seed: int = 5) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {id(p): torch.rand(p.shape, generator=g, dtype=DT) ** 4 * 1e-2 for p in model.parameters()}


@pytest.mark.parametrize("penalty", [rt.L1(0.05), rt.ElasticNet(l1=0.05, l2=0.3), rt.L2(0.4), rt.Lp(1, 0.05)])
def test_per_element_threshold_is_exactly_the_formula(penalty) -> None:
    model = _model()
    v = _second_moments(model)
    lr, beta2, eps, k, factor = 0.02, 0.99, 1e-6, 7, 0.5
    opt = FakeAdam(model.parameters(), v, k, lr=lr, betas=(0.9, beta2), eps=eps)
    reg = rt.Regularizer(model, penalty, mode="prox", prox_metric="adam", step_factor=factor)
    reg.attach(opt)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    _backward(model)
    opt.step()
    plan = penalty.prox_plan()
    for name, p in model.named_parameters():
        w = before[id(p)]
        if not name.endswith("weight"):  # params="weights" by default: biases untouched
            assert torch.equal(p, w)
            continue
        d = (v[id(p)] / (1 - beta2**k)).sqrt() + eps
        tau1 = lr * factor * plan.l1 / d
        tau2 = lr * factor * plan.l2 / d
        expected = torch.sign(w) * torch.clamp(w.abs() - tau1, min=0) / (1 + 2 * tau2)
        assert torch.allclose(p, expected, rtol=1e-12, atol=0)
        if plan.l1:
            assert torch.equal(p == 0, w.abs() <= tau1)  # zeros exactly where |w| <= τ₁ᵢ
            assert 0 < int((p == 0).sum()) < p.numel()  # the thresholds vary per element


def test_zeros_are_exact_and_stay_zero_with_a_real_adam() -> None:
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    reg = rt.Regularizer(model, rt.L1(0.5), mode="prox", prox_metric="adam")
    reg.attach(opt)
    for _ in range(30):
        _backward(model)
        opt.step()
    assert reg.stats().zeros > 0
    zeros = [p.detach() == 0 for p in reg.parameters()]
    for p in reg.parameters():  # no tiny non-zeros: every entry is 0 or clearly away from it
        assert bool(((p.detach() == 0) | (p.detach().abs() > 1e-12)).all())
    reg.scale = 1e6  # then a huge threshold: everything touched becomes exactly 0 and stays
    _backward(model)
    opt.step()
    assert all(bool((p.detach() == 0).all()) for p in reg.parameters())
    assert all(z.any() for z in zeros)


def test_equals_euclidean_prox_when_v_hat_is_one_and_eps_is_zero() -> None:
    penalty = rt.ElasticNet(l1=0.03, l2=0.2)
    beta2, k = 0.999, 4
    models, opts = [], []
    for metric in ("adam", "euclidean"):
        model = _model()
        v = {id(p): torch.full_like(p, 1 - beta2**k) for p in model.parameters()}  # v̂ = 1
        opt = FakeAdam(model.parameters(), v, k, lr=0.1, betas=(0.9, beta2), eps=0.0)
        rt.Regularizer(model, penalty, params="all", mode="prox", prox_metric=metric).attach(opt)
        models.append(model)
        opts.append(opt)
    for model, opt in zip(models, opts, strict=True):
        _backward(model)
        opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-14, atol=0)
        assert torch.equal(a == 0, b == 0)


def _adam_cases():
    cases = []
    for cls in ADAM_FAMILY:
        for impl in ("for-loop", "foreach"):
            cases.append(pytest.param(cls, {"foreach": impl == "foreach"}, id=f"{cls.__name__}-{impl}"))
    cases.append(pytest.param(torch.optim.Adam, {"amsgrad": True}, id="Adam-amsgrad"))
    cases.append(pytest.param(torch.optim.AdamW, {"amsgrad": True, "weight_decay": 0.1}, id="AdamW-amsgrad"))
    return cases


@pytest.mark.parametrize(("opt_cls", "kwargs"), _adam_cases())
def test_every_adam_family_optimizer_uses_its_own_second_moment(opt_cls, kwargs) -> None:
    """One real step of the optimizer, then the metric prox, equals the same computed by hand."""
    penalty = rt.ElasticNet(l1=0.02, l2=0.1)
    model, twin = _model(), _model()
    opt = opt_cls(model.parameters(), lr=0.01, **kwargs)
    opt_twin = opt_cls(twin.parameters(), lr=0.01, **kwargs)
    rt.Regularizer(model, penalty, mode="prox", prox_metric="adam").attach(opt)
    for _ in range(3):
        _backward(model)
        opt.step()
        _backward(twin)
        opt_twin.step()
        group = opt_twin.param_groups[0]
        weights = [twin[0].weight, twin[2].weight]
        beta2, eps = group["betas"][1], group["eps"]
        with torch.no_grad():
            for w in weights:
                state = opt_twin.state[w]
                v = state["max_exp_avg_sq"] if kwargs.get("amsgrad") else state["exp_avg_sq"]
                d = (v / (1 - beta2 ** float(state["step"]))).sqrt() + eps
                w.copy_(
                    torch.sign(w) * torch.clamp(w.abs() - 0.01 * 0.02 / d, min=0) / (1 + 2 * 0.01 * 0.1 / d)
                )
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)


def test_foreach_and_reference_kernels_agree_bitwise() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 4), (7,), (3, 2, 2)]
    for dtype in (torch.float32, DT):
        tensors = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
        dens = [torch.rand(s, generator=g, dtype=dtype) + 0.1 for s in shapes]
        plan = ProxPlan(l1=0.4, l2=0.3)
        ref = [t.clone() for t in tensors]
        fast = [t.clone() for t in tensors]
        metric_prox_(ref, dens, 0.7, plan, foreach=False)
        metric_prox_(fast, dens, 0.7, plan, foreach=True)
        for a, b in zip(ref, fast, strict=True):
            assert torch.equal(a, b)
            assert int((a == 0).sum()) > 0


@pytest.mark.parametrize("seed", range(5))
def test_result_satisfies_the_optimality_condition_in_the_metric(seed) -> None:
    """x = argmin ½Σdᵢ(xᵢ − wᵢ)² + t(λ₁|x|₁ + λ₂|x|²): dᵢ(xᵢ − wᵢ) + t(λ₁ sign xᵢ + 2λ₂xᵢ) = 0 off
    zero, |dᵢwᵢ| <= tλ₁ at zero."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(200, generator=g, dtype=DT)
    d = torch.rand(200, generator=g, dtype=DT) * 3 + 0.05
    t, l1, l2 = 0.3, 0.5, 0.7
    x = w.clone()
    metric_prox_([x], [d], t, ProxPlan(l1=l1, l2=l2))
    nz = x != 0
    residual = d[nz] * (x[nz] - w[nz]) + t * (l1 * torch.sign(x[nz]) + 2 * l2 * x[nz])
    assert torch.allclose(residual, torch.zeros_like(residual), atol=1e-12)
    assert bool((d[~nz] * w[~nz].abs() <= t * l1 + 1e-12).all())
    assert bool((torch.sign(x[nz]) == torch.sign(w[nz])).all())


def test_adam_denominators_read_the_state() -> None:
    p = nn.Parameter(torch.ones(3, dtype=DT))
    opt = torch.optim.Adam([p], lr=0.1, betas=(0.9, 0.9), eps=1e-3)
    p.grad = torch.tensor([1.0, 2.0, 0.0], dtype=DT)
    opt.step()
    (d,) = adam_denominators(opt, opt.param_groups[0], [p])
    # after one step v = (1 − β₂)g², v̂ = g²: d = |g| + ε
    assert torch.allclose(d, torch.tensor([1.0, 2.0, 0.0], dtype=DT) + 1e-3)


def test_state_dict_records_the_metric() -> None:
    model = _model()
    reg = rt.Regularizer(model, rt.L1(0.1), mode="prox", prox_metric="adam")
    state = reg.state_dict()
    assert state["prox_metric"] == "adam"
    twin = rt.Regularizer(model, rt.L1(0.2), mode="prox", prox_metric="adam")
    twin.load_state_dict(copy.deepcopy(state))
    assert twin.penalties[0].strength == 0.1
    euclid = rt.Regularizer(model, rt.L1(0.1), mode="prox")
    with pytest.raises(ValueError, match="prox_metric='adam'; this one has prox_metric='euclidean'"):
        euclid.load_state_dict(state)
    old = {k: v for k, v in euclid.state_dict().items() if k != "prox_metric"}
    euclid.load_state_dict(old)  # states from before the option load as 'euclidean'
    assert "prox_metric='adam'" in repr(reg)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "loss"}, r"applies to mode='prox' only; got prox_metric='adam' with mode='loss'"),
        ({"mode": "grad"}, r"applies to mode='prox' only; got prox_metric='adam' with mode='grad'"),
        ({"penalty": rt.GroupLasso(0.1)}, r"needs penalties with an element-wise prox.*group term"),
        ({"penalty": rt.L1(0.1) + rt.GroupLasso(0.1)}, r"element-wise prox.*group term"),
        ({"penalty": rt.Lp(2, 0.1, root=True)}, r"element-wise prox.*group term"),
        ({"penalty": rt.Lp(3, 0.1)}, r"element-wise prox.*not a soft-threshold"),
        (
            {"prox_metric": "diag"},
            r"'prox_metric' argument of Regularizer must be one of 'euclidean', 'adam'",
        ),
    ],
)
def test_bad_configurations_are_refused(kwargs, match) -> None:
    args = {"penalty": rt.L1(0.1), "mode": "prox", "prox_metric": "adam", **kwargs}
    penalty = args.pop("penalty")
    with pytest.raises(ValueError, match=match):
        rt.Regularizer(_model(), penalty, **args)


@pytest.mark.parametrize(
    "opt_cls", [torch.optim.SGD, torch.optim.Adamax, torch.optim.Adagrad, torch.optim.RMSprop]
)
def test_optimizers_without_exp_avg_sq_are_refused_at_attach(opt_cls) -> None:
    model = _model()
    reg = rt.Regularizer(model, rt.L1(0.1), mode="prox", prox_metric="adam")
    with pytest.raises(
        ValueError, match=rf"keeps Adam's second moment 'exp_avg_sq'.*got {opt_cls.__name__}\."
    ):
        reg.attach(opt_cls(model.parameters(), lr=0.1))


def test_missing_state_is_an_error() -> None:
    class Stateless(torch.optim.Adam):
        def step(self, closure=None):
            return None

    model = _model()
    opt = Stateless(model.parameters(), lr=0.1)
    rt.Regularizer(model, rt.L1(0.1), mode="prox", prox_metric="adam").attach(opt)
    _backward(model)
    with pytest.raises(RuntimeError, match=r"reads the optimizer state 'exp_avg_sq'.*has not stepped it"):
        opt.step()
