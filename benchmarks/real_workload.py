"""Regularization on a real workload: a BERT-style encoder trained with AdamW, each mode against none.

The model is a Hugging Face ``BertForSequenceClassification`` built from a config (nothing
downloaded): 4 layers, hidden size 256, 4 heads, feed-forward 1024, a vocabulary of 8,000 — about
5.3M parameters, 3.3M of them regtorch's default selection (the layers' weight matrices and the
token embedding). One optimizer step is ``zero_grad → forward → cross-entropy (+ penalty in loss
mode) → backward → AdamW step (+ the regularizer's hooks)`` on a batch of random token ids. Every
mode's step is timed against the same step without a penalty; rounds are interleaved (the order
rotating each round) and the median step time is reported, so load from other processes hits every
variant alike.

Usage::

    python benchmarks/real_workload.py [--rounds 7] [--steps 10] [--batch 16] [--seq 64] [--threads N]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import torch

import regtorch as rt

PENALTY = rt.ElasticNet(l1=1e-6, l2=1e-5)
MODES = ("none", "loss", "grad", "prox")


def make_step(mode: str, batch: int, seq: int) -> tuple[Callable[[], None], int]:
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=1024, max_position_embeddings=seq, num_labels=2,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    reg = None if mode == "none" else rt.Regularizer(model, PENALTY, mode=mode)
    if reg is not None and mode != "loss":
        reg.attach(optimizer)
    ids = torch.randint(0, 8000, (batch, seq), generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 2, (batch,), generator=torch.Generator().manual_seed(2))

    def step() -> None:
        optimizer.zero_grad()
        loss = model(input_ids=ids, labels=labels).loss
        if reg is not None and mode == "loss":
            loss = loss + reg.penalty()
        loss.backward()
        optimizer.step()

    regularized = 0 if reg is None else sum(p.numel() for p in reg.parameters())
    return step, regularized


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per measurement")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = {}
    regularized = 0
    for mode in MODES:
        steps[mode], count = make_step(mode, args.batch, args.seq)
        regularized = max(regularized, count)
        for _ in range(2):  # warm up (allocator, optimizer state, compiled kernels if any)
            steps[mode]()
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
        for mode in order:
            gc.collect()
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[mode]()
            times[mode].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(times["none"])
    print(
        f"BERT-style encoder, AdamW, batch {args.batch}×{args.seq} tokens, {regularized:,} regularized "
        f"parameters, {PENALTY!r}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"medians of {args.rounds} interleaved rounds of {args.steps} steps"
    )
    print(f"{'mode':6s} {'ms/step':>9s} {'speed vs none':>14s}")
    for mode in MODES:
        median = statistics.median(times[mode])
        print(f"{mode:6s} {1e3 * median:9.1f} {base / median:13.3f}x")


if __name__ == "__main__":
    main()
