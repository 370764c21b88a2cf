"""Hugging Face ``Trainer``: L1 in prox mode on a tiny GPT-2 built from a config (no download).

The ``RegularizationCallback`` attaches to the optimizer the Trainer creates, soft-thresholds the
weight matrices after every step, and adds ``regtorch/penalty`` and ``regtorch/zero_fraction`` to
``trainer.state.log_history``.

Run: ``python examples/hf_example.py`` (needs ``pip install 'regtorch[hf]'``).
"""

from __future__ import annotations

import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from regtorch import L1
from regtorch.integrations.transformers import RegularizationCallback


class CountingSequences(torch.utils.data.Dataset):
    """Token sequences ``s, s+1, s+2, …`` (mod vocab): an easy next-token task."""

    def __init__(self, vocab: int = 64, length: int = 16, size: int = 256) -> None:
        starts = torch.randint(0, vocab, (size, 1), generator=torch.Generator().manual_seed(0))
        self.ids = (starts + torch.arange(length)) % vocab

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def main(out_dir: str) -> list[dict[str, float]]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    callback = RegularizationCallback(L1(0.2), mode="prox")
    args = TrainingArguments(
        output_dir=out_dir,
        max_steps=30,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        weight_decay=0.0,  # regtorch's penalty does the regularizing
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=CountingSequences(), callbacks=[callback])
    trainer.train()

    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    for entry in history:
        print(
            f"step {entry['step']:>3}  loss {entry['loss']:.3f}  penalty {entry['regtorch/penalty']:.3f}  "
            f"exact zeros {100 * entry['regtorch/zero_fraction']:.1f}%"
        )
    count = len(callback.regularizer.parameters())
    print(f"regularized tensors: {count} (weights; biases and LayerNorm left out)")
    return history


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        logged = main(tmp)
    if not logged or logged[-1]["regtorch/zero_fraction"] <= 0:
        raise SystemExit("prox-mode L1 should give exact zeros")
