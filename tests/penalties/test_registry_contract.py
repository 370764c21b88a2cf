"""Every registered penalty, through every implementation, against its own definition.

Sources of truth: finite differences of the value (``gradcheck``) for the gradient, direct
minimisation of ``½(x − w)² + t·r(x)`` for element-wise proxes, perturbation of the prox objective
for the others, and the reference implementation for the multi-tensor and compiled ones.
"""

from __future__ import annotations

import json

import pytest
import torch

import regtorch as rt
from registry_examples import registry_examples
from regtorch import kernels

DT = torch.float64
EXAMPLES = registry_examples()
IDS = [repr(p) for p in EXAMPLES]
STEP = 0.4
IMPLS = {"reference": {"foreach": False, "fused": False}, "foreach": {"foreach": True, "fused": False}}
if kernels.compiled_available("cpu"):
    IMPLS["compiled"] = {"fused": True}


def _tensors(seed: int, dtype=DT, big: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 4), (7, 3)] if not big else [(1024, kernels.COMPILED_MIN_TENSOR // 1024 + 3), (6, 5)]
    return [torch.randn(s, generator=g, dtype=dtype) for s in shapes]


def test_every_registered_penalty_has_an_example() -> None:
    assert set(rt.list_penalties()) <= {p.name for p in EXAMPLES}


@pytest.mark.parametrize("penalty", EXAMPLES, ids=IDS)
def test_value_is_finite_non_negative_and_in_the_right_dtype(penalty) -> None:
    for dtype in (torch.float32, torch.float64):
        value = penalty.value(_tensors(0, dtype))
        assert value.dtype == dtype and value.ndim == 0
        assert torch.isfinite(value) and value >= 0
    assert penalty.value([torch.zeros(3, 4)]) == 0


@pytest.mark.parametrize("penalty", EXAMPLES, ids=IDS)
def test_gradient_matches_finite_differences_of_the_value(penalty) -> None:
    tensors = [t.requires_grad_() for t in _tensors(1)]
    assert torch.autograd.gradcheck(lambda *ts: penalty.value(list(ts)), tensors)
    assert torch.autograd.gradcheck(lambda *ts: penalty.value(list(ts), foreach=True), tensors)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("penalty", EXAMPLES, ids=IDS)
def test_every_implementation_equals_the_reference(penalty, impl) -> None:
    big = impl == "compiled"
    tensors = _tensors(2, torch.float32, big=big)
    ref, other = IMPLS["reference"], IMPLS[impl]
    tol = {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(penalty.value(tensors, **other), penalty.value(tensors, **ref), rtol=1e-6, atol=0)
    for a, b in zip(penalty.grad(tensors, **other), penalty.grad(tensors, **ref), strict=True):
        torch.testing.assert_close(a, b, **tol)
    grads_a = [torch.randn_like(t) for t in tensors]
    grads_b = [g.clone() for g in grads_a]
    penalty.add_grad_(tensors, grads_a, alpha=0.7, **other)
    penalty.add_grad_(tensors, grads_b, alpha=0.7, **ref)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, **tol)
    if penalty.supports_prox:
        a, b = [t.clone() for t in tensors], [t.clone() for t in tensors]
        penalty.prox(a, STEP, **other)
        penalty.prox(b, STEP, **ref)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, **tol)
            assert torch.equal(x == 0, y == 0)


@pytest.mark.parametrize("penalty", EXAMPLES, ids=IDS)
def test_loss_mode_backward_equals_grad(penalty) -> None:
    params = [torch.nn.Parameter(t) for t in _tensors(3)]
    (2.5 * penalty.value(params)).backward()
    for p, g in zip(params, penalty.grad(params, scale=2.5), strict=True):
        torch.testing.assert_close(p.grad, g)


def _prox_objective(penalty, x, w, step) -> torch.Tensor:
    return 0.5 * sum(((a - b) ** 2).sum() for a, b in zip(x, w, strict=True)) + step * penalty.value(x)


@pytest.mark.parametrize("penalty", [p for p in EXAMPLES if p.supports_prox], ids=repr)
def test_prox_minimises_its_objective(penalty) -> None:
    w = _tensors(4)
    x = [t.clone() for t in w]
    penalty.prox(x, STEP)
    best = _prox_objective(penalty, x, w, STEP)
    g = torch.Generator().manual_seed(5)
    if penalty.elementwise:  # each entry is a 1-D problem: compare with a fine grid around it
        flat_w, flat_x = torch.cat([t.reshape(-1) for t in w]), torch.cat([t.reshape(-1) for t in x])
        for wi, xi in zip(flat_w[:12], flat_x[:12], strict=True):
            grid = wi + torch.linspace(-3, 3, 6001, dtype=DT)
            values = torch.stack([0.5 * (c - wi) ** 2 + STEP * penalty.value(c.reshape(1)) for c in grid])
            found = 0.5 * (xi - wi) ** 2 + STEP * penalty.value(xi.reshape(1))
            assert found <= values.min() + 1e-9
    for _ in range(50):  # no nearby point does better (zero entries and groups included)
        y = [t + 1e-3 * torch.randn(t.shape, generator=g, dtype=DT) for t in x]
        assert best <= _prox_objective(penalty, y, w, STEP) + 1e-12


@pytest.mark.parametrize("penalty", EXAMPLES, ids=IDS)
def test_config_round_trip_and_registry_lookup(penalty) -> None:
    config = json.loads(json.dumps(penalty.get_config()))
    rebuilt = rt.penalty_from_config(config)
    assert rebuilt == penalty and type(rebuilt) is type(penalty)
    if penalty.name in rt.list_penalties():
        assert rt.penalty_class(penalty.name.lower()) is type(penalty)


@pytest.mark.parametrize("penalty", EXAMPLES, ids=IDS)
def test_scaling_scales_the_value_and_the_prox_step(penalty) -> None:
    tensors = _tensors(6)
    scaled = 0.5 * penalty
    torch.testing.assert_close(scaled.value(tensors), 0.5 * penalty.value(tensors))
    for a, b in zip(scaled.grad(tensors), penalty.grad(tensors, scale=0.5), strict=True):
        torch.testing.assert_close(a, b)
    if penalty.supports_prox:
        a, b = [t.clone() for t in tensors], [t.clone() for t in tensors]
        scaled.prox(a, STEP)
        penalty.prox(b, 0.5 * STEP)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y)


@pytest.mark.parametrize("penalty", EXAMPLES, ids=IDS)
@pytest.mark.parametrize("mode", ["loss", "grad", "prox"])
def test_every_mode_trains_a_model(penalty, mode) -> None:
    if mode == "prox" and not penalty.supports_prox:
        with pytest.raises(ValueError, match="mode='prox' cannot apply it"):
            rt.Regularizer(torch.nn.Linear(3, 2), penalty, mode=mode)
        return
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    reg = rt.Regularizer(model, penalty, mode=mode)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    if mode != "loss":
        reg.attach(opt)
    x, y = torch.randn(16, 6, dtype=DT), torch.randn(16, 3, dtype=DT)
    before = float(reg.penalty().detach())
    for _ in range(5):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        (loss + reg.penalty() if mode == "loss" else loss).backward()
        opt.step()
    stats = reg.stats()
    assert stats.penalty == pytest.approx(float(reg.penalty()), rel=1e-9)
    assert float(reg.penalty()) != before


@pytest.mark.parametrize("penalty", EXAMPLES, ids=IDS)
def test_loss_and_grad_modes_make_the_same_updates(penalty) -> None:
    def run(mode):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
        reg = rt.Regularizer(model, penalty, mode=mode)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if mode == "grad":
            reg.attach(opt)
        x, y = torch.randn(16, 6, dtype=DT), torch.randn(16, 3, dtype=DT)
        for _ in range(4):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            (loss + reg.penalty() if mode == "loss" else loss).backward()
            opt.step()
        return list(model.parameters())

    for a, b in zip(run("loss"), run("grad"), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
