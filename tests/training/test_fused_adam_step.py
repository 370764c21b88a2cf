"""The short fused Adam/AdamW step: bit-for-bit ``optimizer.step()``, hooks included."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import regtorch as rt
from regtorch.training._fused_adam import fused_adam_step


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _grads(model: nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def _run(make_opt, steps: int, short: bool, regularize: str | None = None, schedule: bool = False):
    model = _model()
    opt = make_opt(model.parameters())
    if regularize:
        rt.Regularizer(model, rt.ElasticNet(l1=1e-2, l2=1e-2), mode=regularize).attach(opt)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) if schedule else None
    taken = []
    for step in range(steps):
        _grads(model, step)
        taken.append(short and fused_adam_step(opt))
        if not taken[-1]:
            opt.step()
        if sched is not None:
            sched.step()
    return model, opt, taken


OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, fused=True),
    "adam-wd-amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1, amsgrad=True, fused=True),
    "adam-maximize-betas": lambda p: torch.optim.Adam(
        p, lr=1e-2, betas=(0.8, 0.9), maximize=True, fused=True
    ),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05, fused=True),
    "adam-decoupled": lambda p: torch.optim.Adam(
        p, lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True, fused=True
    ),
    "adam-tensor-lr": lambda p: torch.optim.Adam(p, lr=torch.tensor(1e-2), fused=True),
    "two-groups": lambda p: (
        lambda ps: torch.optim.Adam(
            [{"params": ps[:2], "lr": 1e-3}, {"params": ps[2:], "betas": (0.5, 0.6)}], lr=1e-2, fused=True
        )
    )(list(p)),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("regularize", [None, "grad", "prox"])
def test_same_parameters_and_state_as_optimizer_step(name, regularize):
    short_model, short_opt, taken = _run(OPTIMIZERS[name], 6, True, regularize, schedule=True)
    ref_model, ref_opt, _ = _run(OPTIMIZERS[name], 6, False, regularize, schedule=True)
    assert taken == [False] + [True] * 5  # the first step initialises the state the usual way
    for a, b in zip(short_model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b)
    short_state, ref_state = short_opt.state_dict(), ref_opt.state_dict()
    assert short_state["param_groups"] == ref_state["param_groups"]
    for key, state in ref_state["state"].items():
        for field, value in state.items():
            assert torch.equal(short_state["state"][key][field], value), (key, field)


def test_post_hooks_run_after_the_update_pre_hooks_before():
    model, opt, _ = _run(OPTIMIZERS["adam"], 1, False)
    seen = []
    reg = rt.Regularizer(model, rt.L1(1e-2), mode="grad")
    reg.attach(opt)
    opt.register_step_post_hook(lambda o, a, k: seen.append(("post", float(model[0].weight.detach()[0, 0]))))
    handle = register_optimizer_step_post_hook(lambda o, a, k: seen.append(("global",)))
    try:
        before = float(model[0].weight.detach()[0, 0])
        _grads(model, 1)
        assert fused_adam_step(opt)
    finally:
        handle.remove()
    assert [s[0] for s in seen] == ["post", "global"]
    assert seen[0][1] != before
    assert reg.num_steps == 1  # the regularizer's post-hook counted the step


@pytest.mark.parametrize(
    "setup",
    [
        "not-fused",
        "sgd",
        "first-step",
        "foreign-pre-hook",
        "global-pre-hook",
        "grad-scale",
        "mixed-dtypes",
        "subclass",
    ],
)
def test_declines_what_needs_the_general_path_and_changes_nothing(setup):
    model = _model()
    params = list(model.parameters())
    if setup == "not-fused":
        opt = torch.optim.Adam(params, lr=1e-2)
    elif setup == "sgd":
        opt = torch.optim.SGD(params, lr=1e-2, fused=True)
    elif setup == "subclass":
        opt = type("MyAdam", (torch.optim.Adam,), {})(params, lr=1e-2, fused=True)
    elif setup == "mixed-dtypes":
        model[2].double()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    else:
        opt = torch.optim.Adam(params, lr=1e-2, fused=True)
    _grads(model, 0)
    if setup != "first-step":
        opt.step()
    handle = None
    if setup == "foreign-pre-hook":
        handle = opt.register_step_pre_hook(lambda o, a, k: None)
    elif setup == "global-pre-hook":
        handle = register_optimizer_step_pre_hook(lambda o, a, k: None)
    elif setup == "grad-scale":
        opt.grad_scale = torch.tensor(2.0)
    before = copy.deepcopy(opt.state_dict())
    weights = [p.detach().clone() for p in model.parameters()]
    try:
        assert fused_adam_step(opt) is False
    finally:
        if handle is not None:
            handle.remove()
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))
    after = opt.state_dict()
    for key, state in before["state"].items():
        for field, value in state.items():
            assert torch.equal(after["state"][key][field], value)


def test_parameters_without_gradient_are_skipped_like_torch():
    short_model, short_opt, _ = _run(OPTIMIZERS["adam"], 2, True)
    ref_model, ref_opt, _ = _run(OPTIMIZERS["adam"], 2, False)
    for model, opt, short in ((short_model, short_opt, True), (ref_model, ref_opt, False)):
        _grads(model, 9)
        model[2].bias.grad = None
        if not (short and fused_adam_step(opt)):
            opt.step()
    for a, b in zip(short_model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b)
