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


# --------------------------------------------------------------------------- real models


class Mixer(nn.Module):
    """timm's conventions: no_weight_decay() names (patterns too) and no_weight_decay_keywords()."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.mixing = nn.Parameter(torch.zeros(4, 4))
        self.extra = nn.ParameterDict({"a": nn.Parameter(torch.zeros(2, 2)), "b": nn.Parameter(torch.zeros(2, 2))})
        self.block = Block()
        self.head = nn.Linear(8, 3)

    def no_weight_decay(self) -> set[str]:
        return {"mixing", "extra.*"}


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.rel_bias_table = nn.Parameter(torch.zeros(5, 2))

    def no_weight_decay_keywords(self) -> set[str]:
        return {"rel_bias"}


def test_timm_no_weight_decay_and_keywords_are_left_out() -> None:
    model = Mixer()
    assert _names(model) == ["patch.weight", "block.fc.weight", "head.weight"]
    why = {p.name: p.reason for p in rt.explain_selection(model).parameters}
    assert why["mixing"] == "listed by no_weight_decay() of the model"
    assert why["extra.a"] == why["extra.b"] == "listed by no_weight_decay() of the model"
    assert why["block.rel_bias_table"] == "matches 'rel_bias' of no_weight_decay_keywords() of 'block'"
    assert why["pos_embed"] == "a position embedding ('pos_embed')"
    assert why["cls_token"] == "a learned token ('cls_token')"
    assert why["head.weight"] == "the weight of Linear"
    assert why["head.bias"] == "ndim < 2 (a bias or a scale)"
    assert "mixing" in _names(model, "all")  # only the default rule follows no_weight_decay()


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers", reason="needs the 'hf' extra")


def test_hf_vit_leaves_out_cls_token_and_position_embeddings(transformers) -> None:
    config = transformers.ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=24, num_labels=3)  # fmt: skip
    model = transformers.ViTForImageClassification(config)
    layer = "vit.layers.0"
    assert _names(model) == [
        "vit.embeddings.patch_embeddings.projection.weight",
        *(f"{layer}.attention.{p}_proj.weight" for p in "qkvo"),
        f"{layer}.mlp.fc1.weight", f"{layer}.mlp.fc2.weight", "classifier.weight",
    ]  # fmt: skip
    explanation = rt.explain_selection(model)
    why = {p.name: p.reason for p in explanation.parameters}
    assert why["vit.embeddings.cls_token"] == "a learned token ('cls_token')"
    assert why["vit.embeddings.position_embeddings"] == "a position embedding ('position_embeddings')"
    assert why[f"{layer}.layernorm_before.weight"] == "a parameter of a normalization layer (LayerNorm)"
    assert explanation.selected == _names(model)


def test_hf_bert_keeps_token_embeddings_and_leaves_out_positions(transformers) -> None:
    config = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=16)  # fmt: skip
    model = transformers.BertForSequenceClassification(config)
    names = _names(model)
    assert names[:2] == ["bert.embeddings.word_embeddings.weight", "bert.embeddings.token_type_embeddings.weight"]
    assert "bert.embeddings.position_embeddings.weight" not in names
    assert len(names) == 2 + 6 + 2  # embeddings, q/k/v/o + the MLP's two, pooler + classifier
    why = {p.name: p.reason for p in rt.explain_selection(model).parameters}
    assert why["bert.embeddings.word_embeddings.weight"] == "the embedding matrix of Embedding"
    assert why["bert.embeddings.position_embeddings.weight"] == "a position embedding ('position_embeddings')"


def test_hf_gpt2_conv1d_weights_are_selected(transformers) -> None:
    config = transformers.GPT2Config(vocab_size=30, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    assert _names(model) == [
        "transformer.wte.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight",
        "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight",
    ]  # fmt: skip
    explanation = rt.explain_selection(model)
    why = {p.name: p.reason for p in explanation.parameters}
    assert why["transformer.h.0.attn.c_attn.weight"] == "the weight of Conv1D"
    assert why["transformer.wpe.weight"] == "a position embedding ('wpe')"
    assert why["transformer.wte.weight"] == "the embedding matrix of Embedding (tied: also 'lm_head.weight')"
    assert "lm_head.weight" not in [p.name for p in explanation.parameters]


def test_explain_selection_other_selections_and_format() -> None:
    net = Net()
    net.conv.weight.requires_grad_(False)
    explanation = rt.explain_selection(net, "fc*", exclude="*.bias")
    why = {p.name: (p.selected, p.reason) for p in explanation.parameters}
    assert why["fc1.weight"] == (True, "matches 'fc*'")
    assert why["fc1.bias"] == (False, "excluded by exclude='*.bias' (matches '*.bias')")
    assert why["ln.weight"] == (False, "not matched by params='fc*'")
    assert why["conv.weight"] == (False, "frozen (requires_grad=False)")
    assert explanation.selected == ["fc1.weight", "fc2.weight"]
    text = explanation.format()
    assert text.splitlines()[0].split() == ["parameter", "shape", "module", "selected", "reason"]
    assert "conv.weight  2x1x3x3" in text
    assert text.splitlines()[-1] == "'fc*' excluding '*.bias': 2 of 11 parameters selected (64 of 148 entries)"
    nothing = rt.explain_selection(net, "nothing*")
    assert nothing.selected == [] and len(nothing.left_out) == 11
    with pytest.raises(TypeError, match="accepts module types"):
        rt.explain_selection(net, int)
