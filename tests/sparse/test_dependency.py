"""coupled_groups: which parameter slices form one removable group, on small models with known answers."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning", reason="needs the 'prune' extra")

from sparse_models import BasicBlock

from regtorch.sparse._dependency import CoupledGroups, coupled_groups


def members(groups: CoupledGroups) -> dict[tuple[str, int], list[int]]:
    return {(m.name, m.dim): m.group_ids.tolist() for m in groups.members}


def test_mlp_groups_are_hidden_neurons_with_their_consumers() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 2))
    groups = coupled_groups(model, torch.randn(3, 4))
    assert groups.num_groups == 8 + 6  # the 2 outputs and the 4 inputs are never groups
    assert members(groups) == {
        ("0.weight", 0): list(range(8)),
        ("0.bias", 0): list(range(8)),
        ("2.weight", 1): list(range(8)),
        ("2.weight", 0): list(range(8, 14)),
        ("2.bias", 0): list(range(8, 14)),
        ("4.weight", 1): list(range(8, 14)),
    }
    assert groups.labels[:2] == ("0 out 0", "0 out 1") and groups.labels[8] == "2 out 0"
    assert groups.blocked == ("",) * 14 and groups.families == (0,) * 8 + (1,) * 6
    assert groups.sizes(model).tolist() == [4 + 1 + 6] * 8 + [8 + 1 + 2] * 6


def test_conv_chain_with_batchnorm_and_flatten() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, bias=False), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 2 * 2, 3),
    )  # fmt: skip
    groups = coupled_groups(model, torch.randn(2, 3, 8, 8))
    assert groups.num_groups == 4 + 5
    found = members(groups)
    for name in ("0.weight", "0.bias", "1.weight", "1.bias", "4.weight"):
        assert found[(name, 1 if name == "4.weight" else 0)] == [0, 1, 2, 3]
    assert found[("4.weight", 0)] == found[("5.weight", 0)] == [4, 5, 6, 7, 8]
    # Flatten turns filter c of the last convolution into the features 4c..4c+3 of the Linear
    assert found[("8.weight", 1)] == [4 + c for c in range(5) for _ in range(4)]
    assert ("8.weight", 0) not in found and ("0.weight", 1) not in found
    assert [(s.name, s.direction) for s in groups.modules] == [
        ("0", "out"), ("1", "out"), ("4", "out"), ("4", "in"), ("5", "out"), ("8", "in"),
    ]  # fmt: skip


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.block = BasicBlock(6, 4)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(torch.relu(self.bn(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


def test_residual_stream_is_one_group_per_channel() -> None:
    model = TinyResNet()
    groups = coupled_groups(model, torch.randn(2, 3, 8, 8))
    assert groups.num_groups == 6 + 4
    found = members(groups)
    stream = list(range(6))
    # the stem's filter, both BatchNorms on the stream, the block's second conv's filter,
    # the block's first conv's input channel and the classifier's input column: one group per channel
    for key in [("stem.weight", 0), ("bn.weight", 0), ("bn.bias", 0), ("block.conv2.weight", 0),
                ("block.bn2.weight", 0), ("block.bn2.bias", 0), ("block.conv1.weight", 1), ("fc.weight", 1)]:  # fmt: skip
        assert found[key] == stream, key
    inner = list(range(6, 10))
    for key in [("block.conv1.weight", 0), ("block.bn1.weight", 0), ("block.bn1.bias", 0), ("block.conv2.weight", 1)]:
        assert found[key] == inner, key
    assert groups.labels[0] == "stem out 0" and groups.labels[6] == "block.conv1 out 0"
    assert len(found) == 12 and ("fc.weight", 0) not in found


def test_ignored_layers_by_module_or_name() -> None:
    model = TinyResNet()
    x = torch.randn(1, 3, 8, 8)
    assert coupled_groups(model, x, ignored_layers=["block.conv1"]).num_groups == 6
    assert coupled_groups(model, x, ignored_layers=[model.block.conv2]).num_groups == 4
    with pytest.raises(ValueError, match=r"'ignored_layers' argument of coupled_groups .* got 'nope'"):
        coupled_groups(model, x, ignored_layers=["nope"])
    with pytest.raises(ValueError, match="'ignored_layers' argument of coupled_groups"):
        coupled_groups(model, x, ignored_layers=[nn.Linear(2, 2)])


class NormedMLP(nn.Module):
    """Hidden units under a LayerNorm: removing one changes the normalisation of the others."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.fc2 = nn.Linear(6, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(self.norm(self.fc1(x)))))


def test_groups_under_a_layernorm_are_blocked() -> None:
    model = NormedMLP()
    x = torch.randn(2, 4)
    default = coupled_groups(model, x)
    assert default.num_groups == 5 and set(default.blocked) == {""}
    full = coupled_groups(model, x, include_blocked=True)
    assert full.num_groups == 11
    assert full.blocked[:6] == ("a LayerNorm normalises over it ('norm')",) * 6
    assert full.blocked[6:] == ("",) * 5
    assert members(full)[("norm.weight", 0)] == list(range(6))


def test_grouped_convolution_is_blocked() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 3))  # fmt: skip
    groups = coupled_groups(model, torch.randn(1, 2, 7, 7), include_blocked=True)
    assert groups.num_groups == 8  # its input channels and its output channels
    assert set(groups.blocked) == {"grouped convolution '2' (groups=2) is not sliced"}
    assert coupled_groups(model, torch.randn(1, 2, 7, 7)).num_groups == 0


def test_depthwise_convolution_couples_its_input_and_output_channels() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 3))  # fmt: skip
    groups = coupled_groups(model, torch.randn(1, 2, 7, 7))
    assert groups.num_groups == 4 and set(groups.blocked) == {""}
    found = members(groups)
    assert found[("0.weight", 0)] == found[("2.weight", 0)] == found[("2.bias", 0)] == [0, 1, 2, 3]
    assert found[("5.weight", 1)] == [c for c in range(4) for _ in range(25)]


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers", reason="needs the 'hf' extra")


def test_bert_heads_and_mlp_units(transformers) -> None:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=12,
        max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config).eval()
    x = torch.randint(0, 40, (2, 6))
    groups = coupled_groups(model, x)
    per_layer = 4 + 12  # heads + MLP hidden units
    assert groups.num_groups == 2 * per_layer + 16  # + the pooler's 16 units (tanh, then the classifier)
    found = members(groups)
    prefix = "bert.encoder.layer.0."
    heads = [h for h in range(4) for _ in range(4)]  # head h owns 4 consecutive channels
    for name in ("query", "key", "value"):
        assert found[(f"{prefix}attention.self.{name}.weight", 0)] == heads
        assert found[(f"{prefix}attention.self.{name}.bias", 0)] == heads
    assert found[(f"{prefix}attention.output.dense.weight", 1)] == heads
    assert groups.labels[:4] == tuple(f"{prefix}attention.self head {h}" for h in range(4))
    assert found[(f"{prefix}intermediate.dense.weight", 0)] == list(range(4, 16))
    assert found[(f"{prefix}output.dense.weight", 1)] == list(range(4, 16))
    assert [(a.name, a.head_dim, a.group_ids.tolist()) for a in groups.attention] == [
        (f"{prefix}attention.self", 4, [0, 1, 2, 3]),
        ("bert.encoder.layer.1.attention.self", 4, [16, 17, 18, 19]),
    ]
    assert ("classifier.weight", 0) not in found  # the model's outputs are never groups
    sizes = groups.sizes(model)
    assert sizes[0] == 3 * (4 * 16 + 4) + 16 * 4  # q/k/v rows with biases, the output projection's columns
    assert sizes[4] == 16 + 1 + 16  # an MLP unit: its row and bias, the next layer's column
    # the hidden size is normalised by LayerNorms: left out, or listed as blocked
    full = coupled_groups(model, x, include_blocked=True)
    hidden = [i for i, reason in enumerate(full.blocked) if reason]
    assert len(hidden) == 16 and "LayerNorm normalises over it" in full.blocked[hidden[0]]
    assert members(full)[("bert.embeddings.word_embeddings.weight", 1)] == hidden


def test_gpt2_conv1d_and_fused_attention(transformers) -> None:
    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2, n_inner=12)
    model = transformers.GPT2LMHeadModel(config).eval()
    groups = coupled_groups(model, torch.randint(0, 40, (2, 6)))
    assert groups.num_groups == 2 + 12
    found = members(groups)
    heads = [h for h in range(2) for _ in range(8)]
    assert found[("transformer.h.0.attn.c_attn.weight", 1)] == heads * 3  # query, key, value side by side
    assert found[("transformer.h.0.attn.c_attn.bias", 0)] == heads * 3
    assert found[("transformer.h.0.attn.c_proj.weight", 0)] == heads
    assert found[("transformer.h.0.mlp.c_fc.weight", 1)] == list(range(2, 14))
    assert found[("transformer.h.0.mlp.c_proj.weight", 0)] == list(range(2, 14))
    assert model.config.use_cache is True  # switched off while tracing only


def test_tracing_restores_flags_and_handles_frozen_parameters() -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.5), nn.ReLU(), nn.Linear(5, 2))
    model[0].requires_grad_(False)
    model.train()
    groups = coupled_groups(model, torch.randn(2, 3))
    assert groups.num_groups == 5
    assert model.training and model[1].training
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True]


def test_dict_and_tuple_inputs() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)) * scale)

    model = TwoInputs()
    x, scale = torch.randn(2, 3), torch.ones(2, 1)
    assert coupled_groups(model, (x, scale)).num_groups == 4
    assert coupled_groups(model, {"x": x, "scale": scale}).num_groups == 4


def test_bad_arguments() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(TypeError, match=r"'model' argument of coupled_groups must be an nn\.Module"):
        coupled_groups("model", torch.randn(1, 3))
    with pytest.raises(TypeError, match="'example_input' argument of coupled_groups must be a tensor"):
        coupled_groups(model, 3.0)
    with pytest.raises(TypeError, match="'include_blocked' argument of coupled_groups must be a bool"):
        coupled_groups(model, torch.randn(1, 3), include_blocked=1)
    with pytest.raises(ValueError, match="'example_input' argument of coupled_groups must be a batch the model"):
        coupled_groups(model, torch.randn(1, 5))


def test_missing_torch_pruning_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ImportError, match=r'pip install "regtorch\[prune\]"'):
        coupled_groups(model, torch.randn(1, 3))
