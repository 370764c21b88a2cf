"""A real run on MNIST: group lasso in prox mode removes hidden neurons; shrink keeps accuracy.

Skipped when the shared MNIST copy (``../shared/datasets/mnist`` beside the repository) is absent.
A 784-256-128-10 MLP trains on the first 20,000 training images (SGD with momentum) for 3 epochs
with group lasso on the rows of its hidden layers in prox mode, then 2 epochs of masked
fine-tuning (``freeze_zeros``, linear learning-rate decay); the same MLP without the penalty trains
5 epochs with the same decay. Both are tested on all 10,000 test images. About 10-30 s on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import regtorch as rt

MNIST_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mnist"

pytestmark = pytest.mark.skipif(
    not (MNIST_DIR / "train-labels-idx1-ubyte.gz").exists(), reason=f"MNIST not found in {MNIST_DIR}"
)

N_TRAIN = 20_000
SPARSE_EPOCHS = 3
FINETUNE_EPOCHS = 2
HIDDEN = (256, 128)
STRENGTH = 0.06  # λ of GroupLasso (rows); prox step lr·λ per step


def _public(name: str, private_module: str):
    found = getattr(rt, name, None)
    if found is None:  # not yet re-exported
        import importlib

        found = getattr(importlib.import_module(private_module), name)
    return found


@pytest.fixture(scope="module")
def mnist():
    from regtorch.data import load_dataset

    ds = load_dataset("mnist", data_dir=MNIST_DIR)
    x, y = ds.x_train[:N_TRAIN].flatten(1), ds.y_train[:N_TRAIN]
    return x, y, ds.x_test.flatten(1), ds.y_test


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(784, HIDDEN[0]), nn.ReLU(), nn.Linear(*HIDDEN), nn.ReLU(), nn.Linear(HIDDEN[1], 10)
    )


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def _epochs(model: nn.Module, optimizer, x, y, epochs: int, generator, *, decay: bool) -> None:
    """Train; with ``decay`` the lr falls linearly to 0 over these epochs."""
    from regtorch.data import iterate_batches

    total = epochs * -(-len(x) // 128)
    base = optimizer.param_groups[0]["lr"]
    step = 0
    model.train()
    for _ in range(epochs):
        for idx in iterate_batches(len(x), 128, shuffle=True, generator=generator):
            if decay:
                optimizer.param_groups[0]["lr"] = base * (1 - step / total)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
            step += 1


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).double().mean())


def _hidden_neurons(model: nn.Sequential) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return sum(m.out_features for m in linears[:-1])


def test_group_lasso_prox_removes_a_third_of_hidden_neurons_and_shrink_keeps_accuracy(mnist) -> None:
    x, y, x_test, y_test = mnist
    torch.set_num_threads(min(torch.get_num_threads(), 2))

    dense = _mlp()
    _epochs(
        dense,
        _sgd(dense),
        x,
        y,
        SPARSE_EPOCHS + FINETUNE_EPOCHS,
        torch.Generator().manual_seed(0),
        decay=True,
    )
    dense_accuracy = _accuracy(dense, x_test, y_test)

    sparse = _mlp()
    generator = torch.Generator().manual_seed(0)
    optimizer = _sgd(sparse)
    # hidden layers only: a zero row of 0.weight / 2.weight is a dead hidden neuron
    reg = rt.Regularizer(
        sparse, rt.GroupLasso(STRENGTH, groups="rows"), params=["0.weight", "2.weight"], mode="prox"
    )
    with reg.attach(optimizer):
        _epochs(sparse, optimizer, x, y, SPARSE_EPOCHS, generator, decay=False)
    zero_groups = reg.stats().zero_groups
    optimizer = _sgd(sparse)
    with _public("freeze_zeros", "regtorch.sparse._freeze")(sparse, optimizer):
        _epochs(sparse, optimizer, x, y, FINETUNE_EPOCHS, generator, decay=True)
    sparse_accuracy = _accuracy(sparse, x_test, y_test)
    dead = sum(int((m.weight.detach().abs().sum(1) == 0).sum()) for m in (sparse[0], sparse[2]))
    total = sum(HIDDEN)

    assert dense_accuracy > 0.96
    assert dead == zero_groups  # the fine-tuning kept the dead neurons dead
    assert dead >= total / 3, f"only {dead} of {total} hidden neurons have all-zero weights"
    assert dense_accuracy - sparse_accuracy < 0.01, (dense_accuracy, sparse_accuracy)

    small = _public("shrink", "regtorch.sparse._shrink")(sparse)
    assert _hidden_neurons(small) <= total - dead
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in sparse.parameters())
    small.eval()
    with torch.no_grad():
        assert torch.allclose(small(x_test), sparse(x_test), rtol=1e-4, atol=1e-4)
    assert _accuracy(small, x_test, y_test) == sparse_accuracy
