"""The command line learns the penalties from the registry: every one trains with all its arguments."""

from __future__ import annotations

import csv

import pytest
from cli_helpers import FAST, read_json

import regtorch as rt
from registry_examples import registry_examples
from regtorch.training._penalty_spec import parse_spec, split_items

REGISTERED = [p for p in registry_examples() if p.name in rt.list_penalties()]


def _spec(penalty: rt.Penalty) -> str:
    config = penalty.get_config()
    return penalty.name.lower() + ":" + ",".join(f"{k}={v!r}" for k, v in config.items() if k != "name")


@pytest.mark.parametrize("penalty", REGISTERED, ids=repr)
def test_every_registered_penalty_trains_from_its_spec(cli, tmp_path, penalty) -> None:
    mode = "prox" if penalty.supports_prox else "grad"
    result = cli("train", *FAST, "--penalty", _spec(penalty), "--mode", mode, "--lr", "0.01",
                 "--log-every", "10", "--out", tmp_path)  # fmt: skip
    assert result.status == 0, result
    summary = read_json(tmp_path / "summary.json")
    assert summary["penalty_name"] == repr(penalty)
    keys = {name.lower() for name in penalty.parts()}
    assert keys <= set(summary["penalty_parts"])  # (an L1 or L2 alone shows both, as the tutorial)
    assert sum(summary["penalty_parts"].values()) == pytest.approx(summary["penalty"], rel=1e-9)
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert all(row[key] != "" for row in rows for key in keys)
    for name in penalty.parts():
        assert f" {name} loss" in result.out  # the tutorial's line names the parts as the penalty does


def test_spec_items_respect_brackets_and_quotes() -> None:
    assert split_items("groups=[[0,1],[2]],weights='a,b',dim=-1") == ["groups=[[0,1],[2]]", "weights='a,b'", "dim=-1"]
    spec = parse_spec("GroupLasso:strength=0.1,groups=[[0,1],[2,3]],weights=sqrt")
    assert spec.build() == rt.GroupLasso(0.1, groups=[[0, 1], [2, 3]], weights="sqrt")
    assert parse_spec("mcp:strength=3e-3,gamma=3").build() == rt.MCP(3e-3, gamma=3.0)


def test_a_bare_name_takes_the_strength_option(cli, tmp_path) -> None:
    result = cli("train", *FAST, "--penalty", "scad", "--strength", "2e-3", "--out", tmp_path)
    assert result.status == 0, result
    assert read_json(tmp_path / "summary.json")["penalty_name"] == repr(rt.SCAD(2e-3))


def test_compare_takes_the_same_specs_with_a_mode(cli, tmp_path) -> None:
    result = cli("compare", "mcp:prox,strength=3e-3,gamma=3", "scad,strength=1e-3",
                 "elasticnet:prox,l1=1e-3,l2=1e-4", *FAST, "--out", tmp_path)  # fmt: skip
    assert result.status == 0, result
    with (tmp_path / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["penalty_name"], r["mode"]) for r in rows] == [
        ("MCP(strength=0.003, gamma=3.0)", "prox"),
        ("SCAD(strength=0.001, a=3.7)", "loss"),
        ("ElasticNet(l1=0.001, l2=0.0001)", "prox"),
    ]


def test_path_of_mcp_rebuilds_the_penalty_at_each_strength(cli, tmp_path) -> None:
    result = cli("path", "--penalty", "mcp:strength=1,gamma=4", "--mode", "prox", "--steps", "3",
                 "--hidden", "16,8", "--epochs", "1", "--no-plots", "--out", tmp_path)  # fmt: skip
    assert result.status == 0, result
    with (tmp_path / "path.csv").open() as f:
        rows = list(csv.DictReader(f))
    strengths = [float(r["strength"]) for r in rows]
    assert len(rows) == 3 and strengths == sorted(strengths, reverse=True)
    zeros = [float(r["zero_fraction"]) for r in rows]
    assert zeros[0] >= zeros[-1]  # the strongest penalty leaves the most exact zeros
