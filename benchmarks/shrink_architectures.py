"""shrink on real architectures: parameters, output difference and CPU latency before and after.

Builds Hugging Face models from configs (random weights, nothing downloaded): a ResNet-18, a ViT, a
BERT-style encoder and a GPT-2-style decoder. In each, a fraction of the coupled groups of every
family (residual-stream channels, inner channels, attention heads, MLP units) is set to zero, as a
group lasso over coupled groups would leave them; then ``regtorch.shrink(model, example_input=x)``
removes them. Prints one row per architecture. Needs ``regtorch[prune]`` and ``transformers``.

    python benchmarks/shrink_architectures.py              # the sizes in docs/guide/structured-sparsity.md
    python benchmarks/shrink_architectures.py --small      # tiny models, a few seconds
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import regtorch
from regtorch.sparse._dependency import coupled_groups


def build(kind: str, small: bool) -> tuple[nn.Module, Any]:
    import transformers

    torch.manual_seed(0)
    if kind == "ResNet-18":
        config = transformers.ResNetConfig(
            embedding_size=16 if small else 64, hidden_sizes=[16, 32] if small else [64, 128, 256, 512],
            depths=[1, 1] if small else [2, 2, 2, 2], layer_type="basic", num_labels=1000,
        )  # fmt: skip
        return transformers.ResNetForImageClassification(config), torch.randn(1, 3, 64 if small else 224, 64 if small else 224)
    layers, hidden, heads = (2, 64, 4) if small else (12, 384, 6)
    if kind == "ViT":
        config = transformers.ViTConfig(image_size=32 if small else 224, patch_size=16, hidden_size=hidden,
                                        num_hidden_layers=layers, num_attention_heads=heads,
                                        intermediate_size=4 * hidden, num_labels=1000)  # fmt: skip
        return transformers.ViTForImageClassification(config), torch.randn(1, 3, config.image_size, config.image_size)
    tokens = torch.randint(0, 1000, (1, 128))
    if kind == "BERT":
        config = transformers.BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
                                         num_attention_heads=heads, intermediate_size=4 * hidden, num_labels=2)  # fmt: skip
        return transformers.BertForSequenceClassification(config), tokens
    config = transformers.GPT2Config(vocab_size=50257, n_embd=hidden, n_layer=layers, n_head=heads)
    return transformers.GPT2LMHeadModel(config), tokens


def zero_fraction_of_each_family(model: nn.Module, x: Any, fraction: float) -> tuple[int, int]:
    """Zero a random ``fraction`` of the groups of every family; return (zeroed, total groups)."""
    groups = coupled_groups(model, x)
    generator = torch.Generator().manual_seed(1)
    families = torch.tensor(groups.families)
    chosen = torch.zeros(groups.num_groups, dtype=torch.bool)
    for family in families.unique():
        members = (families == family).nonzero().flatten()
        count = int(fraction * len(members))
        chosen[members[torch.randperm(len(members), generator=generator)[:count]]] = True
    params = dict(model.named_parameters())
    with torch.no_grad():
        for member in groups.members:
            hit = (member.group_ids >= 0) & chosen[member.group_ids.clamp(min=0)]
            params[member.name].index_fill_(member.dim, hit.nonzero().flatten(), 0.0)
    return int(chosen.sum()), groups.num_groups


def latency_ms(model: nn.Module, x: Any, repeats: int) -> float:
    call: Callable[[], Any] = lambda: model(x)  # noqa: E731
    model.eval()
    with torch.no_grad():
        call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny models (a smoke run)")
    parser.add_argument("--fraction", type=float, default=0.5, help="share of each family's groups zeroed")
    parser.add_argument("--repeats", type=int, default=20, help="forward passes timed (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the timings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header = ("model", "params before", "params after", "zeroed groups", "removed", "kept", "max |diff|",
              "latency ms before", "after", "shrink s")  # fmt: skip
    rows = [header]
    for kind in ("ResNet-18", "ViT", "BERT", "GPT-2"):
        model, x = build(kind, args.small)
        model.eval()
        zeroed, total = zero_fraction_of_each_family(model, x, args.fraction)
        before = latency_ms(model, x, args.repeats)
        start = time.perf_counter()
        small, report = regtorch.shrink(model, example_input=x, return_report=True)
        took = time.perf_counter() - start
        after = latency_ms(small, x, args.repeats)
        rows.append((kind, f"{report.params_before:,}", f"{report.params_after:,}", f"{zeroed} of {total}",
                     str(report.removed_groups), str(len(report.kept_groups)), f"{report.max_abs_diff:.2g}",
                     f"{before:.1f}", f"{after:.1f}", f"{took:.1f}"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    print(f"torch {torch.__version__}, {args.threads} thread(s), fraction {args.fraction}, median of {args.repeats}")


if __name__ == "__main__":
    main()
