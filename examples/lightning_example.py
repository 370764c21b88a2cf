"""Lightning: group lasso in prox mode through the ``Regularization`` callback.

An MLP on scikit-learn's 8×8 digits; the callback zeroes whole hidden neurons (rows of the
first layer's weight), logs ``regtorch/penalty`` and ``regtorch/zero_fraction`` through Lightning's
logger (CSV here), and stores its state in the checkpoint.

Run: ``python examples/lightning_example.py`` (needs ``pip install 'regtorch[lightning]'``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn

from regtorch import GroupLasso
from regtorch.integrations.lightning import Regularization


class DigitsMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def main(out_dir: str) -> dict[str, float]:
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    x, y = load_digits(return_X_y=True)
    data = torch.utils.data.TensorDataset(torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y))
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)

    module = DigitsMLP()
    callback = Regularization(GroupLasso(0.08, groups="rows"), params="net.0.weight", mode="prox")
    trainer = pl.Trainer(
        max_epochs=8,
        accelerator="cpu",
        logger=pl.loggers.CSVLogger(out_dir, name="digits"),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=5,
        callbacks=[callback],
    )
    trainer.fit(module, loader)

    stats = callback.regularizer.stats()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    print(stats.format())
    print(
        f"dead hidden neurons: {stats.zero_groups} of {stats.groups}; "
        f"train loss {metrics['train_loss_epoch']:.3f}"
    )
    print(
        f"logged: penalty {metrics['regtorch/penalty_epoch']:.4f}, "
        f"zero fraction {metrics['regtorch/zero_fraction_epoch']:.3f}"
    )
    print(f"metrics and checkpoint in {Path(trainer.logger.log_dir)}")
    return {"zero_groups": stats.zero_groups, **metrics}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        result = main(tmp)
    if result["zero_groups"] == 0:
        raise SystemExit("group lasso in prox mode should zero some hidden neurons")
