"""Tests for shrink / shrink_report: the unshrunk model's output is the source of truth."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from regtorch import ShrinkReport, shrink, shrink_report

TOL = 1e-6


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_bn(bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Give a BatchNorm non-trivial running statistics and affine parameters."""
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()


def assert_same_outputs(before: nn.Module, after: nn.Module, x: torch.Tensor) -> None:
    before.eval()
    after.eval()
    with torch.no_grad():
        expected, got = before(x), after(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


def mlp() -> nn.Sequential:
    model = nn.Sequential(
        nn.Linear(6, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 3),
    ).double()  # fmt: skip
    randomize_bn(model[1])
    with torch.no_grad():
        model[0].weight[[1, 4, 7]] = 0  # three zero rows...
        model[0].bias[1] = 0  # ...one with a zero bias, two with non-zero biases
        model[4].weight[:, 2] = 0  # unit 2 of layer 0 is never used
        model[4].weight[5] = 0  # a constant neuron of layer 4 (bias kept, folded)
        model[6].weight[:, 6] = 0  # unit 6 of layer 4 is never used
        model[6].weight[0] = 0  # the model's outputs are never removed
    return model.eval()


def test_mlp_outputs_and_counts() -> None:
    model = mlp()
    small = shrink(model)
    x = torch.randn(32, 6, dtype=torch.float64)
    assert_same_outputs(model, small, x)
    # layer 0: 10 -> 6 neurons (1, 2, 4, 7); layer 4: 8 -> 6 neurons (5, 6); output: 3 kept
    assert (small[0].out_features, small[1].num_features, small[4].in_features) == (6, 6, 6)
    assert (small[4].out_features, small[6].in_features, small[6].out_features) == (6, 6, 3)
    assert small[1].running_mean.shape == (6,) and small[1].running_var.shape == (6,)
    expected = (6 * 6 + 6) + 2 * 6 + (6 * 6 + 6) + (3 * 6 + 3)
    assert n_params(small) == expected
    report = shrink_report(model)
    assert report.params_before == n_params(model)
    assert report.params_after == expected
    first, bn, second, last = report.layers
    assert first.removed == (1, 2, 4, 7) and first.folded == (1, 4, 7)
    assert bn.type == "BatchNorm1d" and bn.removed == (1, 2, 4, 7) and bn.unit == "channels"
    assert second.removed == (5, 6) and second.inputs_after == 6
    assert last.removed == () and last.units_after == 3
    assert report.bytes_before == 8 * n_params(model) + 8 * 20 + 8  # + running stats, counter
    assert report.bytes_after == 8 * expected + 8 * 12 + 8
    assert report.removed_units == 6


def test_input_model_untouched_and_inplace() -> None:
    model = mlp()
    state = copy.deepcopy(model.state_dict())
    shrink_report(model)
    small = shrink(model)
    assert small is not model
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    same = shrink(model, inplace=True)
    assert same is model and model[0].out_features == 6
    assert n_params(model) == n_params(small)


def test_training_flags_kept() -> None:
    model = mlp().train()
    small = shrink(model)
    assert all(m.training for m in small.modules())


@pytest.mark.parametrize("seed", range(6))
def test_random_mlps(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    widths = [5, 12, 9, 7, 4]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b, bias=bool(i % 2 == 0 or seed % 2)))
        if i < len(widths) - 2:
            layers += [nn.BatchNorm1d(b), [nn.ReLU(), nn.GELU(), nn.Sigmoid()][i % 3]]
            layers.append(nn.Dropout(0.1))
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.normal_(generator=gen)
                m.bias.normal_(generator=gen)
            if isinstance(m, nn.Linear):
                rows = torch.rand(m.out_features, generator=gen) < 0.3
                cols = torch.rand(m.in_features, generator=gen) < 0.2
                m.weight[rows] = 0
                m.weight[:, cols] = 0
    model.eval()
    small = shrink(model)
    assert_same_outputs(model, small, torch.randn(16, 5, dtype=torch.float64, generator=gen))
    assert n_params(small) == shrink_report(model).params_after <= n_params(model)


def test_cascade_constant_and_unused() -> None:
    model = nn.Sequential(
        nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2, bias=False)
    ).double()
    with torch.no_grad():
        model[0].weight[0] = 0  # unit 0: constant sigmoid(b0)
        model[2].weight[1] = 0
        model[2].weight[1, 0] = 0.7  # unit 1 of layer 2 only reads the constant unit 0
        model[2].weight[3, 1:] = 0  # unit 3 also only reads the constant unit 0
    small = shrink(model.eval())
    assert_same_outputs(model, small, torch.randn(8, 4, dtype=torch.float64))
    assert small[0].out_features == 5 and small[2].out_features == 3
    assert small[4].bias is not None  # created to hold the folded constants
    report = shrink_report(model)
    assert report.layers[1].folded == (1, 3)
    assert any("bias is added" in note for note in report.notes)


def test_constant_unit_into_bias_free_layer_with_zero_contribution() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False)).double()
    with torch.no_grad():
        model[0].weight[2] = 0
        model[0].bias[2] = -1.0  # relu(-1) == 0: nothing to fold, no bias needed
    small = shrink(model)
    assert small[2].bias is None and small[0].out_features == 3
    assert_same_outputs(model, small, torch.randn(8, 3, dtype=torch.float64))


def test_nested_sequential() -> None:
    model = nn.Sequential(
        nn.Sequential(nn.Linear(4, 6), nn.ReLU()), nn.Sequential(nn.Sequential(nn.Linear(6, 3)))
    ).double()
    with torch.no_grad():
        model[0][0].weight[[0, 5]] = 0
    small = shrink(model)
    assert small[0][0].out_features == 4 and small[1][0][0].in_features == 4
    assert_same_outputs(model, small, torch.randn(8, 4, dtype=torch.float64))


def test_every_unit_removable_keeps_one() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[0].weight.zero_()
    small = shrink(model)
    assert small[0].out_features == 1
    assert_same_outputs(model, small, torch.randn(8, 3, dtype=torch.float64))
    assert "unit 0 is kept" in shrink_report(model).format()


def test_atol() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[0].weight[1] = 1e-9
    assert shrink(model)[0].out_features == 4
    small = shrink(model, atol=1e-8)
    assert small[0].out_features == 3
    x = torch.randn(8, 3, dtype=torch.float64)
    torch.testing.assert_close(small(x), model(x), atol=1e-7, rtol=0)


def cnn() -> nn.Sequential:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 2 * 2, 10), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(10, 4),
    ).double()  # fmt: skip
    randomize_bn(model[1])
    with torch.no_grad():
        model[0].weight[[0, 3]] = 0  # filter 0 zero bias, filter 3 non-zero bias: both constant
        model[0].bias[0] = 0
        model[4].weight[:, 5] = 0  # filter 5 of conv 0 unused
        model[4].weight[2] = 0  # constant filter of conv 4 (bias), folded through Flatten
        model[7].weight[:, 4:8] = 0  # filter 1 of conv 4 unused (its 2x2 block of features)
    return model.eval()


def test_cnn_outputs_and_counts() -> None:
    model = cnn()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    small = shrink(model, example_input=x[:1])
    assert_same_outputs(model, small, x)
    assert (small[0].out_channels, small[1].num_features, small[4].in_channels) == (5, 5, 5)
    assert (small[4].out_channels, small[7].in_features) == (4, 16)
    expected = (5 * 3 * 9 + 5) + 2 * 5 + (4 * 5 * 9 + 4) + (10 * 16 + 10) + (4 * 10 + 4)
    assert n_params(small) == expected
    report = shrink_report(model, example_input=x[:1])
    assert report.params_after == expected
    assert report.layers[0].unit == "filters" and report.layers[0].removed == (0, 3, 5)
    assert report.layers[2].removed == (1, 2) and report.layers[2].folded == (2,)
    assert "Conv2d" in report.format() and "filters 8 -> 5" in report.format()


@pytest.mark.parametrize("seed", range(8))
def test_random_cnns(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    padding = [(0, "zeros"), (1, "zeros"), ("same", "reflect"), (1, "circular")]
    pad1, mode1 = padding[seed % 4]
    pad2, mode2 = padding[(seed // 2) % 4]
    model = nn.Sequential(
        nn.Conv2d(2, 7, 3, padding=pad1, padding_mode=mode1), nn.BatchNorm2d(7),
        [nn.ReLU(), nn.Tanh(), nn.SiLU(), nn.Sigmoid()][seed % 4], nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(7, 5, 3, padding=pad2, padding_mode=mode2, bias=seed % 3 != 0), nn.ELU(),
        nn.Flatten(), nn.LazyLinear(6), nn.ReLU(), nn.Linear(6, 3),
    ).double()  # fmt: skip
    x = torch.randn(3, 2, 9, 9, dtype=torch.float64, generator=gen)
    model.eval()(x)  # initializes LazyLinear
    randomize_bn(model[1])
    with torch.no_grad():
        for layer in (model[0], model[4], model[7]):
            rows = torch.rand(layer.weight.shape[0], generator=gen) < 0.4
            cols = torch.rand(layer.weight.shape[1], generator=gen) < 0.2
            layer.weight[rows] = 0
            layer.weight[:, cols] = 0
            if layer.bias is not None and seed % 2:
                layer.bias[rows] = 0
    small = shrink(model, example_input=x)
    assert_same_outputs(model, small, x)
    report = shrink_report(model, example_input=x)
    assert n_params(small) == report.params_after and report.skipped == []


def test_flatten_after_conv_requires_example_input() -> None:
    with pytest.raises(ValueError, match="'example_input' argument of shrink is required"):
        shrink(cnn())
    with pytest.raises(ValueError, match="'example_input' argument of shrink_report"):
        shrink_report(cnn())


def test_example_input_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match="'example_input' argument of shrink must be a batch"):
        shrink(cnn(), example_input=torch.randn(1, 5, 8, 8, dtype=torch.float64))


def test_batchnorm_after_flatten_and_conv1d_pooling() -> None:
    model = nn.Sequential(
        nn.Conv1d(2, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(3), nn.Flatten(),
        nn.BatchNorm1d(15), nn.SiLU(), nn.Linear(15, 3),
    ).double()  # fmt: skip
    randomize_bn(model[4])
    with torch.no_grad():
        model[0].weight[[1, 4]] = 0
        model[0].bias[1] = 0.5
    x = torch.randn(6, 2, 9, dtype=torch.float64)
    small = shrink(model.eval(), example_input=x)
    assert_same_outputs(model, small, x)
    assert small[0].out_channels == 3 and small[4].num_features == 9
    assert small[6].in_features == 9
    assert shrink_report(model, example_input=x).layers[1].unit == "features"


def test_zero_padded_conv_keeps_nonzero_constants() -> None:
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1)
    ).double()
    with torch.no_grad():
        model[0].weight[[0, 1]] = 0
        model[0].bias[0] = 0.8  # relu(0.8) != 0 meets the zero padding: kept
        model[0].bias[1] = -0.3  # relu(-0.3) == 0: removed
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    small = shrink(model)
    assert small[0].out_channels == 3
    assert_same_outputs(model, small, x)
    unpadded = copy.deepcopy(model)
    unpadded[2].padding = (0, 0)
    small = shrink(unpadded)
    assert small[0].out_channels == 2  # without padding the constant is folded
    assert_same_outputs(unpadded, small, x)


def test_grouped_conv_is_skipped() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 1, groups=2), nn.ReLU(), nn.Conv2d(4, 2, 1)).double()
    with torch.no_grad():
        model[0].weight[1] = 0
    report = shrink_report(model)
    assert any("groups=2" in s and "'0'" in s for s in report.skipped)
    small = shrink(model)
    assert small[0].out_channels == 4
    assert_same_outputs(model, small, torch.randn(2, 4, 3, 3, dtype=torch.float64))


class ResBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.fc2 = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


def test_residual_block_left_unchanged() -> None:
    block = ResBlock().double()
    with torch.no_grad():
        block.fc1.weight[2] = 0
        block.fc2.weight[:, 3] = 0
    report = shrink_report(block)
    assert report.params_after == report.params_before and report.layers == []
    assert len(report.skipped) == 1 and "residual" in report.skipped[0]
    assert "residual" in report.format()
    small = shrink(block)
    assert small.fc1.out_features == 6
    assert_same_outputs(block, small, torch.randn(4, 6, dtype=torch.float64))


def test_residual_block_inside_sequential_is_a_barrier() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), ResBlock(), nn.Linear(6, 5), nn.ReLU(),
                          nn.Linear(5, 2)).double()  # fmt: skip
    with torch.no_grad():
        model[0].weight[0] = 0  # next to the barrier: kept
        model[3].weight[1] = 0  # far from it: removed
    small = shrink(model)
    assert small[0].out_features == 6 and small[3].out_features == 4
    assert any("'2' (ResBlock)" in s for s in shrink_report(model).skipped)
    assert_same_outputs(model, small, torch.randn(4, 4, dtype=torch.float64))


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 3 * 3, 8)
        self.head = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn(self.conv(x))))
        x = torch.flatten(x, 1)
        x = F.dropout(self.fc(x), 0.2, self.training)
        for layer in self.head:
            x = layer(x.relu())
        return x


def test_fx_traced_chain_shrinks() -> None:
    model = Chain().double()
    randomize_bn(model.bn)
    with torch.no_grad():
        model.conv.weight[[1, 4]] = 0
        model.fc.weight[3] = 0
        model.head[0].weight[:, 5] = 0
        model.head[0].weight[6] = 0
    model.eval()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    small = shrink(model, example_input=x)
    assert_same_outputs(model, small, x)
    assert small.conv.out_channels == 4 and small.bn.num_features == 4
    assert small.fc.in_features == 36 and small.fc.out_features == 6
    assert small.head[0].out_features == 7 and small.head[1].in_features == 7
    report = shrink_report(model, example_input=x)
    assert [layer.name for layer in report.layers] == ["conv", "bn", "fc", "head.0", "head.1"]
    assert report.skipped == []


def test_unsupported_layer_and_shared_module_are_reported() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), shared, nn.ReLU(), shared)
    skipped = shrink_report(model).skipped
    assert any("Softmax" in s and "not supported" in s for s in skipped)
    assert any("more than once" in s for s in skipped)


def test_pruned_module_with_hooks_is_left_unchanged() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    mask = torch.ones(4, 3, dtype=torch.float64)
    mask[1] = 0
    prune.custom_from_mask(model[0], "weight", mask)
    x = torch.randn(5, 3, dtype=torch.float64)
    expected = model(x)
    assert any("recomputed before each forward" in s for s in shrink_report(model).skipped)
    with pytest.raises(RuntimeError, match="pass inplace=True"):
        shrink(model)  # torch cannot deep-copy a pruned module after a forward pass
    small = shrink(model, inplace=True)
    assert small[0].weight_orig.shape == (4, 3)
    torch.testing.assert_close(small(x), expected, atol=TOL, rtol=0)
    prune.remove(model[0], "weight")
    assert shrink(model)[0].out_features == 3


def test_report_format_lists_skipped() -> None:
    text = shrink_report(cnn(), example_input=torch.randn(1, 3, 8, 8).double()).format()
    assert text.splitlines()[0].split() == ["layer", "type", "units", "removed", "inputs", "params"]
    assert "total: params" in text
    assert isinstance(shrink_report(mlp()), ShrinkReport)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: shrink(mlp(), atol=-1), ValueError,
         r"The 'atol' argument of shrink must be a finite float >= 0; got -1\."),
        (lambda: shrink(mlp(), atol=float("nan")), ValueError, "'atol' argument of shrink"),
        (lambda: shrink_report(mlp(), atol="0"), TypeError, "'atol' argument of shrink_report"),
        (lambda: shrink(mlp(), inplace=1), TypeError, "'inplace' argument of shrink must be a bool"),
        (lambda: shrink("model"), TypeError, "'model' argument of shrink must be an nn.Module"),
        (lambda: shrink_report(42), TypeError, "'model' argument of shrink_report"),
        (lambda: shrink(mlp(), example_input=[1.0]), TypeError,
         "'example_input' argument of shrink must be a tensor"),
    ],
)  # fmt: skip
def test_bad_arguments(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()
