"""shrink on real architectures built from Hugging Face configs (no download): ResNet, ViT, BERT, GPT-2.

Each test zeroes chosen coupled groups (every slice of them, as a group lasso over coupled groups
would), shrinks, and checks the parameter count against a count made by hand from the
architecture, the eval outputs against the original's, and that training goes on after shrinking
with a new optimizer.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning", reason="needs the 'prune' extra")
transformers = pytest.importorskip("transformers", reason="needs the 'hf' extra")

from regtorch import load_sparse, save_sparse, shrink  # noqa: E402
from regtorch.sparse._dependency import CoupledGroups, coupled_groups  # noqa: E402

HIDDEN, HEADS, INTERMEDIATE, VOCAB = 32, 4, 37, 50
HEAD = 3 * 8 * (HIDDEN + 1) + 8 * HIDDEN  # query/key/value rows with biases + output-projection columns
MLP_UNIT = (HIDDEN + 1) + HIDDEN  # a hidden unit's row and bias + the next layer's column


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def zero_by_label(model: nn.Module, groups: CoupledGroups, labels: list[str]) -> None:
    """Write zeros into every slice of the groups with these labels."""
    flags = torch.zeros(groups.num_groups, dtype=torch.bool)
    for label in labels:
        flags[groups.labels.index(label)] = True
    params = dict(model.named_parameters())
    with torch.no_grad():
        for member in groups.members:
            hit = (member.group_ids >= 0) & flags[member.group_ids.clamp(min=0)]
            params[member.name].index_fill_(member.dim, hit.nonzero().flatten(), 0.0)


def check_outputs(model: nn.Module, small: nn.Module, inputs: dict, report) -> float:
    model.eval()
    small.eval()
    with torch.no_grad():
        expected, got = model(**inputs).logits, small(**inputs).logits
    difference = float((expected - got).abs().max())
    assert difference <= 1e-5 * max(1.0, float(expected.abs().max()))
    assert report.max_abs_diff == pytest.approx(difference, abs=1e-7)
    return difference


def check_training(small: nn.Module, inputs: dict, labels: torch.Tensor) -> None:
    """Five Adam steps on one batch with a fresh optimizer: the loss is finite and goes down."""
    torch.manual_seed(0)
    small.train()
    optimizer = torch.optim.Adam(small.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = small(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_resnet_residual_stages(tmp_path) -> None:
    torch.manual_seed(0)
    config = transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3
    )
    model = transformers.ResNetForImageClassification(config)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)
    model.eval()
    x = {"pixel_values": torch.randn(4, 3, 32, 32)}
    groups = coupled_groups(model, x["pixel_values"])
    assert groups.num_groups == 8 + 8 + 16 + 16  # two residual streams, two blocks' inner channels
    stage1 = "resnet.encoder.stages.1.layers.0"
    zero_by_label(model, groups, [
        "resnet.embedder.embedder.convolution out 2",  # a channel of the first residual stream
        f"{stage1}.layer.0.convolution out 0", f"{stage1}.layer.0.convolution out 5",  # inner channels
        f"{stage1}.shortcut.convolution out 7",  # a channel of the second stream
    ])  # fmt: skip
    small, report = shrink(model, example_input=x["pixel_values"], return_report=True)
    # stream 0: stem filter 3*7*7, BN 2, block conv1 column 8*9 and conv2 filter 8*9, BN 2,
    # stage-1 shortcut column 16 and conv1 column 16*9
    stream0 = 147 + 2 + 72 + 72 + 2 + 16 + 144
    inner = 2 * (72 + 2 + 144)  # conv1 filter over 8 channels, BN, conv2 column over 16 channels
    stream1 = 8 + 2 + 144 + 2 + 3  # shortcut filter, BN, conv2 filter, BN, classifier column
    overlaps = 2 * 9 + 2 * 9 + 1  # entries shared by two removed groups, counted once
    assert n_params(model) - n_params(small) == stream0 + inner + stream1 - overlaps
    assert report.removed_groups == 4 and report.kept_groups == []
    assert small.resnet.embedder.embedder.convolution.out_channels == 7
    assert small.classifier[1].in_features == 15
    check_outputs(model, small, x, report)
    save_sparse(small, tmp_path / "small.rts")  # the shrunk state dict round-trips
    again = copy.deepcopy(small)
    with torch.no_grad():
        for param in again.parameters():
            param.zero_()
    again.load_state_dict(load_sparse(tmp_path / "small.rts"))
    torch.testing.assert_close(again(**x).logits, small(**x).logits, atol=0, rtol=0)
    check_training(small, x, torch.tensor([0, 1, 2, 0]))


def transformer_config(kind: str):
    common = {"num_hidden_layers": 2, "num_attention_heads": HEADS, "hidden_size": HIDDEN,
              "intermediate_size": INTERMEDIATE, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # fmt: skip
    if kind == "bert":
        return transformers.BertConfig(vocab_size=VOCAB, max_position_embeddings=16, num_labels=3, **common)
    return transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, num_labels=3, **common)


def test_bert_encoder_heads_and_mlp_units() -> None:
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformer_config("bert")).eval()
    ids = torch.randint(1, VOCAB, (4, 8))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    groups = coupled_groups(model, x)
    assert groups.num_groups == 2 * (HEADS + INTERMEDIATE) + HIDDEN  # + the pooler's units
    layer = "bert.encoder.layer"
    chosen = [f"{layer}.0.attention.self head 1", f"{layer}.1.attention.self head 0",
              f"{layer}.1.attention.self head 3", "bert.pooler.dense out 4", "bert.pooler.dense out 9",
              *(f"{layer}.0.intermediate.dense out {i}" for i in (0, 3, 7, 20, 36))]  # fmt: skip
    zero_by_label(model, groups, chosen)
    hidden = coupled_groups(model, x, include_blocked=True)
    zero_by_label(model, hidden, ["bert.embeddings.word_embeddings out 5"])  # a hidden-size channel
    with pytest.warns(UserWarning, match="shrink kept 1 all-zero coupled group"):
        small, report = shrink(model, example_input=x, return_report=True)
    pooler_unit = (HIDDEN + 1) + 3
    assert n_params(model) - n_params(small) == 3 * HEAD + 5 * MLP_UNIT + 2 * pooler_unit
    assert [(g.label, g.reason) for g in report.kept_groups] == [
        ("bert.embeddings.word_embeddings out 5",
         "a LayerNorm normalises over it ('bert.embeddings.LayerNorm')"),
    ]  # fmt: skip
    attention = small.bert.encoder.layer[1].attention.self
    assert attention.query.out_features == 16 and attention.num_attention_heads == 2
    assert attention.all_head_size == 16
    assert small.bert.encoder.layer[0].intermediate.dense.out_features == INTERMEDIATE - 5
    check_outputs(model, small, x, report)
    check_training(small, x, torch.tensor([0, 1, 2, 1]))


def test_vit_heads_and_mlp_units() -> None:
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(transformer_config("vit")).eval()
    x = {"pixel_values": torch.randn(4, 3, 16, 16)}
    groups = coupled_groups(model, x["pixel_values"])
    assert groups.num_groups == 2 * (HEADS + INTERMEDIATE)  # cls_token and positions are hidden-size
    chosen = ["vit.layers.0.attention head 0", "vit.layers.0.attention head 2", "vit.layers.1.attention head 1",
              *(f"vit.layers.1.mlp.fc1 out {i}" for i in (1, 2, 30, 31))]  # fmt: skip
    zero_by_label(model, groups, chosen)
    small, report = shrink(model, example_input=x["pixel_values"], return_report=True)
    assert n_params(model) - n_params(small) == 3 * HEAD + 4 * MLP_UNIT
    assert small.vit.layers[0].attention.q_proj.out_features == 16
    assert small.vit.layers[1].mlp.fc1.out_features == INTERMEDIATE - 4
    check_outputs(model, small, x, report)
    check_training(small, x, torch.tensor([0, 1, 2, 1]))


def test_gpt2_decoder_heads_and_mlp_units() -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=HIDDEN, n_layer=2, n_head=HEADS, n_inner=INTERMEDIATE,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, VOCAB, (4, 8))
    x = {"input_ids": ids}
    groups = coupled_groups(model, ids)
    assert groups.num_groups == 2 * (HEADS + INTERMEDIATE)
    chosen = ["transformer.h.0.attn head 3", "transformer.h.1.attn head 0", "transformer.h.1.attn head 1",
              *(f"transformer.h.0.mlp.c_fc out {i}" for i in (4, 5, 6))]  # fmt: skip
    zero_by_label(model, groups, chosen)
    small, report = shrink(model, example_input=ids, return_report=True)
    assert n_params(model) - n_params(small) == 3 * HEAD + 3 * MLP_UNIT
    attention = small.transformer.h[1].attn
    assert attention.c_attn.weight.shape == (HIDDEN, 3 * 16) and attention.split_size == 16
    assert attention.num_heads == 2
    assert small.lm_head.weight is small.transformer.wte.weight  # still tied
    check_outputs(model, small, x, report)
    check_training(small, x, ids)


def test_benchmark_script_runs_on_tiny_models() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "shrink_architectures.py"
    result = subprocess.run([sys.executable, str(script), "--small", "--repeats", "1"], capture_output=True,
                            text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[0] in ("ResNet-18", "ViT", "BERT", "GPT-2")]
    assert len(rows) == 4
    for row in rows:
        before, after = (int(v.replace(",", "")) for v in row[1:3])
        assert after < before and row[7] == "0"  # fewer parameters, no zero group kept
