"""shrink's dependency-graph path: all-zero coupled groups go, outputs stay, kept groups say why."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning", reason="needs the 'prune' extra")

from sparse_models import BasicBlock

from regtorch import shrink, shrink_report
from regtorch.sparse._dependency import CoupledGroups, coupled_groups


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def zero_groups(model: nn.Module, groups: CoupledGroups, chosen: list[int], only: str | None = None) -> None:
    """Write zeros into every slice of the chosen groups (or only into parameters named ``only``)."""
    params = dict(model.named_parameters())
    flags = torch.zeros(groups.num_groups, dtype=torch.bool)
    flags[chosen] = True
    with torch.no_grad():
        for member in groups.members:
            if only is not None and member.name != only:
                continue
            hit = (member.group_ids >= 0) & flags[member.group_ids.clamp(min=0)]
            params[member.name].index_fill_(member.dim, hit.nonzero().flatten(), 0.0)


def randomize_bn(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
                module.bias.normal_()


def resnet() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), BasicBlock(6, 5), BasicBlock(6, 4),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    ).double()  # fmt: skip
    randomize_bn(model)
    return model.eval()


X = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_residual_groups_are_removed_with_equal_outputs() -> None:
    model = resnet()
    groups = coupled_groups(model, X)
    assert groups.num_groups == 6 + 5 + 4
    stream, inner = [1, 4], [6 + 2]  # two channels of the residual stream, one unit inside block 3
    zero_groups(model, groups, stream + inner)
    expected = model(X)
    small, report = shrink(model, example_input=X, return_report=True)
    assert report.method == "graph" and report.removed_groups == 3 and report.kept_groups == []
    assert small[0].out_channels == 4 and small[1].num_features == 4 and small[7].in_features == 4
    assert small[3].conv1.in_channels == 4 and small[3].conv1.out_channels == 4
    assert small[3].conv2.out_channels == 4 and small[4].bn2.num_features == 4
    assert small[1].running_mean.shape == (4,)
    # a stream channel: stem filter (27) + BN (2) + per block conv1 input (inner*9) + conv2 filter
    # (inner*9) + bn2 (2), + the classifier's column (3); an inner unit: 6*9 + 2 + 6*9
    stream_size = 27 + 2 + (5 * 9 * 2 + 2) + (4 * 9 * 2 + 2) + 3
    overlap = 2 * 9  # the inner unit's conv1 row and conv2 column each cross the two stream channels
    assert n_params(model) - n_params(small) == 2 * stream_size + (6 * 9 + 2 + 6 * 9) - 2 * overlap
    assert report.params_before == n_params(model) and report.params_after == n_params(small)
    torch.testing.assert_close(small(X), expected, atol=1e-12, rtol=0)
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-12
    assert [row.name for row in report.layers][:2] == ["0", "1"]
    assert report.layers[0].removed == (1, 4)
    assert "coupled groups (dependency graph): 3 all zero, 3 removed, 0 kept" in report.format()


def test_a_family_that_is_zero_everywhere_keeps_one_group() -> None:
    model = resnet()
    groups = coupled_groups(model, X)
    inner = list(range(6, 6 + 5))  # every unit inside block 3
    zero_groups(model, groups, inner)
    expected = model(X)
    with pytest.warns(UserWarning, match="shrink kept 1 all-zero coupled group"):
        small, report = shrink(model, example_input=X, return_report=True)
    assert report.removed_groups == 4
    assert [g.reason for g in report.kept_groups] == [
        "kept so that its layers keep one channel (every group of its family is zero)"
    ]
    assert small[3].conv1.out_channels == 1
    torch.testing.assert_close(small(X), expected, atol=1e-12, rtol=0)


def test_report_leaves_the_model_alone_and_inplace_changes_it() -> None:
    model = resnet()
    groups = coupled_groups(model, X)
    zero_groups(model, groups, [0])
    before = n_params(model)
    report = shrink_report(model, example_input=X)
    assert n_params(model) == before and report.params_after < before
    result = shrink(model, example_input=X, inplace=True)
    assert result is model and n_params(model) == report.params_after


def test_partly_zero_groups_are_kept_and_counted() -> None:
    model = resnet()
    groups = coupled_groups(model, X)
    zero_groups(model, groups, [2, 3], only="0.weight")  # stem filters only: BN and blocks still use them
    small, report = shrink(model, example_input=X, return_report=True)
    assert n_params(small) == n_params(model) and report.groups == []
    assert any("2 coupled groups are zero only in part" in note and "0 out 2" in note for note in report.notes)


class Normed(nn.Module):
    """A residual MLP whose stream passes through a LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.head(self.norm(h + self.fc2(torch.relu(h))))


def test_zero_groups_under_a_layernorm_are_kept_with_the_reason() -> None:
    torch.manual_seed(0)
    model = Normed().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    groups = coupled_groups(model, x, include_blocked=True)
    zero_groups(model, groups, [0, 1])
    with pytest.warns(UserWarning, match=r"shrink kept 2 all-zero coupled group\(s\), e.g. 'fc1 out 0': a LayerNorm"):
        small, report = shrink(model, example_input=x, return_report=True)
    assert n_params(small) == n_params(model)
    assert [(g.label, g.removed, g.reason) for g in report.groups] == [
        ("fc1 out 0", False, "a LayerNorm normalises over it ('norm')"),
        ("fc1 out 1", False, "a LayerNorm normalises over it ('norm')"),
    ]
    assert "a LayerNorm normalises over it ('norm'): fc1 out 0, fc1 out 1" in report.format()


class MeanOverChannels(nn.Module):
    """Uses the mean over its hidden units, which the traced graph treats as channel-wise."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 2)
        self.fc3 = nn.Linear(4, 5)
        self.fc4 = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        return self.fc2(h * h.mean(dim=1, keepdim=True)) + self.fc4(torch.relu(self.fc3(x)))


def test_a_removal_that_changes_the_outputs_is_reverted_with_the_difference() -> None:
    torch.manual_seed(0)
    model = MeanOverChannels().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    groups = coupled_groups(model, x)
    assert groups.labels[0] == "fc1 out 0" and groups.labels[6] == "fc3 out 0"
    zero_groups(model, groups, [0, 6])
    expected = model(x)
    with pytest.warns(UserWarning, match="shrink kept 1 all-zero"):
        small, report = shrink(model, example_input=x, return_report=True)
    kept = report.kept_groups
    assert [g.label for g in kept] == ["fc1 out 0"]
    assert kept[0].reason.startswith("removing it changed the outputs by ")
    assert small.fc1.out_features == 6 and small.fc3.out_features == 4  # the other family still goes
    torch.testing.assert_close(small(x), expected, atol=1e-12, rtol=0)


def test_atol_drops_small_groups_and_reports_the_difference() -> None:
    model = resnet()
    groups = coupled_groups(model, X)
    zero_groups(model, groups, [0])
    params = dict(model.named_parameters())
    with torch.no_grad():
        # inner unit 0 of block 3: small, not zero (the slices of stream channel 0 stay zero); its
        # BatchNorm makes it a positive constant of about 1e-4, which the next conv scales by 1e-4
        params["3.conv1.weight"][0, 1:] = 1e-4
        params["3.bn1.weight"][0] = 1e-4
        params["3.bn1.bias"][0] = 0.0
        model[3].bn1.running_mean[0] = -1.0
        params["3.conv2.weight"][1:, 0] = 1e-4
    assert shrink_report(model, example_input=X).removed_groups == 1
    small, report = shrink(model, example_input=X, atol=1e-3, return_report=True)
    assert report.removed_groups == 2 and small[3].conv1.out_channels == 4
    assert 1e-9 < report.max_abs_diff < 1e-5  # measured against the original, small weights included


def test_frozen_parameters_stay_frozen() -> None:
    model = resnet()
    model[0].requires_grad_(False)
    zero_groups(model, coupled_groups(model, X), [0])
    small = shrink(model, example_input=X)
    assert small[0].weight.shape[0] == 5 and not small[0].weight.requires_grad
    assert small[1].weight.requires_grad


def test_which_path_runs() -> None:
    chain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(2, 3)
    assert shrink_report(chain, example_input=x).method == "chain"
    assert shrink_report(chain, example_input=x, method="graph").method == "graph"
    assert shrink_report(chain, example_input={"input": x}).method == "graph"
    model = resnet()
    assert shrink_report(model, example_input=X).method == "graph"
    assert shrink_report(model, example_input=X, method="chain").method == "chain"
    without_input = shrink_report(model)
    assert without_input.method == "chain"
    assert any("pass example_input" in note for note in without_input.notes)


def test_without_torch_pruning_auto_falls_back_with_a_warning(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    model = resnet()
    with pytest.warns(UserWarning, match=r"torch-pruning is missing"):
        report = shrink_report(model, example_input=X)
    assert report.method == "chain" and any("torch-pruning is missing" in n for n in report.notes)
    with pytest.raises(ImportError, match=r'pip install "regtorch\[prune\]"'):
        shrink(model, example_input=X, method="graph")


def test_no_warning_when_nothing_is_kept() -> None:
    model = resnet()
    zero_groups(model, coupled_groups(model, X), [3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shrink(model, example_input=X)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: shrink(resnet(), method="graph"), ValueError,
         "'example_input' argument of shrink is required with method='graph'"),
        (lambda: shrink(resnet(), example_input=X, method="fast"), ValueError,
         r"The 'method' argument of shrink must be one of \('auto', 'chain', 'graph'\); got 'fast'"),
        (lambda: shrink_report(resnet(), example_input={"x": X}, method="chain"), TypeError,
         "'example_input' argument of shrink_report must be a tensor with method='chain'"),
        (lambda: shrink(resnet(), example_input=X, return_report="yes"), TypeError,
         "'return_report' argument of shrink must be a bool"),
        (lambda: shrink(resnet(), example_input=torch.randn(1, 5, 8, 8)), ValueError,
         "'example_input' argument of shrink must be a batch the model accepts"),
    ],
)  # fmt: skip
def test_bad_arguments(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()
