"""SCAD against its closed forms and against skglm's solution of the same regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from linear_fit import prox_gradient, wine

import regtorch as rt

DT = torch.float64


def test_value_gradient_and_prox_closed_forms() -> None:
    lam, a, t = 0.5, 3.7, 0.4
    w = torch.tensor([-2.5, -1.2, -0.6, -0.3, 0.0, 0.2, 0.5, 0.69, 1.0, 1.8, 3.0], dtype=DT)
    m = w.abs()
    value = torch.where(
        m <= lam,
        lam * m,
        torch.where(m <= a * lam, (2 * a * lam * m - m**2 - lam**2) / (2 * (a - 1)), lam**2 * (a + 1) / 2),
    )
    assert rt.SCAD(lam, a).value(w).item() == pytest.approx(float(value.sum()), rel=1e-14)
    slope = torch.where(m <= lam, lam, torch.where(m <= a * lam, (a * lam - m) / (a - 1), 0.0))
    torch.testing.assert_close(rt.SCAD(lam, a).grad(w)[0], torch.sign(w) * slope)
    x = w.clone()
    rt.SCAD(lam, a).prox(x, t)
    soft = torch.sign(w) * (m - t * lam).clamp(min=0)
    middle = ((a - 1) * w - torch.sign(w) * a * t * lam) / (a - 1 - t)
    expected = torch.where(m <= (1 + t) * lam, soft, torch.where(m <= a * lam, middle, w))
    torch.testing.assert_close(x, expected)
    assert rt.SCAD(1.0, 3.7).value(torch.tensor([0.5, 5.0])).item() == pytest.approx(2.85, rel=1e-6)


def test_prox_is_continuous_at_its_breakpoints() -> None:
    lam, a, t = 0.5, 3.7, 0.4
    for edge in ((1 + t) * lam, a * lam):
        pair = torch.tensor([edge - 1e-9, edge + 1e-9], dtype=DT)
        rt.SCAD(lam, a).prox(pair, t)
        assert abs(pair[0] - pair[1]) < 1e-6


@pytest.mark.parametrize("step", [2.7, 5.0])
def test_prox_refuses_steps_of_a_minus_one_or_more(step) -> None:
    with pytest.raises(ValueError, match=r"SCAD with a=3.7 needs a step t < a - 1 = 2.7 .* got t=" + f"{step:g}"):
        rt.SCAD(0.1, 3.7).prox(torch.ones(3), step)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"strength": -0.5}, ValueError, r"'strength' argument of SCAD must be a finite float >= 0; got -0.5"),
        ({"strength": 0.1, "a": 2.0}, ValueError, r"'a' argument of SCAD must be a finite float > 2; got 2.0"),
        ({"strength": 0.1, "a": None}, TypeError, r"'a' argument of SCAD .* got None of type NoneType"),
    ],
)
def test_bad_arguments(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        rt.SCAD(**kwargs)


def test_prox_mode_reaches_skglm_scad() -> None:
    from skglm import GeneralizedLinearEstimator
    from skglm.datafits import Quadratic
    from skglm.penalties import SCAD as SkglmSCAD
    from skglm.solvers import AndersonCD

    x, y = wine()
    lam_max = float(np.abs(x.T @ y).max() / len(x))
    alpha, a = 0.15 * lam_max, 12.0  # convex: a − 1 > 1/λ_min(XᵀX/n) ≈ 9.7
    ours = prox_gradient(x, y, rt.SCAD(alpha, a))
    solver = AndersonCD(tol=1e-14, max_iter=1000, fit_intercept=False)
    theirs = GeneralizedLinearEstimator(Quadratic(), SkglmSCAD(alpha, a), solver).fit(x, y).coef_
    assert 0 < int((theirs == 0).sum()) < len(theirs)
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(ours == 0, theirs == 0)
