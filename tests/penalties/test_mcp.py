"""MCP against its closed forms and against skglm's solution of the same regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from linear_fit import prox_gradient, wine

import regtorch as rt

DT = torch.float64


def test_value_gradient_and_prox_closed_forms() -> None:
    lam, gamma, t = 0.5, 3.0, 0.4
    w = torch.tensor([-2.0, -1.5, -0.7, -0.2, 0.0, 0.1, 0.3, 1.0, 1.5, 4.0], dtype=DT)
    a = w.abs()
    inner = a <= gamma * lam
    r = torch.where(inner, lam * a - a**2 / (2 * gamma), torch.full_like(a, gamma * lam**2 / 2))
    assert rt.MCP(lam, gamma).value(w).item() == pytest.approx(float(r.sum()), rel=1e-14)
    slope = torch.where(inner, torch.sign(w) * (lam - a / gamma), torch.zeros_like(w))
    torch.testing.assert_close(rt.MCP(lam, gamma).grad(w)[0], slope)
    x = w.clone()
    rt.MCP(lam, gamma).prox(x, t)
    firm = torch.sign(w) * (a - t * lam) / (1 - t / gamma)
    expected = torch.where(a <= t * lam, torch.zeros_like(w), torch.where(inner, firm, w))
    torch.testing.assert_close(x, expected)
    assert x[4] == 0 and x[3] == 0 and x[-1] == w[-1]  # thresholded, and untouched beyond γλ
    assert rt.MCP(1.0, 3.0).value(torch.tensor([0.5, 5.0])).item() == pytest.approx(1.958333, rel=1e-6)


def test_prox_is_continuous_at_gamma_lambda() -> None:
    lam, gamma, t = 0.5, 3.0, 0.4
    edge = torch.tensor([gamma * lam - 1e-9, gamma * lam + 1e-9], dtype=DT)
    rt.MCP(lam, gamma).prox(edge, t)
    assert abs(edge[0] - edge[1]) < 1e-6


@pytest.mark.parametrize("step", [3.0, 4.5])
def test_prox_refuses_steps_of_gamma_or_more(step) -> None:
    with pytest.raises(ValueError, match=r"MCP with gamma=3 needs a step t < gamma .* got t=" + f"{step:g}"):
        rt.MCP(0.1, 3.0).prox(torch.ones(3), step)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"strength": -1.0}, ValueError, r"'strength' argument of MCP must be a finite float >= 0; got -1"),
        ({"strength": 0.1, "gamma": 1.0}, ValueError, r"'gamma' argument of MCP must be a finite float > 1"),
        ({"strength": 0.1, "gamma": "3"}, TypeError, r"'gamma' argument of MCP .* got '3' of type str"),
    ],
)
def test_bad_arguments(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        rt.MCP(**kwargs)


def test_prox_mode_reaches_skglm_mcp_regression() -> None:
    from skglm import MCPRegression

    x, y = wine()
    lam_max = float(np.abs(x.T @ y).max() / len(x))
    alpha, gamma = 0.15 * lam_max, 12.0  # convex: γ > 1/λ_min(XᵀX/n) ≈ 9.7
    ours = prox_gradient(x, y, rt.MCP(alpha, gamma))
    theirs = MCPRegression(alpha=alpha, gamma=gamma, fit_intercept=False, tol=1e-14, max_iter=1000).fit(x, y).coef_
    assert 0 < int((theirs == 0).sum()) < len(theirs)  # a sparse solution, not a trivial one
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(ours == 0, theirs == 0)


def test_adam_metric_prox_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match=r"prox_metric.*adam.*MCP"):
        rt.Regularizer(torch.nn.Linear(3, 2), rt.MCP(0.1), mode="prox", prox_metric="adam")
