"""The Hugging Face Trainer callback: same updates as a plain loop, logs, exact zeros, checkpoints."""

from __future__ import annotations

import copy
import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs the 'hf' extra")
pytest.importorskip("accelerate", reason="needs the 'hf' extra")

from regtorch import L1, L2, ElasticNet, GroupLasso, Regularizer  # noqa: E402
from regtorch.integrations.transformers import RegularizationCallback  # noqa: E402

SAMPLES = 8
STEPS = 3
LR = {"sgd": 0.05, "adamw_torch": 0.01}


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    return transformers.BertForSequenceClassification(config)


class TinyData(torch.utils.data.Dataset):
    """Eight fixed token sequences: one batch holds them all, so the sampler's order cannot matter."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(3)
        self.input_ids = torch.randint(1, 32, (SAMPLES, 8), generator=gen)
        self.labels = (self.input_ids[:, 0] % 2).long()

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": self.labels[index],
        }


def training_args(tmp_path, optim: str = "sgd", **kwargs) -> transformers.TrainingArguments:
    options = {
        "output_dir": str(tmp_path / "out"),
        "max_steps": STEPS,
        "per_device_train_batch_size": SAMPLES,
        "learning_rate": LR[optim],
        "optim": optim,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,
        "weight_decay": 0.0,
        "report_to": [],
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "use_cpu": True,
        "disable_tqdm": True,
    }
    options.update(kwargs)
    return transformers.TrainingArguments(**options)


def plain_loop(penalty, mode: str, optim: str = "sgd") -> torch.nn.Module:
    model = make_model()
    model.train()
    if optim == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=LR[optim])
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=LR[optim], weight_decay=0.0)
    reg = Regularizer(model, copy.deepcopy(penalty), mode=mode)
    if mode != "loss":
        reg.attach(opt)
    data = TinyData()
    batch = {
        "input_ids": data.input_ids,
        "attention_mask": torch.ones(SAMPLES, 8, dtype=torch.long),
        "labels": data.labels,
    }
    for _ in range(STEPS):
        opt.zero_grad()
        loss = model(**batch).loss
        if mode == "loss":
            loss = loss + reg.penalty()
        loss.backward()
        opt.step()
    return model


def train(tmp_path, callback, optim: str = "sgd", **kwargs) -> transformers.Trainer:
    model = make_model()
    trainer = transformers.Trainer(
        model=model,
        args=training_args(tmp_path, optim, **kwargs),
        train_dataset=TinyData(),
        callbacks=[callback],
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize("optim", ["sgd", "adamw_torch"])
@pytest.mark.parametrize("mode", ["loss", "grad", "prox"])
def test_matches_plain_loop(tmp_path, mode, optim):
    penalty = ElasticNet(l1=0.01, l2=0.005)
    callback = RegularizationCallback(copy.deepcopy(penalty), mode=mode)
    trainer = train(tmp_path, callback, optim)
    assert callback.regularizer.num_steps == STEPS
    reference = plain_loop(penalty, mode, optim)
    for (name, a), (_, b) in zip(trainer.model.named_parameters(), reference.named_parameters(), strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=0, msg=f"parameter {name}")


def test_prox_mode_produces_exact_zeros_and_logs(tmp_path):
    callback = RegularizationCallback(L1(0.5), mode="prox")
    trainer = train(tmp_path, callback)
    stats = callback.regularizer.stats()
    assert stats.zeros > 0
    assert all(name.endswith("weight") for name, _ in callback.regularizer.named_parameters())

    step_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(step_logs) == STEPS
    assert all("regtorch/penalty" in entry and "regtorch/zero_fraction" in entry for entry in step_logs)
    assert step_logs[-1]["regtorch/penalty"] == pytest.approx(float(callback.penalty()), rel=1e-6)
    assert step_logs[-1]["regtorch/zero_fraction"] == pytest.approx(stats.zero_fraction, rel=1e-6)


def test_group_lasso_zeroes_whole_rows(tmp_path):
    callback = RegularizationCallback(GroupLasso(2.0), params="*.intermediate.dense.weight", mode="prox")
    train(tmp_path, callback)
    assert callback.regularizer.stats().zero_groups > 0


class ChangeStrength(transformers.TrainerCallback):
    """Changes the regularizer's strength and scale after the first step (before the checkpoint)."""

    def __init__(self, target: RegularizationCallback) -> None:
        self.target = target

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.target.regularizer.penalties[0].strength = 0.05
            self.target.regularizer.scale = 0.5


@pytest.mark.parametrize("rebuild", [False, True])
def test_checkpoint_round_trips_regularizer_state(tmp_path, rebuild):
    callback = RegularizationCallback(L1(0.01), mode="prox")
    model = make_model()
    args = training_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=TinyData(), callbacks=[callback, ChangeStrength(callback)]
    )
    trainer.train()
    saved = callback.regularizer.state_dict()
    assert saved["penalties"][0]["strength"] == 0.05 and saved["num_steps"] == 2
    checkpoint = tmp_path / "out" / "checkpoint-2"
    stored = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]
    assert stored["RegularizationCallback"]["attributes"]["restored_state"] == saved

    fresh = RegularizationCallback(L1(0.01), mode="prox")
    args = training_args(
        tmp_path, max_steps=3, save_strategy="no", restore_callback_states_from_checkpoint=rebuild
    )
    resumed = transformers.Trainer(model=make_model(), args=args, train_dataset=TinyData(), callbacks=[fresh])
    resumed.train(resume_from_checkpoint=str(checkpoint))
    active = resumed.pop_callback(RegularizationCallback)
    assert (active is not fresh) == rebuild  # the Trainer rebuilds the callback when asked to
    assert active.regularizer.penalties[0].strength == 0.05
    assert active.regularizer.scale == 0.5
    assert active.regularizer.num_steps == 3
    # the user's handle reaches the live regularizer either way, and the logs keep regtorch's keys
    assert fresh.regularizer is active.regularizer
    assert float(fresh.penalty()) == pytest.approx(float(active.penalty()))
    step_logs = [entry for entry in resumed.state.log_history if "loss" in entry]
    assert step_logs and all("regtorch/penalty" in entry for entry in step_logs)


def test_rebuilt_callback_takes_the_arguments_json_cannot_hold(tmp_path):
    def half(step: int) -> float:
        return 0.5

    callback = RegularizationCallback(L1(0.01), params=torch.nn.Linear, mode="prox", schedule=half)
    args = training_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    transformers.Trainer(model=make_model(), args=args, train_dataset=TinyData(), callbacks=[callback]).train()
    checkpoint = tmp_path / "out" / "checkpoint-2"

    fresh = RegularizationCallback(L1(0.01), params=torch.nn.Linear, mode="prox", schedule=half)
    args = training_args(tmp_path, max_steps=3, save_strategy="no", restore_callback_states_from_checkpoint=True)
    resumed = transformers.Trainer(model=make_model(), args=args, train_dataset=TinyData(), callbacks=[fresh])
    resumed.train(resume_from_checkpoint=str(checkpoint))
    active = resumed.pop_callback(RegularizationCallback)
    assert active is not fresh and fresh.regularizer is active.regularizer
    assert active.regularizer.schedule is half and active.regularizer.num_steps == 3
    names = [name for name, _ in active.regularizer.named_parameters()]
    assert names and all(name.endswith(("weight", "bias")) for name in names)
    assert any(name.endswith("bias") for name in names)  # params=nn.Linear, not the JSON default


def test_rebuilt_callback_with_other_settings_warns(tmp_path):
    callback = RegularizationCallback(L1(0.01), mode="prox")
    args = training_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    transformers.Trainer(model=make_model(), args=args, train_dataset=TinyData(), callbacks=[callback]).train()
    fresh = RegularizationCallback(L1(0.02), mode="prox")
    args = training_args(tmp_path, max_steps=3, save_strategy="no", restore_callback_states_from_checkpoint=True)
    resumed = transformers.Trainer(model=make_model(), args=args, train_dataset=TinyData(), callbacks=[fresh])
    with pytest.warns(UserWarning, match="replaced the RegularizationCallback"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert fresh.regularizer.penalties[0].strength == 0.01  # the checkpoint's settings


def test_weight_decay_with_l2_penalty_warns(tmp_path):
    callback = RegularizationCallback(L2(0.01), mode="prox")
    with pytest.warns(UserWarning, match="weight_decay=0.1 already decays"):
        train(tmp_path, callback, weight_decay=0.1)


def test_validation():
    with pytest.raises(ValueError, match="The 'mode' argument of RegularizationCallback must be one of"):
        RegularizationCallback(L1(0.1), mode="decay")
    with pytest.raises(TypeError, match="The 'penalty' argument of RegularizationCallback must be"):
        RegularizationCallback("l1")
    with pytest.raises(RuntimeError, match=r"built when trainer\.train"):
        RegularizationCallback(L1(0.1)).penalty()


def test_accepts_penalty_configs():
    callback = RegularizationCallback({"name": "L1", "strength": 0.2}, mode="grad")
    assert callback.penalty_spec == L1(0.2)
    assert callback.state()["args"]["penalty"] == {"name": "L1", "strength": 0.2}
