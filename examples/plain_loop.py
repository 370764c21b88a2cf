"""The three modes in a plain PyTorch loop: an MLP on scikit-learn's 8×8 digits.

* ``loss``: add ``reg.penalty()`` to the loss;
* ``grad``: ``reg.attach(optimizer)`` adds the penalty's (sub)gradient before each step;
* ``prox``: ``reg.attach(optimizer)`` applies the proximal operator after each step — the only
  mode where L1 gives exact zeros. (With momentum the data term moves the weights about
  1/(1 − momentum) times further per step than the prox shrinks them, so the same λ regularizes
  less in prox mode than in loss mode; compare strengths within a mode.)

Run: ``python examples/plain_loop.py`` (a few seconds).
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn

from regtorch import L1, Regularizer


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    return x[train], y[train], x[test], y[test]


def train(mode: str, strength: float = 3e-3, epochs: int = 15) -> dict[str, float]:
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = data()
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    reg = Regularizer(model, L1(strength), mode=mode)  # weights only: biases are left alone
    if mode in ("grad", "prox"):
        reg.attach(optimizer)
    for _ in range(epochs):
        for batch in torch.randperm(len(x_train)).split(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            if mode == "loss":
                loss = loss + reg.penalty()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    stats = reg.stats()
    return {
        "accuracy": accuracy,
        "penalty": float(reg.penalty().detach()),
        "zero_fraction": stats.zero_fraction,
    }


def main() -> dict[str, dict[str, float]]:
    torch.set_num_threads(1)  # a small MLP: threads only add overhead
    results = {mode: train(mode) for mode in ("loss", "grad", "prox")}
    print(f"{'mode':<6} {'accuracy':>9} {'penalty':>9} {'exact zeros':>12}")
    for mode, r in results.items():
        print(f"{mode:<6} {r['accuracy']:>9.3f} {r['penalty']:>9.4f} {100 * r['zero_fraction']:>11.1f}%")
    return results


if __name__ == "__main__":
    outcome = main()
    if outcome["prox"]["zero_fraction"] <= outcome["loss"]["zero_fraction"]:
        raise SystemExit("prox mode should give more exact zeros than loss mode")
