"""GroupLasso(groups="coupled"): one group per coupled channel, across every parameter slice removed with it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import regtorch as rt
from regtorch.distributed._sharded import _group_term

pytest.importorskip("torch_pruning", reason="needs the 'prune' extra")

DT = torch.float64


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


class TinyResNet(nn.Module):
    """A stem, one residual block (the stream couples the stem with the block's second conv), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn, self.block, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), Block(8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.bn(self.stem(x)))).mean((2, 3)))


def _setup(mode: str = "prox", strength: float = 0.05, weights=None):
    torch.manual_seed(0)
    model = TinyResNet().to(DT)
    x = torch.randn(6, 3, 8, 8, dtype=DT)
    reg = rt.Regularizer(model, rt.GroupLasso(strength, "coupled", weights=weights), mode=mode, example_input=x)
    return model, x, reg


def _reference_value(reg: rt.Regularizer) -> torch.Tensor:
    """Σ_g c_g·sqrt(Σ over every member slice of g of its squared entries), written out."""
    (rule,) = reg.rules
    grouping = rule.penalty.grouping
    sumsq = torch.zeros(grouping.num_groups, dtype=DT)
    for member in grouping.members:
        param = rule.params[member.index]
        for i, g in enumerate(member.group_ids):
            if g >= 0:
                sumsq = sumsq.index_add(0, torch.tensor([g]), param.select(member.dim, i).pow(2).sum().reshape(1))
    return rule.penalty.strength * sumsq.sqrt().sum()


def test_the_groups_are_the_residual_streams_and_the_inner_channels() -> None:
    _, _, reg = _setup()
    (rule,) = reg.rules
    grouping = rule.penalty.grouping
    assert grouping.num_groups == 16  # 8 stream channels, 8 inner channels of the block
    members = {(rule.names[m.index], m.dim) for m in grouping.members}
    assert {("stem.weight", 0), ("stem.bias", 0), ("bn.weight", 0), ("bn.bias", 0), ("block.c2.weight", 0),
            ("block.c1.weight", 1), ("block.c1.weight", 0), ("block.c2.weight", 1), ("head.weight", 1)} <= members  # fmt: skip
    assert "head.bias" not in rule.names  # the model's outputs are never a group


def test_value_and_gradient_against_the_written_out_objective() -> None:
    _, _, reg = _setup(mode="loss")
    torch.testing.assert_close(reg.penalty(), _reference_value(reg), rtol=1e-12, atol=0)
    params = reg.rules[0].params
    expected = torch.autograd.grad(_reference_value(reg), params)
    got = torch.autograd.grad(reg.penalty(), params)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_sqrt_weights_use_every_slice_of_a_group() -> None:
    _, _, reg = _setup(mode="loss", weights="sqrt")
    grouping = reg.rules[0].penalty.grouping
    (sizes,) = grouping.sizes(reg.rules[0].params)
    # an inner channel: conv1 filter 72 + BN 2 + conv2 column 72; a stream channel: stem filter 27 +
    # bias 1 + BN 2 + conv2 filter 72 + BN 2 + conv1 column 72 + head column 4
    assert sorted(set(sizes.tolist())) == [146.0, 180.0]


def test_prox_zeroes_whole_coupled_groups_then_shrink_removes_them() -> None:
    model, x, reg = _setup(strength=0.3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg.attach(opt)
    y = torch.randint(0, 4, (6,))
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    (rule,) = reg.rules
    grouping = rule.penalty.grouping
    (sumsq,) = grouping.sumsq([p.detach() for p in rule.params], "reference")
    zero = sumsq == 0
    assert 0 < int(zero.sum()) < grouping.num_groups
    for member in grouping.members:  # every slice of a zero group is zero, and only those
        param = rule.params[member.index].detach()
        for i, g in enumerate(member.group_ids):
            if g >= 0 and zero[g]:
                assert torch.count_nonzero(param.select(member.dim, i)) == 0
    stats = reg.stats()
    assert stats.penalty == pytest.approx(float(reg.penalty()), rel=1e-12)
    assert all(p.penalty is None for p in stats.parameters)  # no per-parameter share of a coupled penalty
    model.eval()
    small, report = rt.shrink(model, example_input=x, return_report=True)
    assert report.removed_groups == int(zero.sum())
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-12)


def test_loss_and_grad_modes_make_the_same_updates() -> None:
    def run(mode: str) -> list[torch.Tensor]:
        model, x, reg = _setup(mode=mode, strength=0.1)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if mode == "grad":
            reg.attach(opt)
        for _ in range(3):
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            (loss + reg.penalty() if mode == "loss" else loss).backward()
            opt.step()
        return [p.detach() for p in model.parameters()]

    for a, b in zip(run("loss"), run("grad"), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_what_is_refused() -> None:
    model = TinyResNet()
    with pytest.raises(ValueError, match=r"finds the coupled channels by tracing the model once: pass .*example_input"):
        rt.Regularizer(model, rt.GroupLasso(0.1, "coupled"))
    with pytest.raises(ValueError, match=r"by tracing a model: build Regularizer\(model, penalty, example_input=x\)"):
        rt.GroupLasso(0.1, "coupled").value([torch.ones(2, 2)])
    _, x, reg = _setup()
    with pytest.raises(ValueError, match=r"groups indices across the shards of FSDP2 parameters"):
        _group_term(reg.rules[0].penalty)
    model, x, reg = _setup()
    groups = [{"params": [model.stem.weight], "lr": 0.1},
              {"params": [p for n, p in model.named_parameters() if n != "stem.weight"], "lr": 0.2}]  # fmt: skip
    opt = torch.optim.SGD(groups)
    reg.attach(opt)
    model(x).sum().backward()
    with pytest.raises(ValueError, match=r"spans parameter groups with different learning rates \[0.1, 0.2\]"):
        opt.step()
