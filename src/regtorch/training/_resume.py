"""Resuming a run: its saved configuration, its checkpoint and its metrics files are checked
against their own contents and against the rebuilt model before anything is rewritten."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regtorch.training._checkpoint import damaged, load_checkpoint, restore_rng
from regtorch.training._config import TrainConfig
from regtorch.training._errors import UsageError
from regtorch.training._files import open_regular
from regtorch.training._metrics import is_metrics_header
from regtorch.training._summary import read_summary

__all__ = [
    "RESUME_MAY_CHANGE",
    "check_metrics_files",
    "check_train_state",
    "complete_summary",
    "fsdp_options",
    "read_resume_state",
    "restore",
    "resume_config",
    "saved_config",
]

#: Options a resumed run may change; any other must match the run's config.json.
RESUME_MAY_CHANGE = frozenset({"epochs", "log_every", "data_dir", "download", "label", "threads"})


def saved_config(saved: Any, where: Path) -> TrainConfig:
    """Return the :class:`TrainConfig` stored in ``where`` (a run's config.json), checked.

    Raises:
        UsageError: If it is missing, malformed or holds a value out of range.
    """
    if not isinstance(saved, dict):
        raise UsageError(f"'{where}' holds no training configuration")
    threads = saved.get("threads")
    try:
        # The thread count is checked against this machine when the run resumes (resume_config):
        # a run started on a larger machine stays valid here.
        cfg = TrainConfig.from_dict({**saved, "threads": None})
        cfg.validate()
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"--threads must be an integer >= 1; got {threads!r}")
        cfg = cfg.replace(threads=threads)
    except (UsageError, TypeError, ValueError) as exc:
        raise UsageError(
            f"'{where}' holds an invalid configuration ({exc}); it was damaged or edited: restore it "
            "from a copy"
        ) from None
    return cfg


def resume_config(
    given: TrainConfig, saved: TrainConfig, explicit: Collection[str] | None, where: Path
) -> TrainConfig:
    """Return the configuration of the resumed run: ``saved`` with the options that may change.

    Raises:
        UsageError: If an explicitly given option that may not change differs from ``saved``.
    """
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
    resumed = saved.replace(**changes)
    cores = os.cpu_count() or 1
    if resumed.threads is not None and resumed.threads > 4 * cores:
        raise UsageError(
            f"the run in '{where}' uses --threads {resumed.threads}, more than the {4 * cores} this machine "
            f"allows (4 x its {cores} CPU cores); resume it with --threads {cores}"
        )
    return resumed.resolved()


def _count(state: dict[str, Any], key: str, low: int = 0) -> int:
    value = state.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"'{key}' must be an integer >= {low}; got {value!r}")
    return value


def _seconds(state: dict[str, Any], key: str) -> None:
    value = state.get(key, 0.0)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0:
        raise ValueError(f"'{key}' must be a number of seconds >= 0; got {value!r}")


def check_train_state(state: dict[str, Any], path: Path) -> None:
    """Check the entries of a training checkpoint (what :func:`load_checkpoint` leaves unchecked).

    Raises:
        UsageError: Naming the first entry that is missing or malformed.
    """
    try:
        epoch = _count(state, "epoch")
        _count(state, "step", low=epoch)
        _count(state, "samples")
        _seconds(state, "train_time_s")
        _seconds(state, "wall_time_s")
        optimizer = state.get("optimizer")
        if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict):
            raise ValueError("the optimizer state is missing or malformed")
        groups = optimizer.get("param_groups")
        if not isinstance(groups, list) or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups
        ):
            raise ValueError("the optimizer's parameter groups are missing or malformed")
        for key in ("regularizer", "scheduler"):
            if not isinstance(state.get(key), (dict, type(None))):
                raise ValueError(f"the {key} state is malformed")
        offsets = state.get("metrics_offsets")
        if not isinstance(offsets, dict):
            raise ValueError("'metrics_offsets' is missing")
        for key in ("jsonl", "csv"):
            _count(offsets, key)
        history = state.get("history")
        if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
            raise ValueError("'history' must be a list of epoch rows")
        if len(history) != epoch:
            raise ValueError(f"it records {epoch} epoch(s) but holds {len(history)} epoch row(s)")
    except ValueError as exc:
        raise damaged(path, str(exc)) from None


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"


def check_model_state(saved: dict[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    """Check that a checkpoint's model state has exactly the keys and shapes of ``model``'s.

    Raises:
        UsageError: Naming the first missing or extra key, or the first shape that differs.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    if missing or extra:
        what = f"lacks {', '.join(missing[:3])}" if missing else f"has {', '.join(extra[:3])} in addition"
        raise damaged(path, f"its model state {what}: it is not from this run's model")
    for name, tensor in expected.items():
        if tuple(saved[name].shape) != tuple(tensor.shape):
            raise damaged(
                path,
                f"its {name} has shape {_shape(saved[name])} where this run's model has {_shape(tensor)}",
            )


def _check_optimizer_state(saved: dict[str, Any], optimizer: torch.optim.Optimizer, path: Path) -> None:
    groups = optimizer.param_groups
    sizes = [len(g["params"]) for g in saved["param_groups"]]
    if sizes != [len(g["params"]) for g in groups]:
        raise damaged(path, f"its optimizer has parameter groups of {sizes} tensors, not this run's")
    params = [p for g in groups for p in g["params"]]
    for index, entry in saved["state"].items():
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(params):
            raise damaged(path, f"its optimizer state names the parameter {index!r}, which does not exist")
        if not isinstance(entry, dict):
            raise damaged(path, f"its optimizer state of parameter {index} is malformed")
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim and value.shape != params[index].shape:
                raise damaged(
                    path,
                    f"its optimizer's {key!r} of parameter {index} has shape {_shape(value)}, not the "
                    f"parameter's {_shape(params[index])}",
                )


def fsdp_options(**kwargs: Any) -> Any:
    """``StateDictOptions`` for full (unsharded) state dicts under FSDP2."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


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


def restore(session: Any, trainer: Any, state: dict[str, Any], path: Path, dist_ctx: Any = None) -> None:
    """Load a checked checkpoint into the session's objects and the trainer's counters.

    Raises:
        UsageError: If a state does not fit the rebuilt model, optimizer, regularizer or schedule.
    """
    check_model_state(state["model"], session.model, path)
    fsdp = dist_ctx is not None and dist_ctx.fsdp
    if not fsdp:
        _check_optimizer_state(state["optimizer"], session.optimizer, path)
    what = "model"
    try:
        if fsdp:
            from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

            options = fsdp_options(broadcast_from_rank0=True)
            set_model_state_dict(session.model, state["model"], options=options)
            what = "optimizer"
            optimizer_state = _by_name(state["optimizer"], session.model)
            set_optimizer_state_dict(session.model, session.optimizer, optimizer_state, options=options)
        else:
            session.model.load_state_dict(state["model"])
            what = "optimizer"
            session.optimizer.load_state_dict(state["optimizer"])
        for what, target in (("regularizer", session.regularizer), ("scheduler", session.scheduler)):
            if target is not None and state.get(what) is not None:
                target.load_state_dict(state[what])
        what = "random number generator"
        restore_rng(state["rng"], session.generator)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise damaged(path, f"its {what} state does not fit this run ({reason})") from None
    trainer.state.epoch = state["epoch"]
    trainer.state.step = state["step"]
    trainer.state.train_time_s = float(state["train_time_s"])
    trainer.state.samples = state["samples"]
    trainer.history = list(state["history"])


def _metrics_problem(name: str, prefix: bytes, epochs: int) -> str | None:
    if prefix and not prefix.endswith(b"\n"):
        return "its recorded length does not end a line"
    lines = prefix.decode("utf-8", errors="replace").splitlines()
    if name == "metrics.csv":
        if lines and not is_metrics_header(lines[0].split(",")):
            return "its first line is not the header of metrics.csv"
        return None
    found = 0
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except ValueError:
            return f"line {number} is not JSON"
        found += isinstance(row, dict) and row.get("kind") == "epoch"
    if found != epochs:
        return f"it holds {found} epoch row(s) where the checkpoint has {epochs}"
    return None


def check_metrics_files(out: Path, offsets: dict[str, int], epochs: int, path: Path) -> None:
    """Check that ``metrics.jsonl`` and ``metrics.csv`` hold at least what the checkpoint recorded.

    The resumed run truncates each file to its recorded length, so that length must exist, end a
    line, and (for ``metrics.jsonl``) hold exactly the checkpoint's epoch rows.

    Raises:
        UsageError: Naming the file and what is wrong with it.
    """
    for key, name in (("jsonl", "metrics.jsonl"), ("csv", "metrics.csv")):
        size, file = offsets[key], out / name
        try:
            fd = open_regular(file)
        except FileNotFoundError:
            if size == 0:
                continue
            problem: str | None = "it is missing"
        else:
            with os.fdopen(fd, "rb") as f:
                actual = os.fstat(f.fileno()).st_size
                if actual < size:
                    problem = f"it has {actual} bytes, fewer than the {size} recorded"
                else:
                    problem = _metrics_problem(name, f.read(size), epochs)
        if problem is not None:
            raise UsageError(
                f"'{file}' does not match the checkpoint '{path}': {problem} (one of the two was "
                "changed since the checkpoint was written); nothing was changed: restore it from a "
                "copy, or start the run again with --overwrite"
            )


def complete_summary(out: Path, total: int) -> dict[str, Any] | None:
    """The run's summary if it finished ``total`` epochs, else None."""
    path = out / "summary.json"
    if not os.path.lexists(path):
        return None
    summary = read_summary(path)
    if summary.get("epochs") == total and summary.get("status") == "completed":
        return summary
    return None


def read_resume_state(out: Path, cfg: TrainConfig, require_checkpoint: bool) -> dict[str, Any] | None:
    """Read and check the checkpoint a resumed run continues from (None: there is none)."""
    path = out / "checkpoint.pt"
    if not os.path.lexists(path):
        if require_checkpoint:
            raise UsageError(
                f"--resume: '{out}' has no checkpoint.pt (its run stopped before its first epoch "
                "ended); start it again with --overwrite"
            )
        return None
    state = load_checkpoint(path)
    check_train_state(state, path)
    total, done = cfg.epochs + cfg.finetune_epochs, state["epoch"]
    if done > total:
        least = done - cfg.finetune_epochs
        raise UsageError(
            f"--epochs {cfg.epochs} is fewer than the run in '{out}' has completed ({done} epoch(s)); "
            f"give --epochs {least} or more to continue it (nothing was changed)"
        )
    check_metrics_files(out, state["metrics_offsets"], done, path)
    return state
