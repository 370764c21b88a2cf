"""Penalty values, gradients and proxes against closed forms, autograd and optimality conditions."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import regtorch as rt

DT = torch.float64


def _tensors(seed: int = 0, shapes=((5, 4), (7,), (3, 2, 2, 2))) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=DT) for s in shapes]


def _reference_value(penalty: rt.Penalty, tensors: list[torch.Tensor]) -> torch.Tensor:
    """Each penalty's formula written with plain torch ops (differentiable by autograd)."""
    total = torch.zeros((), dtype=DT)
    for term in penalty.terms():
        for w in tensors:
            if isinstance(term, rt.L1):
                total = total + term.strength * w.abs().sum()
            elif isinstance(term, rt.L2):
                total = total + term.strength * (w**2).sum()
            elif isinstance(term, rt.ElasticNet):
                total = total + term.l1 * w.abs().sum() + term.l2 * (w**2).sum()
            elif isinstance(term, rt.Lp):
                powered = (w.abs() ** term.p).sum()
                total = total + term.strength * (powered ** (1 / term.p) if term.root else powered)
            elif isinstance(term, rt.GroupLasso):
                dim = {"rows": 0, "filters": 0, "columns": 1, "channels": 1}.get(term.groups, term.groups)
                if term.groups == "tensor":
                    total = total + term.strength * w.norm()
                else:
                    moved = w.movedim(dim, 0).reshape(w.shape[dim], -1)
                    total = total + term.strength * moved.norm(dim=1).sum()
            else:  # pragma: no cover - new penalties must be added here
                raise AssertionError(f"no reference for {term!r}")
    return total


PENALTIES = [
    rt.L1(0.3),
    rt.L2(0.7),
    rt.ElasticNet(l1=0.2, l2=0.5),
    rt.Lp(1.5, 0.4),
    rt.Lp(3.0, 0.1),
    rt.Lp(2.0, 0.3, root=True),
    rt.Lp(1.0, 0.3, root=True),
    rt.Lp(2.5, 0.3, root=True),
    rt.GroupLasso(0.6),
    rt.L1(0.1) + rt.GroupLasso(0.4),
    rt.L1(0.1) + rt.L2(0.2),
    rt.GroupLasso(0.3) + rt.L2(0.2) + rt.L1(0.05),
]
IDS = [repr(p) for p in PENALTIES]


def test_registry_lists_the_built_in_penalties_sorted() -> None:
    names = rt.list_penalties()
    assert names == sorted(names)
    assert {"ElasticNet", "GroupLasso", "L1", "L2", "Lp"} <= set(names)
    assert "Sum" not in names and "Scaled" not in names


@pytest.mark.parametrize("penalty", PENALTIES, ids=IDS)
def test_value_matches_closed_form(penalty: rt.Penalty) -> None:
    tensors = _tensors()
    expected = _reference_value(penalty, tensors)
    assert torch.allclose(penalty.value(tensors), expected, rtol=1e-12, atol=0)
    assert penalty.value(tensors) >= 0


@pytest.mark.parametrize("penalty", PENALTIES, ids=IDS)
def test_grad_matches_autograd(penalty: rt.Penalty) -> None:
    tensors = [t.requires_grad_() for t in _tensors(1)]
    _reference_value(penalty, tensors).backward()
    expected = [t.grad.clone() for t in tensors]
    for got, want in zip(penalty.grad(tensors), expected, strict=False):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("penalty", PENALTIES, ids=IDS)
def test_value_is_differentiable_and_passes_gradcheck(penalty: rt.Penalty) -> None:
    tensors = [t.requires_grad_() for t in _tensors(2, shapes=((3, 4), (2, 3, 2)))]
    assert torch.autograd.gradcheck(lambda *ts: penalty.value(list(ts)), tensors)


@pytest.mark.parametrize("penalty", PENALTIES, ids=IDS)
def test_foreach_matches_reference_path(penalty: rt.Penalty) -> None:
    tensors = [*_tensors(3), torch.randn(4, 4, dtype=torch.float32)]
    grads_a = [torch.randn_like(t) for t in tensors]
    grads_b = [g.clone() for g in grads_a]
    penalty.add_grad_(tensors, grads_a, alpha=0.7, foreach=False)
    penalty.add_grad_(tensors, grads_b, alpha=0.7, foreach=True)
    for a, b in zip(grads_a, grads_b, strict=False):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    if penalty.supports_prox:
        ref = [t.clone() for t in tensors]
        fast = [t.clone() for t in tensors]
        penalty.prox(ref, 0.3, foreach=False)
        penalty.prox(fast, 0.3, foreach=True)
        for a, b in zip(ref, fast, strict=False):
            assert torch.equal(a, b)


# ---------------------------------------------------------------- prox: closed forms
def test_l1_prox_is_soft_threshold() -> None:
    w = torch.tensor([-3.0, -0.5, 0.0, 0.2, 1.0, 4.0], dtype=DT)
    rt.L1(0.5).prox(w, 2.0)  # threshold 1.0
    assert torch.equal(w, torch.tensor([-2.0, 0.0, 0.0, 0.0, 0.0, 3.0], dtype=DT))


def test_l2_prox_divides() -> None:
    w = torch.tensor([2.0, -4.0], dtype=DT)
    rt.L2(0.25).prox(w, 2.0)  # 1 + 2·2·0.25 = 2
    assert torch.equal(w, torch.tensor([1.0, -2.0], dtype=DT))


def test_elastic_net_prox_closed_form() -> None:
    w = torch.tensor([3.0, -0.2, -2.0], dtype=DT)
    rt.ElasticNet(l1=0.5, l2=0.25).prox(w, 1.0)  # soft by 0.5, then / 1.5
    assert torch.allclose(w, torch.tensor([2.5 / 1.5, 0.0, -1.5 / 1.5], dtype=DT))


def test_group_lasso_prox_block_soft_threshold() -> None:
    w = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], dtype=DT)  # row norms 5, 0.5, 0
    rt.GroupLasso(1.0).prox(w, 1.0)
    assert torch.allclose(w[0], torch.tensor([3.0, 4.0], dtype=DT) * (1 - 1 / 5))
    assert torch.equal(w[1:], torch.zeros(2, 2, dtype=DT))


@pytest.mark.parametrize(
    ("groups", "zero_slices"),
    [
        ("rows", lambda w: w[1]),
        ("columns", lambda w: w[:, 1]),
        ("filters", lambda w: w[1]),
        ("channels", lambda w: w[:, 1]),
        (2, lambda w: w[:, :, 1]),
    ],
)
def test_group_presets_zero_whole_groups(groups, zero_slices) -> None:
    w = torch.randn(3, 4, 5, 5, dtype=DT)
    with torch.no_grad():
        zero_slices(w).mul_(1e-3)  # one group far below the threshold
    rt.GroupLasso(0.05, groups=groups).prox(w, 1.0)
    assert torch.count_nonzero(zero_slices(w)) == 0
    assert torch.count_nonzero(w) > 0


def _subgradient_residual(penalty: rt.Penalty, x: torch.Tensor, u: torch.Tensor) -> float:
    """Distance of ``u`` from ``∂R(x)`` for L1/L2/ElasticNet/Lp/GroupLasso(rows) and L1 + GroupLasso."""
    l1 = l2 = group = 0.0
    smooth = torch.zeros_like(x)
    for term in penalty.terms():
        if isinstance(term, rt.L1):
            l1 += term.strength
        elif isinstance(term, rt.L2):
            l2 += term.strength
        elif isinstance(term, rt.ElasticNet):
            l1, l2 = l1 + term.l1, l2 + term.l2
        elif isinstance(term, rt.Lp):
            smooth = smooth + term.strength * term.p * x.abs() ** (term.p - 1) * x.sign()
        elif isinstance(term, rt.GroupLasso):
            group += term.strength
    u = u - 2 * l2 * x - smooth  # the differentiable parts are single-valued
    residual = 0.0
    for xg, ug in zip(x.reshape(x.shape[0], -1), u.reshape(u.shape[0], -1), strict=False):
        norm = xg.norm()
        if group and norm == 0:
            # u = l1·s + group·z with |s| <= 1 and ‖z‖ <= 1  <=>  ‖soft(u, l1)‖ <= group
            soft = torch.sign(ug) * (ug.abs() - l1).clamp_min(0)
            residual = max(residual, float(soft.norm() - group))
            continue
        rest = ug - (group * xg / norm if group else 0)
        nz = xg != 0
        if nz.any():
            residual = max(residual, float((rest[nz] - l1 * xg[nz].sign()).abs().max()))
        if (~nz).any():
            residual = max(residual, float((rest[~nz].abs() - l1).max()))
    return residual


PROX_PENALTIES = [
    rt.L1(0.3),
    rt.L2(0.7),
    rt.ElasticNet(l1=0.2, l2=0.5),
    rt.Lp(1.5, 0.4),
    rt.Lp(3.0, 0.2),
    rt.GroupLasso(0.6),
    rt.L1(0.1) + rt.GroupLasso(0.4),
    rt.GroupLasso(0.3) + rt.L2(0.2) + rt.L1(0.05),
]


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(st.floats(-5, 5, allow_nan=False), min_size=12, max_size=12),
    step=st.one_of(st.just(0.0), st.floats(1e-3, 3.0)),
    which=st.integers(0, len(PROX_PENALTIES) - 1),
)
def test_prox_optimality_condition(data, step, which) -> None:
    """v − prox(v) ∈ t·∂R(prox(v)), checked on a 3×4 tensor."""
    penalty = PROX_PENALTIES[which]
    v = torch.tensor(data, dtype=DT).reshape(3, 4)
    x = v.clone()
    penalty.prox(x, step)
    if step == 0:
        assert torch.equal(x, v)
        return
    assert _subgradient_residual(penalty, x, (v - x) / step) < 1e-7


@settings(max_examples=40, deadline=None)
@given(
    a=st.lists(st.floats(-5, 5, allow_nan=False), min_size=8, max_size=8),
    b=st.lists(st.floats(-5, 5, allow_nan=False), min_size=8, max_size=8),
    which=st.integers(0, len(PROX_PENALTIES) - 1),
)
def test_prox_is_non_expansive_and_keeps_zeros(a, b, which) -> None:
    penalty = PROX_PENALTIES[which]
    va, vb = torch.tensor(a, dtype=DT).reshape(2, 4), torch.tensor(b, dtype=DT).reshape(2, 4)
    pa, pb = va.clone(), vb.clone()
    penalty.prox(pa, 0.7)
    penalty.prox(pb, 0.7)
    assert (pa - pb).norm() <= (va - vb).norm() + 1e-12
    assert torch.all(pa[va == 0] == 0)
    # never enlarges a weight, never flips a sign (the Torch7 recipe's in-place bug did both)
    assert torch.all(pa.abs() <= va.abs() + 1e-12)
    assert torch.all(pa * va >= 0)


def test_torch7_recipe_bug_regression() -> None:
    """The classic hook: update = clamp(w, -l1, l1); update:add(w:mul(-l2)); w:csub(update).

    Written with an in-place ``mul`` it turns every weight into ``-clamp(w, -l1, l1)``; regtorch's
    prox is the intended soft-threshold-then-shrink.
    """
    w = torch.tensor([2.0, -1.0, 0.05, -0.02], dtype=DT)
    l1, l2 = 0.1, 0.01
    buggy = w.clone()
    update = buggy.clamp(-l1, l1)
    update.add_(buggy.mul_(-l2))  # in-place, as in the recipe
    buggy.sub_(update)
    assert torch.all(torch.sign(buggy) != torch.sign(w))  # the bug flips every sign
    ours = w.clone()
    rt.ElasticNet(l1=l1, l2=l2 / 2).prox(ours, 1.0)
    expected = torch.sign(w) * (w.abs() - l1).clamp_min(0) / (1 + l2)
    assert torch.allclose(ours, expected)


def test_lp_root_prox_refused_without_closed_form() -> None:
    with pytest.raises(ValueError, match=r"Lp\(p=3, root=True\) has a closed-form proximal"):
        rt.Lp(3, 0.1, root=True).prox(torch.ones(3), 0.1)
    assert not rt.Lp(3, 0.1, root=True).supports_prox


def test_sum_without_closed_form_refused() -> None:
    penalty = rt.GroupLasso(0.1, "rows") + rt.GroupLasso(0.1, "columns")
    assert not penalty.supports_prox
    with pytest.raises(ValueError, match="no closed-form proximal operator"):
        penalty.prox(torch.ones(2, 2), 0.1)


def test_prox_zero_step_is_identity_and_negative_step_refused() -> None:
    w = torch.randn(4, 3)
    before = w.clone()
    rt.L1(1.0).prox(w, 0.0)
    assert torch.equal(w, before)
    with pytest.raises(ValueError, match=r"'step' argument of L1.prox must be a finite float >= 0"):
        rt.L1(1.0).prox(w, -0.1)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"'step' argument of L1.prox must be a finite float >= 0"):
            rt.L1(1.0).prox(w, bad)
    with pytest.raises(TypeError, match=r"'step' argument of L1.prox must be a finite float"):
        rt.L1(1.0).prox(w, "0.1")
    rt.L1(1.0).prox(w, 0)  # an int step is fine
    assert torch.equal(w, before)


@pytest.mark.parametrize("penalty", PENALTIES, ids=repr)
def test_default_paths_on_parameters_equal_reference(penalty: rt.Penalty) -> None:
    """Parameters (leaves that require grad) go through the default kernels as they are."""
    tensors = [t.float() for t in _tensors(3)]
    params = [torch.nn.Parameter(t.clone()) for t in tensors]
    grads_ref = [torch.randn_like(t) for t in tensors]
    grads_default = [g.clone() for g in grads_ref]
    penalty.add_grad_(tensors, grads_ref, alpha=0.7, foreach=False, fused=False)
    penalty.add_grad_(params, tuple(grads_default), alpha=0.7)
    for a, b in zip(grads_ref, grads_default, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    if penalty.supports_prox:
        penalty.prox(tensors, 0.3, foreach=False, fused=False)
        penalty.prox(params, 0.3)
        for a, b in zip(tensors, params, strict=True):
            assert torch.equal(a, b.detach())
        assert all(p.grad is None and p.requires_grad for p in params)


# ---------------------------------------------------------------- algebra, config, converters
def test_sum_and_scaling_algebra() -> None:
    tensors = _tensors(4)
    s = rt.L1(0.2) + rt.L2(0.3)
    assert isinstance(s, rt.Sum) and len(s.terms()) == 2
    en = rt.ElasticNet(l1=0.2, l2=0.3)
    assert torch.allclose(s.value(tensors), en.value(tensors))
    assert torch.allclose((2 * s).value(tensors), 2 * s.value(tensors))
    assert sum([rt.L1(0.1), rt.L2(0.2)]) == rt.L1(0.1) + rt.L2(0.2)
    a, b = [t.clone() for t in tensors], [t.clone() for t in tensors]
    s.prox(a, 0.4)
    en.prox(b, 0.4)
    for x, y in zip(a, b, strict=False):
        assert torch.allclose(x, y)


@pytest.mark.parametrize("penalty", PENALTIES, ids=IDS)
def test_config_json_round_trip(penalty: rt.Penalty) -> None:
    config = json.loads(json.dumps(penalty.get_config()))
    rebuilt = rt.penalty_from_config(config)
    assert rebuilt == penalty
    assert type(rebuilt) is type(penalty)
    assert rt.Penalty.from_config(config) == penalty


def test_from_weight_decay_and_from_sklearn() -> None:
    assert rt.L2.from_weight_decay(0.01).strength == pytest.approx(0.005)
    en = rt.ElasticNet.from_sklearn(alpha=0.1, l1_ratio=0.3)
    assert en.l1 == pytest.approx(0.03) and en.l2 == pytest.approx(0.035)


def test_strength_is_mutable_and_validated() -> None:
    p = rt.L1(0.1)
    p.strength = 0.5
    assert p.value(torch.ones(2)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"'strength' argument of L1 must be a finite float >= 0; got -1"):
        p.strength = -1


def test_low_precision_values_accumulate_in_float32() -> None:
    w = torch.full((100_000,), 0.01, dtype=torch.bfloat16)
    value = rt.L1(1.0).value(w)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(100_000 * float(w[0]), rel=1e-6)


def test_value_accurate_on_a_large_float32_tensor() -> None:
    w = torch.randn(3_000_000)
    exact = w.double().abs().sum().item()
    assert abs(rt.L1(1.0).value(w).item() - exact) / exact < 1e-6
    exact2 = w.double().pow(2).sum().item()
    assert abs(rt.L2(1.0).value(w).item() - exact2) / exact2 < 1e-6


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: rt.L1(-0.1), ValueError, r"'strength' argument of L1 must be a finite float >= 0; got -0.1"),
        (lambda: rt.L2(float("nan")), ValueError, r"'strength' argument of L2 .* got nan"),
        (lambda: rt.L1(float("inf")), ValueError, r"got inf"),
        (lambda: rt.L1("big"), TypeError, r"'strength' argument of L1 .* got 'big' of type str"),
        (lambda: rt.ElasticNet(l1=-1), ValueError, r"'l1' argument of ElasticNet"),
        (lambda: rt.Lp(0.5, 0.1), ValueError, r"'p' argument of Lp must be a finite float >= 1; got 0.5"),
        (
            lambda: rt.ElasticNet.from_sklearn(alpha=1, l1_ratio=1.5),
            ValueError,
            r"'l1_ratio' .* in \[0, 1\]; got 1.5",
        ),
        (
            lambda: rt.GroupLasso(0.1, groups="neurons"),
            ValueError,
            r"'groups' argument of GroupLasso must be one of",
        ),
        (lambda: rt.GroupLasso(0.1, groups=1.5), TypeError, r"'groups' argument of GroupLasso"),
        (lambda: rt.penalty_from_config({"name": "L3"}), ValueError, r"unknown penalty 'L3'"),
        (lambda: rt.L1(0.1) * -2, ValueError, r"'factor' argument of L1"),
    ],
)
def test_bad_input_messages(make, error, match) -> None:
    with pytest.raises(error, match=match):
        make()


def test_group_lasso_refuses_tensor_without_the_dimension() -> None:
    with pytest.raises(ValueError, match=r"parameter 'fc.bias' has shape \(3,\)"):
        rt.GroupLasso(0.1, groups="columns").check_tensor("fc.bias", torch.ones(3))


def test_math_constants_documented() -> None:
    # the L2 convention: no ½, gradient 2λw
    w = torch.tensor([3.0], dtype=DT)
    assert rt.L2(0.5).value(w).item() == pytest.approx(4.5)
    assert rt.L2(0.5).grad(w)[0].item() == pytest.approx(3.0)
    assert math.isclose(rt.Lp(2.0, 1.0, root=True).value(torch.tensor([3.0, 4.0])).item(), 5.0)
