"""Coupled group lasso on real architectures (Hugging Face configs, no download): the prox zeroes
whole coupled groups, shrink removes them with equal eval outputs, and training goes on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import regtorch as rt

pytest.importorskip("torch_pruning", reason="needs the 'prune' extra")
transformers = pytest.importorskip("transformers", reason="needs the 'hf' extra")

HIDDEN, HEADS, INTERMEDIATE, VOCAB = 32, 4, 37, 50


def _models():
    common = {"num_hidden_layers": 2, "num_attention_heads": HEADS, "hidden_size": HIDDEN,
              "intermediate_size": INTERMEDIATE, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # fmt: skip
    ids = torch.randint(1, VOCAB, (8, 8), generator=torch.Generator().manual_seed(1))
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    return {
        "resnet": (lambda: transformers.ResNetForImageClassification(transformers.ResNetConfig(
            num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
            num_labels=3)), {"pixel_values": images}, "pixel_values", labels),
        "vit": (lambda: transformers.ViTForImageClassification(transformers.ViTConfig(
            image_size=16, patch_size=4, num_channels=3, num_labels=3, **common)),
            {"pixel_values": images}, "pixel_values", labels),
        "bert": (lambda: transformers.BertForSequenceClassification(transformers.BertConfig(
            vocab_size=VOCAB, max_position_embeddings=16, num_labels=3, **common)),
            {"input_ids": ids}, "input_ids", labels),
        "gpt2": (lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=16, n_embd=HIDDEN, n_layer=2, n_head=HEADS, n_inner=INTERMEDIATE,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)), {"input_ids": ids}, "input_ids", ids),
    }  # fmt: skip


MODELS = _models()
# strengths that zero some groups, not all, in 15 steps (a ResNet's groups hold BatchNorm scales of 1)
STRENGTH = {"resnet": 0.25, "vit": 0.02, "bert": 0.02, "gpt2": 0.02}


def _loss(model: nn.Module, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
    return model(**inputs, labels=labels).loss


@pytest.mark.parametrize("name", list(MODELS))
def test_coupled_prox_shrink_and_train_on(name) -> None:
    make, inputs, key, labels = MODELS[name]
    torch.manual_seed(0)
    model = make()
    model.eval()  # BatchNorm statistics fixed: eval outputs are what shrink preserves
    penalty = rt.GroupLasso(STRENGTH[name], "coupled")
    reg = rt.Regularizer(model, penalty, mode="prox", example_input=inputs[key])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    reg.attach(optimizer)
    for _ in range(15):
        optimizer.zero_grad()
        _loss(model, inputs, labels).backward()
        optimizer.step()
    (rule,) = reg.rules
    grouping = rule.penalty.grouping
    (sumsq,) = grouping.sumsq([p.detach() for p in rule.params], "reference")
    zero = int((sumsq == 0).sum())
    assert 0 < zero < grouping.num_groups, f"{zero} of {grouping.num_groups} groups zero"
    before = sum(p.numel() for p in model.parameters())
    small, report = rt.shrink(model, example_input=inputs[key], return_report=True)
    emptied = [g for g in report.kept_groups if "keep one channel" in g.reason]  # a fully zero layer
    assert report.removed_groups == zero - len(emptied) and len(report.kept_groups) == len(emptied)
    assert sum(p.numel() for p in small.parameters()) < before
    with torch.no_grad():
        expected, got = model(**inputs).logits, small(**inputs).logits
    assert float((expected - got).abs().max()) <= 1e-5 * max(1.0, float(expected.abs().max()))
    small.train()
    fresh = torch.optim.Adam(small.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        fresh.zero_grad()
        loss = _loss(small, inputs, labels)
        loss.backward()
        fresh.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
