"""The live objects of a run: data, model, optimizer, regularizer, schedule, and the start check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import regtorch
from regtorch._untrusted import check_fits_in_memory
from regtorch.data import DataError, Dataset, load_dataset
from regtorch.training._build import (
    build_model,
    build_optimizer,
    build_regularizer,
    build_scheduler,
    choose_threads,
    resolve_device,
)
from regtorch.training._config import TrainConfig
from regtorch.training._errors import UsageError
from regtorch.training._loop import evaluate
from regtorch.training._parts import PenaltyParts
from regtorch.training._penalty_spec import flag_options, parse_spec
from regtorch.training._progress import Reporter

__all__ = ["Session", "build_session", "load_data", "warn_if_dominant"]

_DOMINANCE = 10.0


@dataclass
class Session:
    """The live objects of a run, built from a resolved config by :func:`build_session`."""

    cfg: TrainConfig
    data: Dataset
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    regularizer: regtorch.Regularizer | None
    scheduler: Any
    generator: torch.Generator
    threads: int
    forward: Any = None
    """What computes the logits in training steps: ``torch.compile(model)`` with ``--compile``."""
    attached: Any = None
    """The regularizer's :class:`~regtorch.AttachHandle` in grad and prox modes (to detach it)."""


def load_data(cfg: TrainConfig) -> Dataset:
    """Load ``cfg.dataset`` (a :class:`~regtorch.data.DataError` becomes a :class:`UsageError`)."""
    try:
        return load_dataset(
            cfg.dataset,
            data_dir=cfg.data_dir,
            download=cfg.download,
            target=cfg.target,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
            limit=cfg.limit,
        )
    except (DataError, ValueError) as exc:
        raise UsageError(str(exc)) from exc


# Bytes per parameter while training: the weight, its gradient and two optimizer states (Adam).
_BYTES_PER_PARAMETER = 16


def _check_model_size(cfg: TrainConfig, data: Dataset) -> None:
    """Refuse a model that cannot fit in memory, counting its parameters without allocating them."""
    with torch.device("meta"):
        probe = build_model(cfg, data.input_shape, data.num_classes)
    count = sum(p.numel() for p in probe.parameters())
    what = f"the model's {count:,} parameters (with their gradients and optimizer state)"
    try:
        check_fits_in_memory(count * _BYTES_PER_PARAMETER, what)
    except ValueError as exc:
        raise UsageError(f"{exc}; use smaller layers (--hidden)") from None


def build_session(
    cfg: TrainConfig,
    data: Dataset | None = None,
    *,
    penalty: regtorch.Penalty | None = None,
    dist_ctx: Any = None,
) -> Session:
    """Build data, model (seeded by ``cfg.seed``), optimizer, regularizer and schedule.

    Sets ``torch.set_num_threads`` to :func:`choose_threads`'s choice (callers restore it).
    With ``dist_ctx`` (a :class:`~regtorch.training._distributed.DistContext`) the model is
    wrapped in DDP or sharded by FSDP2 before the optimizer and the regularizer are built;
    ``Session.model`` is then the unwrapped module under DDP (what is evaluated and saved) and
    ``Session.forward`` the DDP wrapper (what trains).
    """
    data = load_data(cfg) if data is None else data
    device = resolve_device(cfg.device) if dist_ctx is None else dist_ctx.device
    if device.type != "cpu":
        data = data.to(device)
    _check_model_size(cfg, data)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.input_shape, data.num_classes).to(device)
    threads = choose_threads(cfg, model, data.input_shape)
    torch.set_num_threads(threads)
    wrapped = None
    opt_cfg = cfg
    if dist_ctx is not None:
        wrapped = dist_ctx.wrap(model)
        if dist_ctx.fsdp:
            model, wrapped = wrapped, None
            opt_cfg = cfg.replace(fused=False)  # fused kernels do not take DTensor parameters
    optimizer = build_optimizer(opt_cfg, model)
    regularizer = build_regularizer(cfg, model, penalty)
    attached = None
    if regularizer is not None and regularizer.mode != "loss":
        try:
            attached = regularizer.attach(optimizer)
        except (ValueError, TypeError) as exc:
            raise UsageError(str(exc)) from exc
    scheduler = build_scheduler(cfg, optimizer)
    generator = torch.Generator().manual_seed(cfg.seed)
    forward = wrapped
    if cfg.compile:
        forward = torch.compile(model if wrapped is None else wrapped)
    return Session(
        cfg, data, device, model, optimizer, regularizer, scheduler, generator, threads, forward, attached
    )


def _strength_hint(cfg: TrainConfig) -> str:
    spec = parse_spec(cfg.penalty)
    options = [o for o in flag_options(spec) if o not in ("l1_ratio", "p", "groups")]
    if spec.name == "ElasticNet":
        options = ["alpha"] if cfg.alpha is not None else ["l1", "l2"]
    return "/".join("--" + o for o in options) or "the strength in --penalty"


def warn_if_dominant(session: Session, reporter: Reporter) -> float | None:
    """Warn when the initial penalty exceeds 10× the initial data loss; return the ratio.

    Not in prox mode with an adaptive optimizer (Adam, AdamW, RMSprop): there the prox step
    ``lr·λ`` competes with steps of about ``lr`` per weight, not with the data loss's gradient,
    so the ratio of the two values predicts nothing.
    """
    if session.regularizer is None:
        return None
    if session.regularizer.mode == "prox" and session.cfg.optimizer in ("adam", "adamw", "rmsprop"):
        return None
    data = session.data
    n = min(2048, int(data.x_train.shape[0]))
    data_loss, _ = evaluate(session.model, data.x_train[:n], data.y_train[:n])
    penalty = sum(PenaltyParts(session.regularizer).values().values())
    ratio = penalty / max(data_loss, 1e-12)
    if ratio > _DOMINANCE:
        reporter.warn(
            f"at the start the penalty ({penalty:.4g}) is {ratio:.0f}x the data loss "
            f"({data_loss:.4g}): the regularization will dominate; weights will collapse — "
            f"lower {_strength_hint(session.cfg)}"
        )
    return ratio
