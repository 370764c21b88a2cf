"""DistributedDataParallel on 2 CPU processes (gloo) against one process on the global batch.

DDP averages gradients during ``backward()``: a loss-mode penalty, identical on every rank, is
averaged into itself (added once); grad-mode hooks run in ``optimizer.step()``, after the
all-reduce; prox-mode hooks act on identical parameters. The two workers start once for the module.
"""

from __future__ import annotations

import math

import pytest
import torch
from _dist_cases import CASES, global_batch, make_model, train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

TIMEOUT_S = 180
TOL = dict(rtol=0.0, atol=1e-9)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    from _dist_cases import launch

    results, _ = launch("ddp", tmp_path_factory.mktemp("ddp"), TIMEOUT_S)
    return results


def _same_stats(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key == "parameters":
            for g, w in zip(got[key], value, strict=True):
                _same_stats(g, w)
        elif isinstance(value, float):
            assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-12), key
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("case", CASES)
def test_training_equals_one_process(ranks, case) -> None:
    x, y = global_batch()
    want = train(make_model(), case, x, y)
    for rank in ranks:
        got = rank["cases"][case]
        if "error" in got:
            pytest.fail("a worker failed:\n" + got["error"])
        for name, param in want["params"].items():
            torch.testing.assert_close(got["params"][name], param, **TOL, msg=name)
        assert got["penalties"] == pytest.approx(want["penalties"], rel=1e-9, abs=1e-12)
        assert got["final_penalty"] == pytest.approx(want["final_penalty"], rel=1e-9, abs=1e-12)
        _same_stats(got["stats"], want["stats"])
        _same_stats(got["sparsity"], want["sparsity"])
    assert ranks[0]["cases"][case]["stats"] == ranks[1]["cases"][case]["stats"]
