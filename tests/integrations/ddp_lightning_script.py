"""Run by test_lightning_callback.py: Regularization under strategy='ddp' with 2 CPU processes (gloo).

Usage: python ddp_lightning_script.py OUT.pt LOG_DIR. Lightning starts the second process by
running this script again with LOCAL_RANK set; rank 0 saves the trained parameters to OUT.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_lightning_callback import BATCH, STEPS, Module, make_data

from regtorch import L1
from regtorch.integrations.lightning import Regularization


class DistributedModule(Module):
    """Each process reads every other sample, in order: rank 0 the even ones, rank 1 the odd ones."""

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        dataset = make_data()
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
        )
        return torch.utils.data.DataLoader(dataset, batch_size=BATCH // 2, sampler=sampler)


def main(out: str, log_dir: str) -> None:
    torch.set_num_threads(1)
    module = DistributedModule("sgd")
    callback = Regularization(L1(0.2), mode="prox")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        precision="64-true",
        max_steps=STEPS,
        logger=pl.loggers.CSVLogger(log_dir, name="ddp"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[callback],
        use_distributed_sampler=False,
    )
    trainer.fit(module)
    if trainer.global_rank == 0:
        params = {name: p.detach().clone() for name, p in module.named_parameters()}
        torch.save(
            {
                "world_size": trainer.world_size,
                "params": params,
                "zeros": sum(int((p == 0).sum()) for p in callback.regularizer.parameters()),
                "penalty": float(callback.penalty()),
                "penalty_logged": float(trainer.callback_metrics["regtorch/penalty_step"]),
            },
            out,
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
