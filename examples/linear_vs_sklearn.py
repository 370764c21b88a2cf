"""Lasso on scikit-learn's diabetes data: prox-mode SGD reaches scikit-learn's solution.

scikit-learn's ``Lasso(alpha)`` minimizes ``1/(2n)·‖y − Xw − b‖² + alpha·‖w‖₁``. The same
objective in regtorch is half the mean squared error plus ``L1(alpha)`` on the weight (not the
bias). Full-batch SGD with step ``1/L`` (``L`` the largest eigenvalue of ``XᵀX/n``) in prox mode
is ISTA, which converges to the lasso solution, zeros included.

Run: ``python examples/linear_vs_sklearn.py`` (a few seconds).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Lasso
from sklearn.preprocessing import StandardScaler

from regtorch import L1, Regularizer


def main(alpha: float = 1.0, steps: int = 3000) -> float:
    """Fit both and return the largest coefficient difference."""
    torch.set_num_threads(1)  # a 10-feature model: threads only add overhead
    x, y = load_diabetes(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    reference = Lasso(alpha=alpha, tol=1e-12, max_iter=100_000).fit(x, y)

    xt = torch.tensor(x)
    yt = torch.tensor(y).unsqueeze(1)
    model = torch.nn.Linear(x.shape[1], 1).double()
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    lipschitz = float(torch.linalg.eigvalsh(xt.T @ xt / len(xt)).max())
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0 / lipschitz)
    reg = Regularizer(model, L1(alpha), params="weight", mode="prox")
    reg.attach(optimizer)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = 0.5 * torch.nn.functional.mse_loss(model(xt), yt)
        loss.backward()
        optimizer.step()

    ours = model.weight.detach().numpy().ravel()
    gap = float(np.abs(ours - reference.coef_).max())
    print(f"{'feature':>8} {'regtorch':>12} {'sklearn':>12}")
    for i, (a, b) in enumerate(zip(ours, reference.coef_, strict=True)):
        print(f"{i:>8} {a:>12.6f} {b:>12.6f}")
    print(f"intercept: regtorch {model.bias.item():.6f}  sklearn {reference.intercept_:.6f}")
    print(f"exact zeros: regtorch {int((ours == 0).sum())}  sklearn {int((reference.coef_ == 0).sum())}")
    print(f"largest coefficient difference: {gap:.2e}")
    return gap


if __name__ == "__main__":
    difference = main()
    if difference > 1e-6:
        raise SystemExit(f"regtorch and scikit-learn differ by {difference:.2e}")
