"""shrink(remove_inputs=True): unused input features of the first Linear go behind a SelectFeatures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import regtorch as rt


def pixels_mlp() -> nn.Sequential:
    """An MNIST-like MLP on 6x6 images whose first layer never looks at the border pixels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    border = torch.ones(6, 6, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    with torch.no_grad():
        model[1].weight[:, border.flatten()] = 0  # 20 border pixels unused
        model[1].weight[2] = 0  # hidden unit 2 is dead (zero bias too)...
        model[1].bias[2] = 0
        model[1].weight[2, 14] = 3.0  # ...except for pixel 14, used by no other unit
        model[1].weight[[0, 1, 3, 4, 5, 6, 7], 14] = 0
        model[3].weight[:, 2] = 0  # so unit 2 is unused, and pixel 14 with it
    return model.eval()


X = torch.randn(5, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_unused_pixels_are_selected_away_and_outputs_stay() -> None:
    model = pixels_mlp()
    expected = model(X)
    small, report = rt.shrink(model, remove_inputs=True, return_report=True)
    select, linear = small[1]
    assert isinstance(select, rt.SelectFeatures) and isinstance(linear, nn.Linear)
    assert linear.in_features == 36 - 20 - 1 and linear.out_features == 7
    assert 14 not in select.index.tolist() and select.index.tolist() == sorted(select.index.tolist())
    torch.testing.assert_close(small(X), expected, atol=1e-12, rtol=0)
    assert list(small.state_dict()) == ["1.0.index", "1.1.weight", "1.1.bias", "3.weight", "3.bias"]
    assert report.layers[0].inputs_before == 36 and report.layers[0].inputs_after == 15
    assert any("21 of its 36 input features are unused" in note and "'1.1'" in note for note in report.notes)
    assert report.params_after == sum(p.numel() for p in small.parameters())
    dense_bytes = sum(t.numel() * t.element_size() for t in [*small.parameters(), *small.buffers()])
    assert report.bytes_after == dense_bytes
    assert rt.shrink_report(model, remove_inputs=True).params_after == report.params_after


def test_off_by_default_so_state_dict_keys_stay() -> None:
    model = pixels_mlp()
    small = rt.shrink(model)
    assert small[1].in_features == 36 and list(small.state_dict()) == list(model.state_dict())


def test_works_with_torch_export() -> None:
    model = pixels_mlp().float()
    small = rt.shrink(model, remove_inputs=True)
    x = X.float()
    exported = torch.export.export(small, (x,))
    torch.testing.assert_close(exported.module()(x), model(x), atol=1e-5, rtol=0)


class Traced(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def test_a_traced_module_and_a_bare_linear() -> None:
    model = Traced().double()
    with torch.no_grad():
        model.fc1.weight[:, [0, 4]] = 0
    x = torch.randn(3, 6, dtype=torch.float64)
    small = rt.shrink(model, remove_inputs=True)
    assert isinstance(small.fc1, nn.Sequential) and small.fc1[1].in_features == 4
    torch.testing.assert_close(small(x), model(x), atol=1e-12, rtol=0)
    same = rt.shrink(model, remove_inputs=True, inplace=True)
    assert same is model and model.fc1[0].index.tolist() == [1, 2, 3, 5]

    linear = nn.Linear(5, 2).double()
    with torch.no_grad():
        linear.weight[:, 1] = 0
    wrapped = rt.shrink(linear, remove_inputs=True, inplace=True)  # the model is the layer: wrapped
    assert isinstance(wrapped, nn.Sequential) and wrapped[1] is linear and linear.in_features == 4
    x = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(wrapped(x), F.linear(x[:, [0, 2, 3, 4]], linear.weight, linear.bias))


def test_every_input_unused_keeps_one() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.zero_()
    small, report = rt.shrink(model, remove_inputs=True, return_report=True)
    assert small[0][1].in_features == 1
    assert any("feature 0 is kept" in note for note in report.notes)


def test_select_features_validation_and_repr() -> None:
    select = rt.SelectFeatures([3, 0], in_features=5)
    assert select(torch.arange(5.0).view(1, 5)).tolist() == [[3.0, 0.0]]
    assert repr(select) == "SelectFeatures(2 of 5 features)"
    with pytest.raises(ValueError, match="'index' argument of SelectFeatures must be 1-D"):
        rt.SelectFeatures([[0, 1]])
    with pytest.raises(ValueError, match="distinct non-negative positions"):
        rt.SelectFeatures([1, 1])
    with pytest.raises(ValueError, match="distinct non-negative positions"):
        rt.SelectFeatures([-1, 2])
    with pytest.raises(TypeError, match="'index' argument of SelectFeatures must hold integers"):
        rt.SelectFeatures([0.5])
    with pytest.raises(ValueError, match="'in_features' argument of SelectFeatures must be an int larger"):
        rt.SelectFeatures([0, 4], in_features=4)
    with pytest.raises(TypeError, match="'remove_inputs' argument of shrink must be a bool"):
        rt.shrink(nn.Linear(2, 2), remove_inputs=1)
