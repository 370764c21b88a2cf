"""Structured sparsity on a real architecture, end to end: train, shrink, save.

A small Hugging Face ResNet (residual stages, BatchNorm; built from a config, nothing downloaded)
learns scikit-learn's 8×8 digits (upsampled to 32×32) with a group lasso over its *coupled*
channels in prox mode: one group per channel of each residual stream (every convolution adding
into it, their BatchNorms, every layer reading it) and per inner channel of each block. Whole
groups become exactly zero; ``regtorch.shrink`` removes them, the smaller model gives the same
outputs, trains on with a new optimizer (no penalty: the accuracy the penalty cost comes back) and
is saved. The script prints parameter counts, CPU latency and accuracy at each stage.

Needs ``pip install "regtorch[hf,prune]"`` and scikit-learn.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import regtorch

STRENGTH = float(sys.argv[1]) if len(sys.argv) > 1 else 0.2
torch.manual_seed(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
torch.set_num_threads(1)
digits = load_digits()
images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
x = torch.nn.functional.interpolate(images, size=32, mode="bilinear")  # the ResNet stem halves twice
y = torch.tensor(digits.target)
x_train, x_test, y_train, y_test = (
    torch.as_tensor(a) for a in train_test_split(x.numpy(), y.numpy(), test_size=0.25, random_state=0)
)

config = transformers.ResNetConfig(
    num_channels=1, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
    num_labels=10, downsample_in_first_stage=False,
)  # fmt: skip
model = transformers.ResNetForImageClassification(config)


def train(net: torch.nn.Module, optimizer: torch.optim.Optimizer, epochs: int) -> None:
    for _ in range(epochs):
        net.train()
        for batch in torch.randperm(len(x_train)).split(32):
            optimizer.zero_grad()
            net(pixel_values=x_train[batch], labels=y_train[batch]).loss.backward()
            optimizer.step()


# 0. For comparison: the same network and schedule without a penalty.
dense = transformers.ResNetForImageClassification(config)
train(dense, torch.optim.SGD(dense.parameters(), lr=0.05, momentum=0.9), 10)
dense.eval()

# 1. Train with a group lasso over the coupled channels: the prox step zeroes whole groups.
penalty = regtorch.GroupLasso(STRENGTH, "coupled")
reg = regtorch.Regularizer(model, penalty, mode="prox", example_input=x_train[:8])
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
reg.attach(optimizer)
train(model, optimizer, 10)
(rule,) = reg.rules
grouping = rule.penalty.grouping
(sumsq,) = grouping.sumsq([p.detach() for p in rule.params], "reference")
print(f"coupled groups exactly zero: {int((sumsq == 0).sum())} of {grouping.num_groups}")


def accuracy(net: torch.nn.Module) -> float:
    with torch.no_grad():
        return float((net(pixel_values=x_test).logits.argmax(1) == y_test).float().mean())


def latency_ms(net: torch.nn.Module, repeats: int = 20) -> float:
    with torch.no_grad():
        net(pixel_values=x_test)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            net(pixel_values=x_test)
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


# 2. Shrink: the all-zero coupled groups go; the eval outputs stay the same. (The accuracy with the
# penalty is low: the prox keeps shrinking the weights, and BatchNorm's running statistics lag.)
model.eval()
small, report = regtorch.shrink(model, example_input=x_test[:8], return_report=True)
small.eval()
with torch.no_grad():
    difference = float((model(pixel_values=x_test).logits - small(pixel_values=x_test).logits).abs().max())
shrunk_accuracy = accuracy(small)
# 3. Train on without the penalty, with a new optimizer (the parameters are new objects), then save.
train(small, torch.optim.SGD(small.parameters(), lr=0.05, momentum=0.9), 10)
small.eval()
with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "resnet-shrunk.pt"
    torch.save(small, path)  # the whole module: its layers now have other sizes than the config says
    saved_kib = path.stat().st_size / 1024
    reloaded = torch.load(path, weights_only=False)  # a file this script just wrote
    assert torch.equal(reloaded(pixel_values=x_test).logits, small(pixel_values=x_test).logits)

params = (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in small.parameters()))
fewer = 1 - params[1] / params[0]
print(f"parameters: {params[0]:,} -> {params[1]:,} ({fewer:.1%} fewer); saved {saved_kib:.0f} KiB")
print(f"test accuracy: dense {accuracy(dense):.2%}; with the penalty {accuracy(model):.2%}, shrunk "
      f"{shrunk_accuracy:.2%} (max |logit difference| {difference:.2g}), after 10 epochs without the "
      f"penalty {accuracy(small):.2%}")
print(f"CPU latency (450 images, 1 thread): {latency_ms(model):.1f} ms -> {latency_ms(small):.1f} ms")
print(report.format(4))
