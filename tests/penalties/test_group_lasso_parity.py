"""Group lasso against skglm's GroupLasso and scikit-learn's MultiTaskLasso: the same objectives.

* skglm ``GroupLasso(groups, alpha, weights)``: ``1/(2n)‖y − Xw‖² + α Σ_g c_g‖w_g‖`` is regtorch's
  ``GroupLasso(α, groups=..., weights=c)`` on a ``Linear(p, 1)`` with half the mean squared error;
  ``weights="sqrt"`` is the ``group-lasso`` package's default ``scale_reg="group_size"``.
* scikit-learn ``MultiTaskLasso(alpha)``: ``1/(2n)‖Y − XW‖²_F + α Σ_j ‖W_j‖`` (one group per
  feature across tasks) is ``GroupLasso(α, groups="columns")`` on a ``Linear(p, k)`` with the squared
  error summed over tasks, halved and averaged over samples.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from linear_fit import one_thread, prox_gradient, wine

import regtorch as rt

GROUPS = [[0, 1, 2], [3, 4, 5, 6], [7, 8], [9, 10, 11, 12]]


@pytest.mark.parametrize("weights", [None, "sqrt"])
def test_explicit_groups_reach_skglm_group_lasso(weights) -> None:
    from skglm import GroupLasso as SkglmGroupLasso

    x, y = wine()
    sizes = np.array([len(g) for g in GROUPS], dtype=float)
    c = np.ones(len(GROUPS)) if weights is None else np.sqrt(sizes)
    dual = max(np.linalg.norm(x[:, g].T @ y) / len(x) / cg for g, cg in zip(GROUPS, c, strict=True))
    alpha = 0.3 * dual
    ours = prox_gradient(x, y, rt.GroupLasso(alpha, groups=GROUPS, weights=weights), steps=6000)
    skglm_groups = [list(g) for g in GROUPS]
    theirs = SkglmGroupLasso(skglm_groups, alpha=alpha, weights=c, fit_intercept=False, tol=1e-14).fit(x, y).coef_
    zero_groups = [bool(np.all(theirs[g] == 0)) for g in GROUPS]
    assert any(zero_groups) and not all(zero_groups)
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
    assert [bool(np.all(ours[g] == 0)) for g in GROUPS] == zero_groups


def test_columns_reach_sklearn_multitask_lasso() -> None:
    from sklearn.datasets import load_wine
    from sklearn.linear_model import MultiTaskLasso

    x, _ = wine()
    target = load_wine().target
    y = np.eye(3)[target] - np.eye(3)[target].mean(0)
    alpha = 0.2 * max(np.linalg.norm(x.T @ y, axis=1)) / len(x)
    theirs = MultiTaskLasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=100000).fit(x, y).coef_
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model = torch.nn.Linear(13, 3, bias=False).double()
    torch.nn.init.zeros_(model.weight)
    lipschitz = float(np.linalg.eigvalsh(x.T @ x / len(x)).max())
    optimizer = torch.optim.SGD(model.parameters(), lr=1 / lipschitz)
    rt.regularize(model, optimizer, rt.GroupLasso(alpha, groups="columns"), mode="prox")
    with one_thread():
        for _ in range(6000):
            optimizer.zero_grad()
            (0.5 * (model(xt) - yt).pow(2).sum(1).mean()).backward()
            optimizer.step()
    ours = model.weight.detach().numpy()
    features_kept = np.any(theirs != 0, axis=0)
    assert 0 < features_kept.sum() < 13
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(np.any(ours != 0, axis=0), features_kept)


def test_sqrt_weights_are_the_square_root_of_the_group_sizes() -> None:
    w = torch.ones(2, 5, dtype=torch.float64)
    penalty = rt.GroupLasso(1.0, groups=[[0, 1, 2, 3], [4]], weights="sqrt")
    # each row holds the two groups: √4·‖(1,1,1,1)‖ + √1·‖1‖ = 2·2 + 1
    assert penalty.value(w).item() == pytest.approx(2 * (2 * 2 + 1))
    rows = rt.GroupLasso(1.0, groups="rows", weights="sqrt")
    assert rows.value(w).item() == pytest.approx(2 * math.sqrt(5) * math.sqrt(5))


def test_explicit_group_ids_and_unpenalised_indices() -> None:
    w = torch.tensor([[3.0, 4.0, 100.0, 1.0]], dtype=torch.float64)
    as_lists = rt.GroupLasso(1.0, groups=[[0, 1], [3]])
    as_ids = rt.GroupLasso(1.0, groups=torch.tensor([0, 0, -1, 1]))
    assert as_lists == as_ids  # index 2 is in no group: not penalised
    assert as_lists.value(w).item() == pytest.approx(5 + 1)
    x = w.clone()
    as_lists.prox(x, 1.0)
    torch.testing.assert_close(x, torch.tensor([[2.4, 3.2, 100.0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"groups": [[0, 1], [1, 2]]}, ValueError, r"puts index 1 in groups 0 and 1"),
        ({"groups": [[0], [-1]]}, ValueError, r"lists of indices >= 0; got -1"),
        ({"groups": torch.tensor([0.5, 1.0])}, TypeError, r"1-D integer tensor of group ids"),
        ({"groups": "rows", "weights": [1.0, 2.0]}, ValueError, r"one weight per group only with explicit"),
        ({"groups": [[0], [1]], "weights": [1.0]}, ValueError, r"one weight per group: 2 groups; got 1"),
        ({"groups": [[0], [1]], "weights": "log"}, ValueError, r"None, 'sqrt' or a sequence"),
        ({"groups": "rows", "dim": 1}, ValueError, r"'dim' argument of GroupLasso goes with explicit groups"),
    ],
)
def test_bad_groups_and_weights(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        rt.GroupLasso(0.1, **kwargs)


@pytest.mark.parametrize(
    ("groups", "shape", "match"),
    [
        ("filters", (10, 4), r"groups='filters'\) groups a convolution weight; parameter 'fc.weight' has shape \(10, 4\)"),
        ("channels", (10, 4), r"groups='channels'\)"),
        ("rows", (4,), r"groups='rows'\) groups a matrix .*parameter 'fc.weight' has shape \(4,\)"),
        ([[0, 1, 2, 3, 4, 5]], (2, 4), r"explicit groups over 6 indices of dimension -1 do not fit parameter 'fc.weight'"),
    ],
)
def test_groups_that_do_not_fit_a_parameter_are_refused_by_name(groups, shape, match) -> None:
    with pytest.raises(ValueError, match=match):
        rt.GroupLasso(0.1, groups=groups).check_tensor("fc.weight", torch.ones(shape))


def test_filters_on_a_linear_classifier_are_refused_by_the_regularizer() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 2))
    with pytest.raises(ValueError, match=r"parameter '2.weight' has shape \(2, 64\)\. Leave it out"):
        rt.Regularizer(model, rt.GroupLasso(0.1, groups="filters"))
    rt.Regularizer(model, rt.GroupLasso(0.1, groups="filters"), params="0.weight")
