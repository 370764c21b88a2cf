"""The Lightning callback: same updates as a plain loop, logs, exact zeros, checkpoints, DDP."""

from __future__ import annotations

import copy
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch", reason="needs the 'lightning' extra")

from regtorch import L1, L2, ElasticNet, GroupLasso, Regularizer  # noqa: E402
from regtorch.integrations.lightning import Regularization  # noqa: E402

HERE = Path(__file__).resolve().parent
STEPS = 4
BATCH = 16


def make_data() -> torch.utils.data.TensorDataset:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH * STEPS, 8, generator=gen)
    y = x[:, :2].sum(dim=1, keepdim=True) + 0.1 * torch.randn(BATCH * STEPS, 1, generator=gen)
    return torch.utils.data.TensorDataset(x, y)


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def make_optimizer(name: str, params) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.1)
    return torch.optim.Adam(params, lr=0.01)


class Module(pl.LightningModule):
    def __init__(self, optimizer: str = "sgd") -> None:
        super().__init__()
        self.net = make_net()
        self.optimizer_name = optimizer

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self):
        return make_optimizer(self.optimizer_name, self.parameters())


class TwoOptimizerModule(pl.LightningModule):
    """Manual optimization with one optimizer per layer."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        first, second = self.optimizers()
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(loss)
        first.step()
        second.step()

    def configure_optimizers(self):
        return [
            torch.optim.SGD(self.net[0].parameters(), lr=0.1),
            torch.optim.SGD(self.net[2].parameters(), lr=0.05),
        ]


def trainer(tmp_path: Path, callback: Regularization, **kwargs) -> pl.Trainer:
    options = {
        "max_steps": STEPS,
        "accelerator": "cpu",
        "devices": 1,
        "logger": pl.loggers.CSVLogger(str(tmp_path), name="logs"),
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "callbacks": [callback],
    }
    options.update(kwargs)
    return pl.Trainer(**options)


def loader(batch_size: int = BATCH) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(make_data(), batch_size=batch_size, shuffle=False)


def plain_loop(
    penalty, mode: str, optimizer: str = "sgd", steps: int = STEPS, accumulate: int = 1
) -> nn.Module:
    """The same training written by hand with a Regularizer."""
    net = make_net()
    opt = make_optimizer(optimizer, net.parameters())
    reg = Regularizer(net, copy.deepcopy(penalty), mode=mode)
    if mode != "loss":
        reg.attach(opt)
    batches = iter(loader(BATCH // accumulate))
    for _ in range(steps):
        opt.zero_grad()
        for _ in range(accumulate):
            x, y = next(batches)
            loss = nn.functional.mse_loss(net(x), y) / accumulate
            if mode == "loss":
                loss = loss + reg.penalty() / accumulate
            loss.backward()
        opt.step()
    return net


def assert_same_parameters(trained: nn.Module, reference: nn.Module, atol: float = 1e-6) -> None:
    for (name, a), (_, b) in zip(trained.named_parameters(), reference.named_parameters(), strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), atol=atol, rtol=0, msg=f"parameter {name}")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("mode", ["loss", "grad", "prox"])
def test_matches_plain_loop(tmp_path, mode, optimizer):
    penalty = ElasticNet(l1=0.01, l2=0.005)
    module = Module(optimizer)
    callback = Regularization(copy.deepcopy(penalty), mode=mode)
    trainer(tmp_path, callback).fit(module, loader())
    assert callback.regularizer is not None and callback.regularizer.num_steps == STEPS
    assert_same_parameters(module.net, plain_loop(penalty, mode, optimizer))


def test_loss_mode_with_gradient_accumulation_matches_plain_loop(tmp_path):
    penalty = L2(0.05)
    module = Module("sgd")
    callback = Regularization(copy.deepcopy(penalty), mode="loss")
    trainer(tmp_path, callback, accumulate_grad_batches=2).fit(module, loader(BATCH // 2))
    assert_same_parameters(module.net, plain_loop(penalty, "loss", accumulate=2))


def test_prox_mode_produces_exact_zeros_and_logs(tmp_path):
    module = Module("sgd")
    callback = Regularization(L1(0.5), mode="prox")
    fitted = trainer(tmp_path, callback, max_steps=STEPS, max_epochs=1)
    fitted.fit(module, loader())
    zeros = sum(int((p == 0).sum()) for p in (module.net[0].weight, module.net[2].weight))
    assert zeros > 0
    assert int((module.net[0].bias == 0).sum()) == 0  # biases are not selected by "weights"

    metrics = fitted.callback_metrics
    assert float(metrics["regtorch/penalty_step"]) == pytest.approx(float(callback.penalty()), rel=1e-6)
    assert float(metrics["regtorch/zero_fraction_step"]) == pytest.approx(
        callback.regularizer.stats().zero_fraction, rel=1e-6
    )
    assert "regtorch/zero_groups" in metrics

    with open(Path(fitted.logger.log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    penalties = [float(r["regtorch/penalty_step"]) for r in rows if r.get("regtorch/penalty_step")]
    assert len(penalties) == STEPS
    assert penalties[-1] == pytest.approx(float(callback.penalty()), rel=1e-6)
    assert any(r.get("regtorch/penalty_epoch") for r in rows)


def test_multiple_optimizers_manual_optimization(tmp_path):
    module = TwoOptimizerModule()
    callback = Regularization(GroupLasso(0.05), mode="prox")
    # With several optimizers, Lightning's global step counts every optimizer.step().
    trainer(tmp_path, callback, max_steps=2 * STEPS).fit(module, loader())

    net = make_net()
    first = torch.optim.SGD(net[0].parameters(), lr=0.1)
    second = torch.optim.SGD(net[2].parameters(), lr=0.05)
    reg = Regularizer(net, GroupLasso(0.05), mode="prox")
    reg.attach(first, partial=True)
    reg.attach(second, partial=True)
    for x, y in loader():
        first.zero_grad()
        second.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        first.step()
        second.step()
    assert_same_parameters(module.net, net)


@pytest.mark.parametrize("mode", ["grad", "loss"])
def test_gradient_modes_with_two_optimizers(tmp_path, mode):
    module = TwoOptimizerModule()
    callback = Regularization(L1(0.02), mode=mode)
    trainer(tmp_path, callback, max_steps=2 * STEPS).fit(module, loader())

    net = make_net()
    first = torch.optim.SGD(net[0].parameters(), lr=0.1)
    second = torch.optim.SGD(net[2].parameters(), lr=0.05)
    reg = Regularizer(net, L1(0.02), mode="loss")
    for x, y in loader():
        first.zero_grad()
        second.zero_grad()
        (nn.functional.mse_loss(net(x), y) + reg.penalty()).backward()
        first.step()
        second.step()
    assert_same_parameters(module.net, net)


def test_checkpoint_round_trips_regularizer_state(tmp_path):
    module = Module("sgd")
    callback = Regularization(L1(0.01), mode="prox")
    first = trainer(tmp_path, callback, max_steps=2)
    first.fit(module, loader())
    callback.regularizer.penalties[0].strength = 0.05
    callback.regularizer.scale = 0.5
    saved = callback.regularizer.state_dict()
    ckpt = tmp_path / "reg.ckpt"
    first.save_checkpoint(str(ckpt))

    restored = Regularization(L1(0.01), mode="prox")
    trainer(tmp_path, restored, max_steps=2).fit(Module("sgd"), loader(), ckpt_path=str(ckpt))
    # The checkpoint was taken after 2 steps and max_steps=2: fit restores and stops at once.
    assert restored.regularizer.state_dict() == saved
    assert restored.regularizer.penalties[0].strength == 0.05
    assert restored.regularizer.scale == 0.5

    resumed = Regularization(L1(0.01), mode="prox")
    trainer(tmp_path, resumed, max_steps=3).fit(Module("sgd"), loader(), ckpt_path=str(ckpt))
    assert resumed.regularizer.penalties[0].strength == 0.05
    assert resumed.regularizer.num_steps == 3


def test_checkpoint_from_another_mode_is_refused():
    callback = Regularization(L1(0.01), mode="grad")
    with pytest.raises(ValueError, match="mode='prox'"):
        callback.load_state_dict({"mode": "prox", "regularizer": None})


def test_state_keys_differ_for_two_callbacks():
    first = Regularization(L1(0.01), mode="prox")
    second = Regularization(L2(0.01), params="net.0.*", mode="grad")
    assert first.state_key != second.state_key


def test_schedule_counts_lightning_steps(tmp_path):
    module = Module("sgd")
    seen: list[int] = []

    def warmup(step: int) -> float:
        seen.append(step)
        return min(1.0, step / 2)

    callback = Regularization(L1(0.1), mode="prox", schedule=warmup)
    trainer(tmp_path, callback, callbacks=[callback]).fit(module, loader())
    assert callback.regularizer.num_steps == STEPS
    assert 0 in seen and STEPS - 1 in seen


def test_validation():
    with pytest.raises(ValueError, match="The 'mode' argument of Regularization must be one of"):
        Regularization(L1(0.1), mode="decay")
    with pytest.raises(TypeError, match="The 'penalty' argument of Regularization must be"):
        Regularization(0.1)
    with pytest.raises(RuntimeError, match=r"built when trainer\.fit"):
        Regularization(L1(0.1)).penalty()


def test_selection_outside_the_optimizer_is_an_error(tmp_path):
    class Partial(Module):
        def configure_optimizers(self):
            return torch.optim.SGD(self.net[0].parameters(), lr=0.1)

    callback = Regularization(L1(0.1), mode="prox")
    with pytest.raises(ValueError, match="held by no optimizer"):
        trainer(tmp_path, callback).fit(Partial(), loader())


def test_ddp_two_processes_match_single_process(tmp_path):
    """strategy='ddp' on CPU (gloo), 2 processes: same parameters as one process on full batches."""
    out = tmp_path / "ddp.pt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE.parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("LOCAL_RANK", None)
    result = subprocess.run(
        [sys.executable, str(HERE / "ddp_lightning_script.py"), str(out), str(tmp_path / "logs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    saved = torch.load(out)
    assert saved["world_size"] == 2
    assert saved["zeros"] > 0
    assert saved["penalty_logged"] == pytest.approx(saved["penalty"], rel=1e-9)

    net = make_net().double()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    reg = Regularizer(net, L1(0.2), mode="prox")
    reg.attach(opt)
    data = make_data()
    x_all, y_all = data.tensors[0].double(), data.tensors[1].double()
    for step in range(STEPS):
        x = x_all[step * BATCH : (step + 1) * BATCH]
        y = y_all[step * BATCH : (step + 1) * BATCH]
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    for name, param in net.named_parameters():
        torch.testing.assert_close(saved["params"][f"net.{name}"], param.detach(), atol=1e-10, rtol=0)


def test_resuming_in_another_mode_is_refused_through_the_trainer(tmp_path):
    first = trainer(tmp_path, Regularization(L1(0.01), mode="prox"), max_steps=2)
    first.fit(Module("sgd"), loader())
    ckpt = tmp_path / "prox.ckpt"
    first.save_checkpoint(str(ckpt))
    other = Regularization(L1(0.01), mode="grad")
    with pytest.raises(ValueError, match=r"saved with mode='prox'; this callback has mode='grad'"):
        trainer(tmp_path, other, max_steps=3).fit(Module("sgd"), loader(), ckpt_path=str(ckpt))
    different = Regularization(L2(0.01), mode="prox")
    with pytest.warns(UserWarning, match="holds Regularization state for other settings"):
        trainer(tmp_path, different, max_steps=3).fit(Module("sgd"), loader(), ckpt_path=str(ckpt))
    assert different.regularizer.num_steps == 1  # started afresh at step 2 of 3
