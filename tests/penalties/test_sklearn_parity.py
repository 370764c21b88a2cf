"""Prox mode with full-batch SGD reaches scikit-learn's solutions on real data sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from linear_fit import one_thread
from torch import nn

import regtorch as rt

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_breast_cancer, load_diabetes  # noqa: E402
from sklearn.linear_model import ElasticNet, Lasso, LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

DT = torch.float64


def _fit_prox(x, y, penalty, loss_fn, lr, steps, out_features=1):
    model = nn.Linear(x.shape[1], out_features).to(DT)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rt.regularize(model, opt, penalty, mode="prox")  # the weight only: the intercept is free
    with one_thread():
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(model(x).squeeze(-1), y).backward()
            opt.step()
    return model


def _diabetes():
    data = load_diabetes()
    x = StandardScaler().fit_transform(data.data)
    return x, data.target


def _half_mse(pred, target):
    return 0.5 * ((pred - target) ** 2).mean()


def _lipschitz(x: np.ndarray) -> float:
    augmented = np.hstack([x, np.ones((x.shape[0], 1))])
    return float(np.linalg.eigvalsh(augmented.T @ augmented / x.shape[0]).max())


@pytest.mark.parametrize(
    ("make_sklearn", "make_ours"),
    [
        (lambda: Lasso(alpha=2.0, tol=1e-14, max_iter=200_000), lambda: rt.L1(2.0)),
        (
            lambda: ElasticNet(alpha=3.0, l1_ratio=0.7, tol=1e-14, max_iter=200_000),
            lambda: rt.ElasticNet.from_sklearn(alpha=3.0, l1_ratio=0.7),
        ),
    ],
    ids=["lasso", "elastic-net"],
)
def test_prox_sgd_reaches_sklearn_coefficients_on_diabetes(make_sklearn, make_ours) -> None:
    x, y = _diabetes()
    reference = make_sklearn().fit(x, y)
    model = _fit_prox(
        torch.tensor(x), torch.tensor(y), make_ours(), _half_mse, lr=1 / _lipschitz(x), steps=8_000
    )
    ours = model.weight.detach().numpy().ravel()
    np.testing.assert_allclose(ours, reference.coef_, atol=1e-6)
    assert np.array_equal(ours == 0, reference.coef_ == 0)
    assert (reference.coef_ == 0).any()  # the test is about sparsity: some coefficients are zero
    assert model.bias.item() == pytest.approx(reference.intercept_, abs=1e-6)


def test_logistic_elastic_net_matches_sklearn_saga() -> None:
    data = load_breast_cancer()
    x = StandardScaler().fit_transform(data.data)
    y = data.target.astype(float)
    n = x.shape[0]
    c, ratio = 0.05, 0.6
    reference = LogisticRegression(C=c, l1_ratio=ratio, solver="saga", tol=1e-12, max_iter=200_000).fit(x, y)
    # scikit-learn minimizes C·Σ logloss + ρ‖w‖₁ + ½(1 − ρ)‖w‖²; divide by C·n for a mean loss
    penalty = rt.ElasticNet(l1=ratio / (c * n), l2=(1 - ratio) / (2 * c * n))
    model = _fit_prox(
        torch.tensor(x),
        torch.tensor(y),
        penalty,
        nn.functional.binary_cross_entropy_with_logits,
        lr=4 / _lipschitz(x),
        steps=20_000,
    )
    ours = model.weight.detach().numpy().ravel()
    np.testing.assert_allclose(ours, reference.coef_.ravel(), atol=1e-4)
    assert np.array_equal(ours == 0, reference.coef_.ravel() == 0)
    assert (ours == 0).sum() >= 5
