"""One training run from a config to a run folder: build, warn, train, checkpoint, summarize."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import regtorch
from regtorch.data import Dataset
from regtorch.training._checkpoint import (
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    write_json,
)
from regtorch.training._config import TrainConfig
from regtorch.training._errors import UsageError
from regtorch.training._loop import Callback, Trainer, evaluate
from regtorch.training._metrics import (
    MetricsWriter,
    format_layer_table,
    layer_rows,
    read_metrics,
    weight_sparsity,
)
from regtorch.training._parts import PenaltyParts
from regtorch.training._progress import Reporter
from regtorch.training._rundir import (
    check_out_dir,
    default_out_dir,
    empty_run_dir,
    read_json,
    write_run_config,
)
from regtorch.training._session import Session, build_session, warn_if_dominant

__all__ = ["auto_log_every", "result_line", "run_train", "summarize"]

#: Options a resumed run may change; any other must match the run's config.json.
RESUME_MAY_CHANGE = frozenset({"epochs", "log_every", "data_dir", "download", "label"})


def _resume_config(
    given: TrainConfig, saved: TrainConfig, explicit: Collection[str] | None, where: Path
) -> TrainConfig:
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    explicit = names if explicit is None else explicit
    given_resolved = given.resolved()
    changes = {}
    for name in explicit:
        if name in RESUME_MAY_CHANGE:
            changes[name] = getattr(given, name)
        elif getattr(given_resolved, name) != getattr(saved, name):
            raise UsageError(
                f"--{name.replace('_', '-')} {getattr(given_resolved, name)!r} differs from the "
                f"run's configuration in '{where}' ({getattr(saved, name)!r}); a resumed run keeps "
                f"its configuration (only {', '.join(sorted(RESUME_MAY_CHANGE))} may change)"
            )
    return saved.replace(**changes).resolved()


def summarize(
    session: Session, trainer: Trainer, *, wall_time_s: float, status: str = "completed"
) -> dict[str, Any]:
    """Evaluate the final model on every split and return the ``summary.json`` content."""
    data, model, cfg = session.data, session.model, session.cfg
    train_loss, train_acc = evaluate(model, data.x_train, data.y_train)
    test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
    val_loss = val_acc = None
    if data.x_val is not None and data.n_val:
        val_loss, val_acc = evaluate(model, data.x_val, data.y_val)
    parts = PenaltyParts(session.regularizer).values()
    penalty = float(sum(parts.values()))
    stats = weight_sparsity(model)
    reg = session.regularizer
    state = trainer.state
    return {
        "status": status,
        "label": cfg.label or cfg.penalty,
        "dataset": data.name,
        "n_train": data.n_train,
        "n_val": data.n_val,
        "n_test": data.n_test,
        "model": cfg.model,
        "parameters": sum(p.numel() for p in model.parameters()),
        "shrunk_parameters": _shrunk_parameters(model, data.x_test),
        "penalty_name": _penalty_name(reg),
        "mode": None if reg is None else reg.mode,
        "epochs": state.epoch,
        "steps": state.step,
        "train_accuracy": train_acc,
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "generalization_gap": train_acc - test_acc,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "test_loss": test_loss,
        "data_loss": train_loss,
        "penalty": penalty,
        "penalty_parts": parts,
        "objective": train_loss + penalty,
        "zero_fraction": stats.zero_fraction,
        "zeros": stats.zeros,
        "weights": stats.numel,
        "zero_neurons": stats.zero_groups,
        "neurons": stats.groups,
        "weight_l1": stats.l1_norm,
        "weight_l2": stats.l2_norm,
        "layers": layer_rows(stats),
        "threads": session.threads,
        "timing": {
            "wall_time_s": wall_time_s,
            "train_time_s": state.train_time_s,
            "samples_per_s": state.samples / state.train_time_s if state.train_time_s else None,
        },
    }


def _penalty_name(reg: regtorch.Regularizer | None) -> str:
    if reg is None:
        return "none"
    rules = reg.rules
    if len(rules) == 1:
        return repr(reg.penalties[0])
    return " + ".join(
        f"{r.selection if isinstance(r.selection, str) else 'other weights'}: {r.penalty!r}" for r in rules
    )


def _shrunk_parameters(model: nn.Module, x: torch.Tensor) -> int | None:
    """What ``--shrink`` would leave (None under FSDP2, where parameters are shards)."""
    if any(hasattr(p, "full_tensor") for p in model.parameters()) or not len(x):
        return None
    from regtorch.training._sparse import shrunk_parameters

    return shrunk_parameters(model, x[:1])


def result_line(summary: dict[str, Any], out: Path) -> str:
    """Return the one-line result of a run."""
    return (
        f"test accuracy {summary['test_accuracy']:.2%} (train {summary['train_accuracy']:.2%}) | "
        f"data loss {summary['data_loss']:.4f} | penalty {summary['penalty']:.4g} | "
        f"zero weights {summary['zero_fraction']:.1%} | zero neurons "
        f"{summary['zero_neurons']}/{summary['neurons']} | "
        f"{summary['timing']['wall_time_s']:.1f}s | {out}"
    )


def _fsdp_options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def _model_optimizer_state(session: Session, dist_ctx: Any) -> tuple[dict, dict]:
    """Return full (unsharded) model and optimizer state dicts; a collective under FSDP2."""
    if dist_ctx is not None and dist_ctx.fsdp:
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = _fsdp_options(cpu_offload=True)
        return (
            get_model_state_dict(session.model, options=options),
            get_optimizer_state_dict(session.model, session.optimizer, options=options),
        )
    return session.model.state_dict(), session.optimizer.state_dict()


def _by_name(optimizer_state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Key an ``optimizer.state_dict()`` (parameters numbered, as a single process or DDP saves
    it) by parameter names, as FSDP2's ``set_optimizer_state_dict`` expects; others unchanged."""
    groups = optimizer_state.get("param_groups", [])
    if not groups or not all(isinstance(i, int) for g in groups for i in g["params"]):
        return optimizer_state
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return {
        "state": {names[int(i)]: v for i, v in optimizer_state.get("state", {}).items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in groups],
    }


def _checkpoint_writer(
    session: Session, out: Path, writer: MetricsWriter, wall: list[float], dist_ctx: Any = None
):
    def write(trainer: Trainer) -> None:
        model_state, optimizer_state = _model_optimizer_state(session, dist_ctx)
        if dist_ctx is not None and not dist_ctx.is_main:
            dist_ctx.barrier()
            return
        save_checkpoint(
            out / "checkpoint.pt",
            {
                "epoch": trainer.state.epoch,
                "step": trainer.state.step,
                "train_time_s": trainer.state.train_time_s,
                "samples": trainer.state.samples,
                "wall_time_s": wall[0] + time.perf_counter() - wall[1],
                "model": model_state,
                "optimizer": optimizer_state,
                "regularizer": None if session.regularizer is None else session.regularizer.state_dict(),
                "scheduler": None if session.scheduler is None else session.scheduler.state_dict(),
                "rng": capture_rng(session.generator),
                "metrics_offsets": writer.offsets(),
                "history": trainer.history,
                "config": session.cfg.to_dict(),
            },
        )
        if dist_ctx is not None:
            dist_ctx.barrier()

    return write


def _restore(session: Session, trainer: Trainer, state: dict[str, Any], dist_ctx: Any = None) -> None:
    if dist_ctx is not None and dist_ctx.fsdp:
        from torch.distributed.checkpoint.state_dict import (
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = _fsdp_options(broadcast_from_rank0=True)
        set_model_state_dict(session.model, state["model"], options=options)
        optimizer_state = _by_name(state["optimizer"], session.model)
        set_optimizer_state_dict(session.model, session.optimizer, optimizer_state, options=options)
    else:
        session.model.load_state_dict(state["model"])
        session.optimizer.load_state_dict(state["optimizer"])
    if session.regularizer is not None and state.get("regularizer") is not None:
        session.regularizer.load_state_dict(state["regularizer"])
    if session.scheduler is not None and state.get("scheduler") is not None:
        session.scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"], session.generator)
    trainer.state.epoch = int(state["epoch"])
    trainer.state.step = int(state["step"])
    trainer.state.train_time_s = float(state["train_time_s"])
    trainer.state.samples = int(state["samples"])
    trainer.history = list(state["history"])


def auto_log_every(steps_per_epoch: int) -> int:
    """Return a round number of batches giving about four tutorial lines per epoch."""
    target = max(1, steps_per_epoch // 4)
    best = 1
    for scale in (1, 10, 100, 1000, 10000, 100000):
        for mult in (1, 2, 5):
            if mult * scale <= target:
                best = mult * scale
    return best


def _prepare(
    config: TrainConfig,
    out_dir: Path | str | None,
    resume: bool,
    overwrite: bool,
    explicit: Collection[str] | None,
    reporter: Reporter,
) -> tuple:
    """Check the run folder and read a checkpoint to resume: ``("run", kind, out, cfg, state)``,
    or ``("done", summary)`` for a run that is already complete."""
    out = Path(out_dir) if out_dir is not None else default_out_dir("train")
    kind = check_out_dir(out, resume=resume, overwrite=overwrite, command="train")
    cfg = config.resolved()
    checkpoint_state = None
    if kind == "resume":
        saved = read_json(out / "config.json").get("config")
        if not isinstance(saved, dict):
            raise UsageError(f"'{out / 'config.json'}' holds no training configuration")
        cfg = _resume_config(config, TrainConfig.from_dict(saved), explicit, out / "config.json")
        summary_path = out / "summary.json"
        if summary_path.exists():
            summary = read_json(summary_path)
            total = cfg.epochs + cfg.finetune_epochs
            if summary.get("epochs") == total and summary.get("status") == "completed":
                reporter.result(f"the run in '{out}' is already complete")
                reporter.result(result_line(summary, out))
                return ("done", summary)
        if (out / "checkpoint.pt").exists():
            checkpoint_state = load_checkpoint(out / "checkpoint.pt")
    return ("run", kind, out, cfg, checkpoint_state)


def run_train(
    config: TrainConfig,
    out_dir: Path | str | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    explicit: Collection[str] | None = None,
    reporter: Reporter | None = None,
    callbacks: Sequence[Callback] = (),
    plots: bool = True,
    data: Dataset | None = None,
    dist_ctx: Any = None,
    shrink: bool = False,
    tensorboard: bool = False,
) -> dict[str, Any]:
    """Train one configuration into a run folder and return its summary.

    Args:
        config: The run's configuration (resolved here).
        out_dir: The run folder (default: a new ``runs/train-<time>``).
        resume: Continue the run in ``out_dir`` from its checkpoint (its config.json wins).
        overwrite: Empty ``out_dir`` first (only if it holds a regtorch run).
        explicit: With ``resume``, the options the user gave (others come from config.json);
            ``None``: all of ``config``.
        reporter: Where lines go (default: stdout).
        callbacks: :class:`Callback` objects for the trainer.
        plots: Draw the PNG plots at the end.
        data: An already loaded data set matching ``config`` (``compare`` shares one).
        dist_ctx: A :class:`~regtorch.training._distributed.DistContext` when launched by
            ``torchrun``: rank 0 prepares the folder and reads the checkpoint, every rank trains.
        shrink: After training, shrink the model and report before/after (``summary["shrink"]``).
        tensorboard: Write TensorBoard scalars and histograms into ``RUN_DIR/tensorboard``.

    Returns:
        The content of ``summary.json``.

    Raises:
        UsageError: For bad input (exit status 2).
        RunFailed: If training diverges (exit status 1).
    """
    started = time.perf_counter()
    reporter = reporter or Reporter()
    if dist_ctx is None:
        prepared = _prepare(config, out_dir, resume, overwrite, explicit, reporter)
    else:
        if dist_ctx.is_main:
            try:
                prepared = _prepare(config, out_dir, resume, overwrite, explicit, reporter)
            except Exception as exc:
                dist_ctx.broadcast(("error", str(exc)))
                raise
        else:
            prepared = None
        prepared = dist_ctx.broadcast(prepared)
        if prepared[0] == "error":
            raise UsageError(prepared[1])
    if prepared[0] == "done":
        return prepared[1]
    _, kind, out, cfg, checkpoint_state = prepared
    threads_before = torch.get_num_threads()
    try:
        session = build_session(cfg, data, dist_ctx=dist_ctx)
        if kind == "overwrite" and (dist_ctx is None or dist_ctx.is_main):
            empty_run_dir(out)
        options = {"shrink": shrink, "tensorboard": tensorboard}
        return _train(session, out, reporter, callbacks, plots, checkpoint_state, started, dist_ctx, options)
    finally:
        torch.set_num_threads(threads_before)


def _train(
    session: Session,
    out: Path,
    reporter: Reporter,
    callbacks: Sequence[Callback],
    plots: bool,
    checkpoint_state: dict[str, Any] | None,
    started: float,
    dist_ctx: Any = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cfg, data = session.cfg, session.data
    options = options or {}
    main = dist_ctx is None or dist_ctx.is_main
    callbacks = list(callbacks)
    if cfg.finetune_epochs:
        from regtorch.training._sparse import FineTune

        callbacks.append(FineTune(session))
    if options.get("tensorboard") and main:
        from regtorch.training._tensorboard import TensorBoardCallback

        fsdp = dist_ctx is not None and dist_ctx.fsdp
        callbacks.append(TensorBoardCallback(out / "tensorboard", histograms=not fsdp))
    if main:
        write_run_config(out, "train", config=cfg.to_dict())
    writer = MetricsWriter(out)
    steps_per_epoch = -(-data.n_train // cfg.batch_size)
    log_every = auto_log_every(steps_per_epoch) if cfg.log_every is None else cfg.log_every
    trainer_class: Any = Trainer
    extra: dict[str, Any] = {}
    if dist_ctx is not None:
        from regtorch.training._distributed import DistTrainer

        trainer_class, extra = DistTrainer, {"dist_ctx": dist_ctx}
    trainer = trainer_class(
        session.model,
        session.optimizer,
        data.x_train,
        data.y_train,
        regularizer=session.regularizer,
        scheduler=session.scheduler,
        epochs=cfg.epochs + cfg.finetune_epochs,
        batch_size=cfg.batch_size,
        generator=session.generator,
        log_every=log_every,
        reporter=reporter,
        callbacks=callbacks,
        metrics_row=writer.write if main else None,
        x_val=data.x_val,
        y_val=data.y_val,
        forward=session.forward,
        flush_denormal=cfg.flush_denormal,
        **extra,
    )
    wall = [0.0, started]
    if checkpoint_state is not None:
        _restore(session, trainer, checkpoint_state, dist_ctx)
        if main:
            writer.reset(checkpoint_state["metrics_offsets"])
        wall[0] = float(checkpoint_state.get("wall_time_s", 0.0))
        reporter.line(f"Resuming '{out}' after epoch {trainer.state.epoch} of {cfg.epochs}")
    else:
        if main:
            writer.reset()
        reporter.line(
            f"Training {cfg.model} {list(cfg.hidden or ())} on {data.name} "
            f"({data.n_train} train, {data.n_val} val, {data.n_test} test) | "
            f"{'no penalty' if session.regularizer is None else session.regularizer} | "
            f"{cfg.optimizer} lr {cfg.lr:g} | {session.threads} thread(s) | {out}"
        )
        warn_if_dominant(session, reporter)
    trainer.checkpoint = _checkpoint_writer(session, out, writer, wall, dist_ctx)
    trainer.fit()
    summary = summarize(
        session,
        trainer,
        wall_time_s=wall[0] + time.perf_counter() - wall[1],
        status="completed" if trainer.state.epoch >= cfg.epochs + cfg.finetune_epochs else "stopped",
    )
    if cfg.finetune_epochs:
        from regtorch.training._sparse import finetune_summary

        summary["finetune"] = finetune_summary(trainer.history, summary, cfg.epochs)
    if options.get("shrink") and main:
        from regtorch.training._sparse import format_shrink, shrink_run

        summary["shrink"] = shrink_run(session.model, data, out)
    weights = _weights(session.model) if plots else []  # a collective under FSDP2
    if main:
        write_json(out / "summary.json", summary)
        reporter.line("")
        reporter.line(format_layer_table(summary["layers"]))
        if summary.get("finetune"):
            ft = summary["finetune"]
            reporter.line(
                f"Fine-tuning ({ft['epochs']} epoch(s), zeros frozen): test accuracy "
                f"{ft['test_accuracy_before']:.2%} -> {ft['test_accuracy_after']:.2%}, zero weights "
                f"{ft['zero_fraction_before']:.1%} -> {ft['zero_fraction_after']:.1%}"
            )
        if summary.get("shrink"):
            reporter.result("")
            reporter.result(format_shrink(summary["shrink"], data.n_test))
        if plots:
            from regtorch.training._plots import draw_run_plots

            note = draw_run_plots(out, read_metrics(out), weights)
            if note:
                reporter.warn(note)
        reporter.result(result_line(summary, out))
    if dist_ctx is not None:
        dist_ctx.barrier()
    return summary


def _full(p: torch.Tensor) -> torch.Tensor:
    full_tensor = getattr(p, "full_tensor", None)  # a DTensor shard under FSDP2
    return (full_tensor() if full_tensor is not None else p).detach().cpu()


def _weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, _full(p)) for n, p in regtorch.select_parameters(model, "weights")]
