"""Parameter selection: defaults, patterns, types, predicates, tensors, exclusion, ties, frozen."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import regtorch as rt


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc1 = nn.Linear(8, 4)
        self.ln = nn.LayerNorm(4)
        self.fc2 = nn.Linear(4, 8)
        self.emb = nn.Embedding(5, 8)
        self.head = nn.Linear(8, 5, bias=False)
        self.head.weight = self.emb.weight  # tied


def _names(model, params="weights", **kw):
    return [n for n, _ in rt.select_parameters(model, params, **kw)]


def test_default_weights_skip_bias_and_norm_layers() -> None:
    assert _names(Net()) == ["conv.weight", "fc1.weight", "fc2.weight", "emb.weight"]


def test_all_patterns_types_predicates_tensors_and_lists() -> None:
    net = Net()
    assert len(_names(net, "all")) == 11  # tied weight counted once
    assert _names(net, "fc*.bias") == ["fc1.bias", "fc2.bias"]
    assert _names(net, "fc1.weight") == ["fc1.weight"]
    assert _names(net, nn.Linear) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert _names(net, lambda name, p: p.ndim == 4) == ["conv.weight"]
    assert _names(net, [net.fc2.weight, "conv.*"]) == ["conv.weight", "conv.bias", "fc2.weight"]
    assert _names(net, "all", exclude=["*.bias", nn.BatchNorm2d]) == [
        "conv.weight",
        "fc1.weight",
        "ln.weight",
        "fc2.weight",
        "emb.weight",
    ]


def test_frozen_parameters_are_skipped() -> None:
    net = Net()
    net.fc1.weight.requires_grad_(False)
    assert "fc1.weight" not in _names(net)
    assert _names(net, [net.fc1.weight, "fc2.weight"]) == ["fc2.weight"]
    for p in net.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="selects none"):
        rt.select_parameters(net)


def test_selection_never_mutates_requires_grad() -> None:
    net = Net()
    before = [p.requires_grad for p in net.parameters()]
    rt.Regularizer(net, rt.L1(0.1))
    assert before == [p.requires_grad for p in net.parameters()]


def test_bad_selection_kinds() -> None:
    with pytest.raises(TypeError, match=r"accepts module types .* got the type int"):
        rt.select_parameters(Net(), int)
    with pytest.raises(ValueError, match=r"got 'nothing\*' \(excluding '\*'\), which selects none"):
        rt.select_parameters(Net(), "nothing*", exclude="*")
    with pytest.raises(ValueError, match="not a trainable parameter of the model"):
        rt.select_parameters(Net(), [torch.ones(3)])


def test_integer_tensor_is_not_a_parameter() -> None:
    with pytest.raises(ValueError, match="not a trainable parameter"):
        rt.select_parameters(Net(), torch.ones(3, dtype=torch.int64))
