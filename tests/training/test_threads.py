"""How many threads ``regtorch train`` picks, and the FLOP count it decides by."""

from __future__ import annotations

import re

import pytest
from torch import nn

from regtorch.training import TrainConfig, choose_threads
from regtorch.training._build import step_flops


def _mnist_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def test_step_flops_is_three_forwards_of_the_batch():
    weights = 784 * 64 + 64 * 32 + 32 * 10
    assert step_flops(_mnist_mlp(), (1, 28, 28), 10) == 3 * 2 * weights * 10


@pytest.mark.parametrize("batch_size, expected", [(10, 1), (128, 2)])
def test_small_steps_get_one_thread_larger_ones_every_core(monkeypatch, batch_size, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    cfg = TrainConfig(batch_size=batch_size)
    assert choose_threads(cfg, _mnist_mlp(), (1, 28, 28)) == expected


def test_one_core_or_an_explicit_choice_wins(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {3})
    assert choose_threads(TrainConfig(batch_size=4096), _mnist_mlp(), (1, 28, 28)) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert choose_threads(TrainConfig(batch_size=10, threads=3), _mnist_mlp(), (1, 28, 28)) == 3


def test_torchrun_processes_share_the_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert choose_threads(TrainConfig(batch_size=4096), _mnist_mlp(), (1, 28, 28)) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert choose_threads(TrainConfig(batch_size=4096), _mnist_mlp(), (1, 28, 28)) == 1


def test_threads_are_bounded_by_four_times_the_cores(monkeypatch):
    from regtorch.training import UsageError

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    TrainConfig(threads=8).validate()
    with pytest.raises(UsageError, match=r"--threads must be <= 8 \(4 x the 2 CPU cores here\); got 100000"):
        TrainConfig(threads=100_000).validate()


def test_local_world_size_must_be_a_positive_integer(monkeypatch):
    from regtorch.training import UsageError

    for bad in ("abc", "0", "-2", "1.5"):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", bad)
        with pytest.raises(UsageError, match=rf"LOCAL_WORLD_SIZE must be an integer >= 1; got '{re.escape(bad)}'"):
            choose_threads(TrainConfig(batch_size=4096), _mnist_mlp(), (1, 28, 28))
