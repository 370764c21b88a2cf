"""Building the pieces of a run from a :class:`TrainConfig`: model, optimizer, schedule, penalty.

Each piece has its own function so other programs (pruning, fine-tuning, distributed runs) can
rebuild one of them without the others.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

import regtorch
from regtorch.training._config import TrainConfig, parse_layer_l1
from regtorch.training._errors import UsageError
from regtorch.training._models import make_cnn, make_mlp
from regtorch.training._penalty_spec import flag_arguments, flag_options, parse_spec

__all__ = [
    "build_model",
    "build_optimizer",
    "build_penalty",
    "build_regularizer",
    "build_scheduler",
    "choose_threads",
    "resolve_device",
]

# Below this many floating-point operations per training step, a second thread costs more in
# synchronisation than it gains (measured on 2 cores with the hand-written MLP step: the MNIST MLP
# gains nothing at batch 10, ~3e6 FLOPs, and 15-25% from batch 32, ~1e7 FLOPs, up).
_SMALL_STEP_FLOPS = 1e7


def resolve_device(name: str) -> torch.device:
    """Return the device for ``--device`` (``auto``: CUDA when available, else CPU).

    Raises:
        UsageError: If CUDA is asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was given but no CUDA device is available; use --device cpu")
    return torch.device(name)


def build_model(cfg: TrainConfig, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Return the model named by ``cfg.model`` (on the CPU; move it yourself).

    Raises:
        UsageError: If the model does not fit the data (``cnn`` on tabular data).
    """
    hidden = tuple(cfg.hidden or ())
    if cfg.model == "cnn":
        return make_cnn(input_shape, num_classes, hidden)
    return make_mlp(input_shape, num_classes, hidden)


def _resolved(owner: str, option: str, value: float | None) -> float:
    """Return ``value``, the ``option`` field of a config, which :meth:`TrainConfig.resolved` fills in.

    Raises:
        ValueError: If ``value`` is ``None``: the config was not resolved.
    """
    if value is None:
        raise ValueError(
            f"The 'cfg' argument of {owner} must be a resolved config (TrainConfig.resolved() fills in "
            f"the defaults); got one with {option}=None."
        )
    return value


def _fused_supported(cfg: TrainConfig) -> bool:
    return cfg.optimizer in ("adam", "adamw", "sgd")


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Return the optimizer of ``cfg`` over ``model.parameters()``.

    Adam, AdamW and SGD use their fused kernels when ``cfg.fused`` is not ``False`` and the
    kernels exist for the parameters' device (one kernel for all parameters: the cheapest step
    for small models); RMSprop uses the default implementation.

    Raises:
        ValueError: If ``cfg`` is not resolved (its ``lr`` is ``None``).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    lr = float(_resolved("build_optimizer", "lr", cfg.lr))
    wd = float(cfg.weight_decay or 0.0)
    kwargs: dict = {}
    if cfg.fused is not False and _fused_supported(cfg):
        kwargs["fused"] = True
    for attempt in (kwargs, {}):
        try:
            if cfg.optimizer == "adam":
                return torch.optim.Adam(params, lr=lr, weight_decay=wd, **attempt)
            if cfg.optimizer == "adamw":
                return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **attempt)
            if cfg.optimizer == "sgd":
                return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=wd, **attempt)
            return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
        except RuntimeError:
            if not attempt:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def build_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Return the per-epoch learning-rate schedule (``cosine`` over ``epochs``, ``step``), or None."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(cfg.step_size or 1), gamma=cfg.gamma)
    return None


def build_penalty(cfg: TrainConfig) -> regtorch.Penalty | None:
    """Return the penalty of a resolved config, or ``None`` for ``--penalty none``.

    A spec with ``KEY=VALUE`` items builds the registered penalty from them
    (``mcp:strength=0.003,gamma=3`` → ``MCP(0.003, gamma=3)``). A bare name reads the strength
    options:

    ==================  ===============================================================
    ``--penalty``       penalty
    ==================  ===============================================================
    ``l1``              ``L1(l1)``
    ``l2``              ``L2(l2)``
    ``elasticnet``      ``ElasticNet(l1, l2)``, or ``ElasticNet.from_sklearn(alpha, l1_ratio)``
    ``lp``              ``Lp(p, strength)``
    ``group``           ``GroupLasso(strength, groups)``
    ``sparse-group``    ``L1(l1) + GroupLasso(strength, groups)``
    any other           the registered penalty with ``strength`` (a required one) from ``--strength``
    ==================  ===============================================================

    Arguments the spec gives win; the options fill the others (``lp:p=3`` takes ``--strength``).

    Raises:
        ValueError: If ``cfg`` is not resolved and lacks a strength ``sparse-group`` or
            ``ElasticNet.from_sklearn`` needs.
    """
    spec = parse_spec(cfg.penalty)
    if spec.name == "none":
        return None
    if spec.name == "sparse-group":
        l1 = _resolved("build_penalty", "l1", cfg.l1)
        strength = _resolved("build_penalty", "strength", cfg.strength)
        return regtorch.L1(l1) + regtorch.GroupLasso(strength, groups=cfg.groups)
    if spec.name == "ElasticNet" and cfg.alpha is not None:
        l1_ratio = _resolved("build_penalty", "l1_ratio", cfg.l1_ratio)
        return regtorch.ElasticNet.from_sklearn(alpha=cfg.alpha, l1_ratio=l1_ratio)
    from_flags = {
        argument: getattr(cfg, option)
        for option, argument in flag_arguments(spec.name).items()
        if argument is not None and option in flag_options(spec) and getattr(cfg, option) is not None
    }
    return spec.build(**from_flags)


def build_regularizer(
    cfg: TrainConfig, model: nn.Module, penalty: regtorch.Penalty | None = None
) -> regtorch.Regularizer | None:
    """Return a :class:`regtorch.Regularizer` of ``cfg``'s penalty on ``model`` (not attached).

    Args:
        cfg: A resolved config.
        model: The model.
        penalty: Use this penalty instead of :func:`build_penalty`'s (the path's stages).

    Raises:
        UsageError: For a selection or penalty the core refuses (its message, one line).
    """
    penalty = build_penalty(cfg) if penalty is None else penalty
    layer_rules = parse_layer_l1(cfg.layer_l1) if cfg.layer_l1 else []
    if penalty is None and not layer_rules:
        return None
    target: Any = penalty
    if layer_rules:
        patterns = [pattern for pattern, _ in layer_rules]
        target = [(pattern, regtorch.L1(strength)) for pattern, strength in layer_rules]
        if penalty is not None:  # the others: --penalty on --params, minus the layer rules' params
            claimed = {id(p) for pat in patterns for _, p in _select(model, pat)}
            rest = [p for _, p in _select(model, cfg.params) if id(p) not in claimed]
            if rest:
                target.append((rest, penalty))
    try:
        return regtorch.Regularizer(
            model,
            target,
            params=None if layer_rules else cfg.params,
            mode=cfg.mode,
            step_factor=cfg.step_factor,
            prox_metric=cfg.prox_metric,
        )
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from exc


def _select(model: nn.Module, selection: Any) -> list[tuple[str, torch.Tensor]]:
    try:
        return list(regtorch.select_parameters(model, selection))
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from exc


def step_flops(model: nn.Module, input_shape: Sequence[int], batch_size: int) -> float:
    """Return the floating-point operations of one training step: 3 × forward × batch."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros((1, *input_shape), device=device))
    return 3.0 * counter.get_total_flops() * batch_size


def choose_threads(cfg: TrainConfig, model: nn.Module, input_shape: Sequence[int]) -> int:
    """Return the number of intra-op threads for this run (``--threads``, else a guess).

    Steps below ``_SMALL_STEP_FLOPS`` (the tutorial MLP at small batches, digits) run fastest
    on one thread: a second one costs more in synchronisation than it gains, and far more when
    another process holds the other core. Larger steps use every core this process may use,
    shared among the processes ``torchrun`` started on this machine (``LOCAL_WORLD_SIZE``).
    """
    if cfg.threads is not None:
        return cfg.threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    local = os.environ.get("LOCAL_WORLD_SIZE", "").strip() or "1"
    if not local.isdigit() or int(local) < 1:
        raise UsageError(f"the environment variable LOCAL_WORLD_SIZE must be an integer >= 1; got {local!r}")
    local_processes = int(local)
    cores = max(1, cores // max(1, local_processes))
    if cores == 1 or step_flops(model, input_shape, cfg.batch_size) < _SMALL_STEP_FLOPS:
        return 1
    return cores
