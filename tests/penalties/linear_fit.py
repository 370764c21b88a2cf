"""Full-batch proximal gradient on a linear model through regtorch, and the data it is checked on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

import regtorch as rt


def wine() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's wine data, standardised, the class as a centred target.

    A real, well-conditioned design: the smallest eigenvalue of ``XᵀX/n`` is about 0.10, so the
    MCP objective is convex for γ > 9.7 and the SCAD one for a > 10.7 (a unique solution).
    """
    from sklearn.datasets import load_wine

    data = load_wine()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    y = data.target.astype(np.float64)
    return x, y - y.mean()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny problems on one thread: a second one only adds synchronisation (and, on a busy
    machine, waits for a core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def prox_gradient(
    x: np.ndarray, y: np.ndarray, penalty: rt.Penalty, *, steps: int = 20000, mode: str = "prox"
) -> np.ndarray:
    """Minimise ``1/(2n)‖y − Xw‖² + R(w)`` with SGD on the full batch and regtorch's prox mode.

    The step is ``1/L`` with ``L`` the largest eigenvalue of ``XᵀX/n``; returns ``w``.
    """
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model = torch.nn.Linear(x.shape[1], 1, bias=False).double()
    torch.nn.init.zeros_(model.weight)
    lipschitz = float(np.linalg.eigvalsh(x.T @ x / len(x)).max())
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0 / lipschitz)
    rt.regularize(model, optimizer, penalty, mode=mode)
    with one_thread():
        for _ in range(steps):
            optimizer.zero_grad()
            (0.5 * (model(xt).squeeze(1) - yt).pow(2).mean()).backward()
            optimizer.step()
    return model.weight.detach().numpy().ravel()
