"""FSDP2 (``fully_shard``, DTensor parameters) on 2 CPU processes (gloo) against one process.

Two worker processes are started once for the module (:func:`_dist_cases.launch`, bounded in time);
they train every case of :data:`_dist_cases.CASES` on their half of the global batch and check
single penalties on weights FSDP2 splits unevenly or across groups. Each test compares one case with
a single process training the whole batch.
"""

from __future__ import annotations

import math

import pytest
import torch
from _dist_cases import CASES, LAYOUTS, SINGLE, global_batch, make_model, single, train, weight

import regtorch as rt

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

TIMEOUT_S = 240  # both ranks, every case; a hang fails the module instead of blocking it
TOL = dict(rtol=0.0, atol=1e-9)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    from _dist_cases import launch

    results, _ = launch("fsdp", tmp_path_factory.mktemp("fsdp"), TIMEOUT_S)
    return results


def _ok(result):
    if "error" in result:
        pytest.fail("a worker failed:\n" + result["error"])
    return result


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
        got = _ok(rank["cases"][case])
        for name, param in want["params"].items():
            torch.testing.assert_close(got["params"][name], param, **TOL, msg=name)
        assert got["penalties"] == pytest.approx(want["penalties"], rel=1e-9, abs=1e-12)
        assert got["final_penalty"] == pytest.approx(want["final_penalty"], rel=1e-9, abs=1e-12)
        _same_stats(got["stats"], want["stats"])
        _same_stats(got["sparsity"], want["sparsity"])
    assert ranks[0]["cases"][case]["stats"] == ranks[1]["cases"][case]["stats"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", list(SINGLE))
def test_sharded_weight_equals_full_weight(ranks, layout, name) -> None:
    """Value, gradient, prox and group norms on a split weight, including groups that span ranks."""
    want = single(weight(layout), name)
    for rank in ranks:
        got = _ok(rank["single"][layout, name])
        assert got.keys() == want.keys()
        assert got["value"] == pytest.approx(want["value"], rel=1e-12)
        for key in ("grad", "prox", "norms"):
            if key in want:
                torch.testing.assert_close(got[key], want[key], **TOL, msg=key)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_group_prox_zeroes_the_same_groups(ranks, layout) -> None:
    for groups in ("rows", "columns"):
        want = single(weight(layout), f"GroupLasso-{groups}")["prox"]
        dim = 1 if groups == "rows" else 0
        zero = (want == 0).all(dim=dim)
        if layout != "one-row":
            assert zero.any() and not zero.all()  # the small row or column, not the others
        for rank in ranks:
            got = rank["single"][layout, f"GroupLasso-{groups}"]["prox"]
            assert torch.equal((got == 0).all(dim=dim), zero)


# all-reduces of the grad- and prox-mode hooks: only for group norms spanning ranks (columns of a
# weight split by rows), one per rule that has them; element-wise penalties and rows need none
HOOK_ALL_REDUCES = {
    "L1": 0,
    "L2": 0,
    "ElasticNet": 0,
    "GroupLasso-rows": 0,
    "GroupLasso-columns": 1,
    "SparseGroupLasso": 1,
    "Half-SparseGroupLasso": 1,
    "Rules": 1,
}


@pytest.mark.parametrize("name", list(HOOK_ALL_REDUCES))
def test_communication(ranks, name) -> None:
    """penalty(): one all-reduce and no gather; its backward: none (it reuses the forward's norms)."""
    for rank in ranks:
        counts = _ok(rank["communication"][name])
        assert counts["penalty"] == (1, 0)
        assert counts["backward"] == (0, 0)
        assert counts["grad"] == counts["prox"] == (HOOK_ALL_REDUCES[name], 0)


def test_a_regularizer_built_before_fully_shard_is_refused(ranks) -> None:
    for rank in ranks:
        assert "Build the Regularizer (and the optimizer) after fully_shard" in rank["stale"]


def test_layouts_are_the_ones_tested(ranks) -> None:
    """FSDP2 splits Linear(6→5) rows 3/2 and Linear(5→3) rows 2/1: uneven shards are covered."""
    shards = {name: shape for name, (_, shape) in ranks[0]["layouts"].items()}
    assert shards["0.weight"] == (3, 6)
    assert {name: shape for name, (_, shape) in ranks[1]["layouts"].items()}["0.weight"] == (2, 6)


def test_a_dead_rank_gives_an_error_not_a_hang(ranks) -> None:
    dead = ranks[0]["dead_rank"]
    assert dead["outcome"] != "no error"
    assert dead["seconds"] < 30


def test_plain_tensors_never_reach_the_sharded_path() -> None:
    """Without DTensors the single-process code runs, whatever torch.distributed modules are loaded."""
    import torch.distributed.tensor  # noqa: F401  (makes DTensor detection look at every tensor)

    model = make_model()
    reg = rt.Regularizer(model, rt.GroupLasso(0.1, "columns"))
    assert not reg.sharded
    want = sum(0.1 * p.detach().norm(dim=0).sum() for p in (model[0].weight, model[2].weight))
    assert reg.penalty().item() == pytest.approx(float(want), rel=1e-12)
