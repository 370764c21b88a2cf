"""One training run from a config to a run folder: build, warn, train, checkpoint, summarize."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import regtorch
from regtorch.data import Dataset
from regtorch.training._checkpoint import capture_rng, save_checkpoint, write_json
from regtorch.training._config import TrainConfig
from regtorch.training._errors import UsageError
from regtorch.training._files import describe_os_error
from regtorch.training._loop import Callback, Trainer
from regtorch.training._metrics import MetricsWriter, format_layer_table, read_metrics
from regtorch.training._progress import Reporter
from regtorch.training._resume import (
    complete_summary,
    fsdp_options,
    read_resume_state,
    restore,
    resume_config,
    saved_config,
)
from regtorch.training._rundir import (
    check_out_dir,
    default_out_dir,
    empty_run_dir,
    read_json,
    write_run_config,
)
from regtorch.training._runlock import release_run_dir
from regtorch.training._session import Session, build_session, warn_if_dominant
from regtorch.training._summary import result_line, summarize

__all__ = ["auto_log_every", "run_train"]


def _model_optimizer_state(session: Session, dist_ctx: Any) -> tuple[dict, dict]:
    """Return full (unsharded) model and optimizer state dicts; a collective under FSDP2."""
    if dist_ctx is not None and dist_ctx.fsdp:
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = fsdp_options(cpu_offload=True)
        return (
            get_model_state_dict(session.model, options=options),
            get_optimizer_state_dict(session.model, session.optimizer, options=options),
        )
    return session.model.state_dict(), session.optimizer.state_dict()


def _metrics_row(writer: MetricsWriter, out: Path) -> Callable[[dict[str, Any]], None]:
    """``writer.write``, with a failed write (a full disk) as one line naming the run."""

    def write(row: dict[str, Any]) -> None:
        try:
            writer.write(row)
        except OSError as exc:
            raise UsageError(
                f"cannot write the metrics of '{out}': {describe_os_error(exc)}; completed epochs are "
                "in the checkpoint: make room, then continue the run with --resume"
            ) from exc

    return write


def _checkpoint_writer(
    session: Session, out: Path, writer: MetricsWriter, wall: list[float], dist_ctx: Any = None
):
    def write(trainer: Trainer) -> None:
        model_state, optimizer_state = _model_optimizer_state(session, dist_ctx)
        if dist_ctx is not None and not dist_ctx.is_main:
            dist_ctx.barrier()
            return
        state = {
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
        }
        try:
            save_checkpoint(out / "checkpoint.pt", state)
        except UsageError as exc:
            raise UsageError(
                f"{exc}; completed epochs are in that checkpoint: make room, then continue the run "
                "with --resume"
            ) from exc
        if dist_ctx is not None:
            dist_ctx.barrier()

    return write


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
    out: Path,
    resume: bool,
    overwrite: bool,
    explicit: Collection[str] | None,
    reporter: Reporter,
    require_checkpoint: bool,
) -> tuple[Any, ...]:
    """Claim and check the run folder and read a checkpoint to resume: ``("run", kind, out,
    cfg, state)``, or ``("done", summary)`` for a run that is already complete."""
    kind = check_out_dir(out, resume=resume, overwrite=overwrite, command="train")
    cfg = config.resolved()
    checkpoint_state = None
    if kind == "new" and resume and require_checkpoint:
        raise UsageError(f"--resume: '{out}' holds no run to resume; start one without --resume")
    if kind == "resume":
        where = out / "config.json"
        cfg = resume_config(config, saved_config(read_json(where).get("config"), where), explicit, where)
        summary = complete_summary(out, cfg.epochs + cfg.finetune_epochs)
        if summary is not None:
            reporter.result(f"the run in '{out}' is already complete")
            reporter.result(result_line(summary, out))
            return ("done", summary)
        checkpoint_state = read_resume_state(out, cfg, require_checkpoint)
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
    require_checkpoint: bool = False,
) -> dict[str, Any]:
    """Train one configuration into a run folder and return its summary.

    The folder is claimed for this process while the run lasts (another process writing into
    it is refused); with ``overwrite`` the old run is kept aside until the new one has written
    its first checkpoint (and put back if it ends before). With ``resume``, the saved
    configuration, the checkpoint and the metrics files are checked before anything is written.

    Args:
        config: The run's configuration (resolved here).
        out_dir: The run folder (default: a new ``runs/train-<time>``).
        resume: Continue the run in ``out_dir`` from its checkpoint (its config.json wins); a
            run that never reached its first checkpoint starts again from its configuration.
        overwrite: Replace the run in ``out_dir`` (only if it holds a regtorch run).
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
        require_checkpoint: With ``resume``, refuse a folder without a checkpoint instead of
            starting its run again (what ``regtorch train --resume`` does).

    Returns:
        The content of ``summary.json``.

    Raises:
        UsageError: For bad input (exit status 2), a run folder in use, a damaged checkpoint.
        RunFailed: If training diverges (exit status 1).
    """
    started = time.perf_counter()
    reporter = reporter or Reporter()
    main = dist_ctx is None or dist_ctx.is_main
    out = None
    if main:
        out = Path(out_dir) if out_dir is not None else default_out_dir("train")

    def prepare() -> tuple[Any, ...]:
        assert out is not None  # set above on the main process, the only one that prepares
        return _prepare(config, out, resume, overwrite, explicit, reporter, require_checkpoint)

    threads_before = torch.get_num_threads()
    completed = False
    try:
        if dist_ctx is None:
            prepared = prepare()
        else:
            mine = None
            if main:
                try:
                    mine = prepare()
                except Exception as exc:
                    dist_ctx.broadcast(("error", str(exc)))
                    raise
            prepared = dist_ctx.broadcast(mine)
            if prepared[0] == "error":
                raise UsageError(prepared[1])
        if prepared[0] == "done":
            completed = True
            return prepared[1]
        _, kind, out, cfg, checkpoint_state = prepared
        session = build_session(cfg, data, dist_ctx=dist_ctx)
        if kind == "overwrite" and main:
            empty_run_dir(out)
        options = {"shrink": shrink, "tensorboard": tensorboard}
        summary = _train(
            session, out, reporter, callbacks, plots, checkpoint_state, started, dist_ctx, options
        )
        completed = True
        return summary
    finally:
        torch.set_num_threads(threads_before)
        if main and out is not None:
            release_run_dir(out, completed=completed)


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
        metrics_row=_metrics_row(writer, out) if main else None,
        x_val=data.x_val,
        y_val=data.y_val,
        forward=session.forward,
        flush_denormal=cfg.flush_denormal,
        **extra,
    )
    wall = [0.0, started]
    if checkpoint_state is not None:  # checked and restored before anything is written
        restore(session, trainer, checkpoint_state, out / "checkpoint.pt", dist_ctx)
        wall[0] = float(checkpoint_state.get("wall_time_s", 0.0))
    if options.get("tensorboard") and main:
        from regtorch.training._tensorboard import TensorBoardCallback

        fsdp = dist_ctx is not None and dist_ctx.fsdp
        trainer.callbacks.append(TensorBoardCallback(out / "tensorboard", histograms=not fsdp))
    if main:
        write_run_config(out, "train", config=cfg.to_dict())
        writer.reset(None if checkpoint_state is None else checkpoint_state["metrics_offsets"])
    if checkpoint_state is not None:
        reporter.line(f"Resuming '{out}' after epoch {trainer.state.epoch} of {cfg.epochs}")
    else:
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

            try:
                note = draw_run_plots(out, read_metrics(out), weights)
            except UsageError as exc:  # a full disk: the run itself is complete and saved
                note = f"plots skipped: {exc}"
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
