"""The four commands: ``train``, ``compare``, ``path`` and ``report``."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from regtorch.cli._parser import CONFIG_OPTIONS
from regtorch.training._config import TrainConfig
from regtorch.training._distributed import launched_by_torchrun
from regtorch.training._errors import RunFailed, UsageError
from regtorch.training._metrics import clean_json
from regtorch.training._progress import Reporter

__all__ = ["COMMANDS", "COMPARE_DEFAULTS", "PATH_DEFAULTS", "sigterm_raises", "stop_advice"]

#: Defaults of ``regtorch compare`` that differ from ``train``'s: plain SGD, where a strength
#: means the same in loss and prox modes, long enough for the penalties to act on digits.
COMPARE_DEFAULTS: dict[str, Any] = {"epochs": 30, "l1": 2e-3, "l2": 3e-3, "strength": 0.02}
#: Defaults of ``regtorch path``: L1 in prox mode (exact zeros), 10 epochs per strength.
PATH_DEFAULTS: dict[str, Any] = {"penalty": "l1", "mode": "prox", "epochs": 10}
_PLAIN_SGD: dict[str, Any] = {"optimizer": "sgd", "momentum": 0.0, "lr": 0.1}


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """Return the configuration options the user gave (argparse stores nothing else)."""
    return {name: getattr(args, name) for name in CONFIG_OPTIONS if hasattr(args, name)}


def _check_resume(args: argparse.Namespace) -> None:
    """Refuse ``--resume`` without ``--out``; name the default run folder now (messages use it)."""
    if getattr(args, "resume", False) and args.out is None:
        raise UsageError("--resume needs --out RUN_DIR: the folder of the run to continue")
    if args.out is None and not launched_by_torchrun():
        from regtorch.training._rundir import default_out_dir

        args.out = str(default_out_dir(args.command))


def stop_advice(args: argparse.Namespace | None) -> str:
    """What to do after an interrupted command: ``"; continue with: regtorch ... --resume ..."``."""
    out = getattr(args, "out", None)
    if args is None or args.command == "report" or out is None:
        return ""
    folder, command = Path(out), args.command
    again = f"regtorch {command} --resume --out {shlex.quote(str(folder))}"
    if (folder / "checkpoint.pt").is_file() or (command != "train" and (folder / "config.json").is_file()):
        return f"; what was completed is saved in '{folder}': continue with: {again}"
    if (folder / "config.json").is_file():
        return (
            f"; no epoch was completed, so '{folder}' has nothing to resume: run the same command "
            "again with --overwrite"
        )
    return f"; nothing was written to '{folder}'"


def _reporter(args: argparse.Namespace) -> Reporter:
    return Reporter(sys.stderr if args.json else sys.stdout, quiet=args.quiet)


def _emit_json(args: argparse.Namespace, payload: Any) -> None:
    if args.json:
        print(json.dumps(clean_json(payload), indent=2), flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    """``regtorch train``: one configuration."""
    _check_resume(args)
    given = _given(args)
    cfg = TrainConfig(**given)
    cfg.validate()
    if not args.resume:
        cfg.check_unused_strengths()
    from regtorch.training._run import run_train

    if not launched_by_torchrun():
        if args.fsdp:
            raise UsageError(
                "--fsdp needs several processes: launch with "
                "'torchrun --nproc-per-node N -m regtorch train ...'"
            )
        summary = run_train(cfg, args.out, **_train_kwargs(args, given))
        _emit_json(args, summary)
        return 0
    return _train_distributed(args, cfg, given)


def _train_kwargs(args: argparse.Namespace, given: dict[str, Any]) -> dict[str, Any]:
    return {
        "resume": args.resume,
        "overwrite": args.overwrite,
        "explicit": list(given),
        "reporter": _reporter(args),
        "plots": not args.no_plots,
        "shrink": args.shrink,
        "tensorboard": args.tensorboard,
        "require_checkpoint": True,
    }


def _train_distributed(args: argparse.Namespace, cfg: TrainConfig, given: dict[str, Any]) -> int:
    """``regtorch train`` as one rank of a ``torchrun`` launch."""
    from regtorch.training._distributed import TIMEOUT_S, SilentReporter, init_distributed
    from regtorch.training._run import run_train
    from regtorch.training._rundir import default_out_dir

    if args.fsdp and args.shrink:
        raise UsageError("--shrink works on whole layers; it is not available with --fsdp (use DDP)")
    ctx = init_distributed(cfg.device, args.fsdp)
    try:
        if cfg.batch_size % ctx.world:
            raise UsageError(
                f"--batch-size {cfg.batch_size} is the global batch and must be divisible by the "
                f"{ctx.world} processes; use a multiple of {ctx.world}"
            )
        if args.out is None:
            args.out = ctx.broadcast(str(default_out_dir("train")) if ctx.is_main else None)
        kwargs = _train_kwargs(args, given)
        if not ctx.is_main:
            kwargs["reporter"] = SilentReporter()
        def stopped() -> RunFailed:
            return RunFailed(
                f"rank {ctx.rank}: stopped by torchrun (SIGTERM): another process of the launch died "
                f"or a collective failed{stop_advice(args)}"
            )

        try:
            with sigterm_raises(stopped):
                summary = run_train(cfg, args.out, dist_ctx=ctx, **kwargs)
        except RuntimeError as exc:  # a collective failed: a rank died or timed out
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunFailed(
                f"rank {ctx.rank}: a collective failed ({first[:300]}); another process of the "
                f"launch died or stopped answering (timeout {TIMEOUT_S}s){stop_advice(args)}"
            ) from exc
        if ctx.is_main:
            _emit_json(args, summary)
        ctx.barrier()  # every rank is done with collectives before any destroys the group
        return 0
    finally:
        ctx.close()


@contextlib.contextmanager
def sigterm_raises(make_error: Callable[[], BaseException]) -> Iterator[None]:
    """Raise ``make_error()`` on SIGTERM while the block runs (then restore the previous handler).

    The command line turns SIGTERM into an interrupt (the run ends like Ctrl-C, with one line);
    under torchrun, which stops the other ranks with SIGTERM as soon as one fails, a rank that
    gets it before its own collective fails still ends with one readable line. Outside the main
    thread (where signal handlers cannot be set) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise make_error()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _with_defaults(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    values = dict(defaults)
    if "optimizer" not in given:
        values.update(_PLAIN_SGD)
    values.update(given)
    return values


def cmd_compare(args: argparse.Namespace) -> int:
    """``regtorch compare``: several configurations, one table."""
    _check_resume(args)
    from regtorch.training._compare import run_compare

    given = _given(args)
    base = TrainConfig(**_with_defaults(COMPARE_DEFAULTS, given))
    base.validate()
    rows = run_compare(
        base,
        args.configs,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        explicit=list(given),
        reporter=_reporter(args),
        plots=not args.no_plots,
    )
    _emit_json(args, rows)
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    """``regtorch path``: a regularization path."""
    _check_resume(args)
    from regtorch.training._path import run_path

    given = _given(args)
    for name in ("l1", "l2", "alpha", "strength"):
        if name in given:
            raise UsageError(
                f"regtorch path sets the strengths itself: give --max/--min and --steps instead of --{name}"
            )
    base = TrainConfig(**_with_defaults(PATH_DEFAULTS, given))
    base.validate()
    rows = run_path(
        base,
        args.out,
        steps=getattr(args, "steps", 8),
        max_strength=getattr(args, "max_strength", None),
        min_strength=getattr(args, "min_strength", None),
        resume=args.resume,
        overwrite=args.overwrite,
        explicit=list(given),
        reporter=_reporter(args),
        plots=not args.no_plots,
    )
    _emit_json(args, rows)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``regtorch report RUN_DIR``: redraw and summarize."""
    from regtorch.training._report import run_report

    result = run_report(
        args.run_dir, reporter=_reporter(args), plots=not args.no_plots, plots_dir=args.plots_dir
    )
    _emit_json(args, result)
    return 0


COMMANDS = {"train": cmd_train, "compare": cmd_compare, "path": cmd_path, "report": cmd_report}
