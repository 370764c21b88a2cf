"""Bad input, one table: what a user or an attacker can hand the program, and its answer.

Each row builds one bad input (an argument, a file the program reads back, an environment
variable, a full disk), runs ``regtorch`` on it and expects one line on stderr with the exit
status and a message matching the row's pattern, no traceback, never torch's advice to load with
``weights_only=False``, and nothing changed: every file under the test's folder (a finished run,
a file outside the run that a link points to) is compared byte for byte before and after, and no
file or folder may appear or go (rows that legitimately write list what must stay the same).
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from regtorch.data import write_idx

TRAIN = ["--hidden", "16,8", "--epochs", "2", "--no-plots", "--quiet"]
RESUME = ["--epochs", "3", "--quiet", "--no-plots"]  # past the finished run: reads its checkpoint


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-epoch run of the tiny MLP on digits, copied by each row that needs it."""
    from regtorch.cli import main

    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *TRAIN, "--out", str(out)]) == 0
    return out


@dataclass
class Ctx:
    """What a row's builder gets: its folder, a fresh copy of the finished run, monkeypatch."""

    tmp: Path
    finished: Path
    monkeypatch: pytest.MonkeyPatch
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def run(self) -> Path:
        run = self.tmp / "run"
        shutil.copytree(self.finished, run, symlinks=True)
        return run

    def checkpoint(self, change: Callable[[dict], Any]) -> Path:
        """A run whose checkpoint is rewritten after ``change(state)``."""
        run = self.run()
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        change(state)
        torch.save(state, run / "checkpoint.pt")
        return run

    def hold_lock(self, folder: Path) -> None:
        """Have another process hold ``folder``'s run lock, as a running regtorch would."""
        folder.mkdir(parents=True, exist_ok=True)
        code = (
            "import fcntl, os, socket, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, f'{os.getpid()} {socket.gethostname()} 2026-01-01T00:00:00\\n'.encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n"
        )
        holder = subprocess.Popen(
            [sys.executable, "-c", code, str(folder / ".regtorch.lock")], stdout=subprocess.PIPE, text=True
        )
        self.cleanups.append(lambda: (holder.kill(), holder.wait()))
        assert holder.stdout.readline().strip() == "locked"

    def deny_writes_in(self, folder: Path) -> None:
        """Make creating files in ``folder`` fail as in a read-only folder (the tests may run as
        root, whom permissions do not stop)."""
        folder.chmod(0o555)
        self.cleanups.append(lambda: folder.chmod(0o755))
        real_open = os.open

        def guarded(path, flags, *args, **kwargs):
            if flags & os.O_CREAT and Path(path).parent == folder:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        self.monkeypatch.setattr(os, "open", guarded)


class Code:
    """Unpickling this runs ``os.system`` (a malicious checkpoint)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class FullDisk(io.RawIOBase):
    """A file object whose writes fail with ENOSPC after ``limit`` bytes."""

    def __init__(self, f, limit: int = 1000) -> None:
        self.f, self.left = f, limit

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.left -= len(data)
        if self.left < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)


# ------------------------------------------------------------------------------- builders
def _file(ctx: Ctx, name: str = "file") -> Path:
    (ctx.tmp / name).write_text("not a folder")
    return ctx.tmp / name


def _dangling(ctx: Ctx) -> Path:
    (ctx.tmp / "link").symlink_to(ctx.tmp / "missing")
    return ctx.tmp / "link"


def _read_only(ctx: Ctx) -> list[str]:
    (ctx.tmp / "ro").mkdir()
    ctx.deny_writes_in(ctx.tmp / "ro")
    return ["train", *TRAIN, "--out", ctx.tmp / "ro"]


def _in_use(command: str, *extra: str) -> Callable[[Ctx], list[str]]:
    def build(ctx: Ctx) -> list[str]:
        run = ctx.run()
        ctx.hold_lock(run)
        return [command, *extra, "--epochs", "1", "--no-plots", "--out", run]

    return build


def _no_checkpoint(ctx: Ctx) -> list[str]:
    """A run killed in its first epoch: config and metrics, no checkpoint, no summary."""
    run = ctx.run()
    (run / "checkpoint.pt").unlink()
    (run / "summary.json").unlink()
    return ["train", "--resume", "--out", run]


def _env(ctx: Ctx, args: list[str], **variables: str) -> list[str]:
    for name in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        ctx.monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        ctx.monkeypatch.setenv(name, value)
    return args


def _resume(run: Path) -> list[str]:
    return ["train", "--resume", *RESUME, "--out", run]


def _ckpt(change: Callable[[dict], Any]) -> Callable[[Ctx], list[str]]:
    return lambda ctx: _resume(ctx.checkpoint(change))


PATH = ["--hidden", "16,8", "--epochs", "1", "--steps", "2", "--penalty", "l1", "--no-plots", "--quiet"]


def _path_ckpt(change: Callable[[dict], Any]) -> Callable[[Ctx], list[str]]:
    """A finished two-stage path whose checkpoint is rewritten after ``change(state)``; resumed."""

    def build(ctx: Ctx) -> list[str]:
        from regtorch.cli import main

        run = ctx.tmp / "path"
        assert main(["path", *PATH, "--out", str(run)]) == 0
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        change(state)
        torch.save(state, run / "checkpoint.pt")
        return ["path", "--resume", "--quiet", "--out", run]

    return build


def _ckpt_bytes(make: Callable[[bytes, Ctx], bytes]) -> Callable[[Ctx], list[str]]:
    def build(ctx: Ctx) -> list[str]:
        run = ctx.run()
        path = run / "checkpoint.pt"
        path.write_bytes(make(path.read_bytes(), ctx))
        return _resume(run)

    return build


def _saved(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _replace_ckpt(make: Callable[[Path, Path], None]) -> Callable[[Ctx], list[str]]:
    """``make(run, checkpoint_path)`` replaces the checkpoint by something else."""

    def build(ctx: Ctx) -> list[str]:
        run = ctx.run()
        path = run / "checkpoint.pt"
        path.unlink()
        make(run, path)
        return _resume(run)

    return build


def _set(key: str, value: Any) -> Callable[[dict], None]:
    return lambda state: state.__setitem__(key, value)


def _first_adam_state(state: dict) -> None:
    state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)


def _offsets(jsonl: Any) -> Callable[[dict], None]:
    return lambda state: state["metrics_offsets"].__setitem__("jsonl", jsonl)


def _metrics(name: str, change: Callable[[bytes], bytes]) -> Callable[[Ctx], list[str]]:
    def build(ctx: Ctx) -> list[str]:
        run = ctx.run()
        (run / name).write_bytes(change((run / name).read_bytes()))
        return _resume(run)

    return build


def _link_outside(name: str) -> Callable[[Ctx], list[str]]:
    """The run's ``name`` replaced by a link to a file outside the run (which must not change)."""

    def build(ctx: Ctx) -> list[str]:
        run = ctx.run()
        victim = ctx.tmp / "outside.txt"
        victim.write_bytes((run / name).read_bytes())
        (run / name).unlink()
        (run / name).symlink_to(victim)
        return _resume(run)

    return build


def _tensorboard_link(ctx: Ctx) -> list[str]:
    run = ctx.run()
    (ctx.tmp / "elsewhere").mkdir()
    (run / "tensorboard").symlink_to(ctx.tmp / "elsewhere")
    return [*_resume(run), "--tensorboard"]


def _lock_link(ctx: Ctx) -> list[str]:
    run = ctx.run()
    (run / ".regtorch.lock").symlink_to(ctx.tmp / "outside.txt")
    return _resume(run)


def _report_fifo(ctx: Ctx) -> list[str]:
    run = ctx.run()
    (run / "metrics.jsonl").unlink()
    os.mkfifo(run / "metrics.jsonl")  # reading it would wait forever for a writer
    return ["report", run, "--quiet"]


def _config(change: Callable[[dict], Any]) -> Callable[[Ctx], list[str]]:
    def build(ctx: Ctx) -> list[str]:
        run = ctx.run()
        data = json.loads((run / "config.json").read_text())
        change(data)
        (run / "config.json").write_text(json.dumps(data))
        return _resume(run)

    return build


def _summary_damaged(command: str) -> Callable[[Ctx], list[str]]:
    def build(ctx: Ctx) -> list[str]:
        run = ctx.run()
        (run / "summary.json").write_text(json.dumps({"epochs": 2, "status": "completed"}))
        return ["train", "--resume", "--out", run] if command == "train" else ["report", run, "--quiet"]

    return build


def _report_damaged_compare(ctx: Ctx) -> list[str]:
    (ctx.tmp / "cmp").mkdir()
    (ctx.tmp / "cmp" / "compare.csv").write_text("label,test_accuracy\nl1,high\n")
    return ["report", ctx.tmp / "cmp"]


def _report_code_checkpoint(ctx: Ctx) -> list[str]:
    run = ctx.run()
    (run / "checkpoint.pt").write_bytes(_saved({"format": 1, "model": Code(f"touch {ctx.tmp}/pwned")}))
    return ["report", run, "--quiet"]


def _npz(make: Callable[[], dict[str, np.ndarray]]) -> Callable[[Ctx], list[str]]:
    def build(ctx: Ctx) -> list[str]:
        path = ctx.tmp / "data.npz"
        np.savez(path, **make())
        return ["train", *TRAIN, "--dataset", f"npz:{path}", "--out", ctx.tmp / "run"]

    return build


def _csv(rows: list[str]) -> Callable[[Ctx], list[str]]:
    def build(ctx: Ctx) -> list[str]:
        path = ctx.tmp / "data.csv"
        path.write_text("a,b,label\n" + "\n".join(rows) + "\n")
        return ["train", *TRAIN, "--dataset", f"csv:{path}", "--target", "label", "--out", ctx.tmp / "run"]

    return build


def _features(n: int) -> np.ndarray:
    return np.arange(2 * n, dtype=np.float64).reshape(n, 2)


def _npz_shape_lies(ctx: Ctx) -> list[str]:
    """An npz whose x array header announces 10**12 rows but stores 20."""
    header, y = io.BytesIO(), io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    np.save(y, np.arange(20) % 2)
    path = ctx.tmp / "data.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + _features(20).tobytes())
        archive.writestr("y.npy", y.getvalue())
    return ["train", *TRAIN, "--dataset", f"npz:{path}", "--out", ctx.tmp / "run"]


def _without(name: str) -> Callable[[Ctx], list[str]]:
    def build(ctx: Ctx) -> list[str]:
        run = ctx.run()
        (run / name).unlink()
        return _resume(run)

    return build


def _mnist_folder(ctx: Ctx, images: bytes | None = None) -> list[str]:
    folder = ctx.tmp / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28), np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte", (np.arange(20) % 10).astype(np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte", (np.arange(20) % 10).astype(np.uint8))
    if images is not None:
        (folder / "train-images-idx3-ubyte").unlink()
        (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    return ["train", *TRAIN, "--dataset", "mnist", "--data-dir", folder, "--out", ctx.tmp / "run"]


def _cifar_too_large(ctx: Ctx) -> list[str]:
    folder = ctx.tmp / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            f.truncate(70 * 2**20)  # sparse: takes no disk
    return ["train", *TRAIN, "--dataset", "cifar10", "--data-dir", ctx.tmp / "cifar", "--out", ctx.tmp / "run"]


def _disk_full_checkpoint(ctx: Ctx) -> list[str]:
    save = torch.save
    ctx.monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: save(obj, FullDisk(f), *a, **k))
    return _resume(ctx.run())


def _disk_full_metrics(ctx: Ctx) -> list[str]:
    from regtorch.training import _metrics

    real = _metrics.open_append

    def full(path, **kwargs):
        f = real(path, **kwargs)
        f.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return f

    ctx.monkeypatch.setattr(_metrics, "open_append", full)
    return _resume(ctx.run())


# ------------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    build: Callable[[Ctx], list[Any]]
    status: int
    pattern: str
    keep: tuple[str, ...] | None = None  # only these files must stay unchanged (None: everything)


DAMAGED = r"the checkpoint '.*checkpoint\.pt' cannot be used: {}; nothing was changed: restore it from a copy"
MISMATCH = r"'.*{}' does not match the checkpoint '.*checkpoint\.pt': {} \(one of the two was changed since"

CASES = [
    # ---- command-line arguments
    Case("threads-above-4x-cores", lambda c: ["train", *TRAIN, "--threads", "100000", "--out", c.tmp / "r"], 2,
         r"--threads must be <= \d+ \(4 x the \d+ CPU cores here\); got 100000"),
    Case("seed-beyond-64-bits", lambda c: ["train", *TRAIN, "--seed", str(2**64), "--out", c.tmp / "r"], 2,
         r"--seed must be <= 18446744073709551615; got 18446744073709551616"),
    Case("model-beyond-memory", lambda c: ["train", "--hidden", "100000000,100000000", "--out", c.tmp / "r"],
         2, r"the model's [\d,]+ parameters .* need [\d.]+ [KMGTP]B of memory, more than the [\d.]+ [KMGTP]B "
         r"this machine has available; use smaller layers \(--hidden\)"),
    Case("out-is-a-file", lambda c: ["train", *TRAIN, "--out", _file(c)], 2,
         r"--out '.*file' is a file, not a folder; choose another --out"),
    Case("out-below-a-file", lambda c: ["train", *TRAIN, "--out", _file(c) / "run"], 2,
         r"cannot create the output folder '.*file/run': '.*file' is a file; choose another --out"),
    Case("out-dangling-link", lambda c: ["train", *TRAIN, "--out", _dangling(c)], 2,
         r"the output folder '.*link' is a symbolic link to '.*missing', which does not exist"),
    Case("out-read-only", _read_only, 2,
         r"cannot write in the output folder '.*ro' \(Permission denied\); make it writable or choose"),
    Case("out-in-use", _in_use("train"), 2,
         r"the run folder '.*run' is in use by process \d+ on .*, since 2026-01-01 00:00:00; wait for that "
         r"run to end or choose another --out"),
    Case("overwrite-in-use", _in_use("train", "--overwrite"), 2, r"the run folder '.*run' is in use by process"),
    Case("resume-in-use", _in_use("train", "--resume"), 2, r"the run folder '.*run' is in use by process"),
    Case("compare-in-use", _in_use("compare", "l1", "--overwrite"), 2, r"the run folder '.*run' is in use"),
    Case("path-in-use", _in_use("path", "--steps", "2", "--overwrite"), 2, r"the run folder '.*run' is in use"),
    Case("resume-missing-folder", lambda c: ["train", "--resume", "--out", c.tmp / "nothing"], 2,
         r"--resume: '.*nothing' holds no run to resume; start one without --resume"),
    Case("resume-without-checkpoint", _no_checkpoint, 2,
         r"--resume: '.*run' has no checkpoint\.pt \(its run stopped before its first epoch ended\); start "
         r"it again with --overwrite"),
    Case("resume-fewer-epochs", lambda c: ["train", "--resume", "--epochs", "1", "--out", c.run()], 2,
         r"--epochs 1 is fewer than the run in '.*run' has completed \(2 epoch\(s\)\); give --epochs 2 or "
         r"more to continue it \(nothing was changed\)"),
    Case("plots-dir-below-a-file", lambda c: ["report", c.run(), "--plots-dir", _file(c) / "x"], 2,
         r"--plots-dir: cannot create '.*file/x'"),
    # ---- environment variables
    Case("local-world-size-not-a-number",
         lambda c: _env(c, ["train", *TRAIN, "--out", c.tmp / "r"], LOCAL_WORLD_SIZE="abc"), 2,
         r"the environment variable LOCAL_WORLD_SIZE must be an integer >= 1; got 'abc'"),
    Case("torchrun-variables-without-torchrun",
         lambda c: _env(c, ["train", *TRAIN, "--out", c.tmp / "r"], WORLD_SIZE="1", RANK="0"), 2,
         r"WORLD_SIZE and RANK are set, so this runs as one process of a torchrun launch, but the process "
         r"group does not start \(.*MASTER_ADDR.*\); launch with 'torchrun .*', or unset WORLD_SIZE and RANK"),
    Case("torchrun-rank-not-a-number",
         lambda c: _env(c, ["train", *TRAIN, "--out", c.tmp / "r"], WORLD_SIZE="two", RANK="0"), 2,
         r"bad torchrun environment \(WORLD_SIZE/RANK/LOCAL_RANK\)"),
    # ---- the checkpoint a resumed run reads back
    Case("checkpoint-empty", _ckpt_bytes(lambda data, c: b""), 2,
         r"the checkpoint '.*checkpoint\.pt' is empty or truncated; nothing was changed"),
    Case("checkpoint-truncated", _ckpt_bytes(lambda data, c: data[: len(data) // 2]), 2,
         r"the checkpoint '.*checkpoint\.pt' is damaged or not a torch file \(.*\); nothing was changed"),
    Case("checkpoint-runs-code", _ckpt_bytes(lambda data, c: _saved({"format": 1, "x": Code(f"touch {c.tmp}/pwned")})),
         2, r"the checkpoint '.*' holds objects other than tensors, numbers, strings and containers \(it "
         r"refers to (posix|os)\.system\); regtorch does not load such files because loading them could run code"),
    Case("checkpoint-foreign", _ckpt_bytes(lambda data, c: _saved({"weights": torch.zeros(2)})), 2,
         r"'.*checkpoint\.pt' is not a regtorch checkpoint \(format 1\)"),
    Case("checkpoint-without-model", _ckpt(lambda s: s.pop("model")), 2,
         DAMAGED.format("it holds no model state")),
    Case("checkpoint-model-not-tensors", _ckpt(_set("model", {"fc1.weight": "zeros"})), 2,
         DAMAGED.format("its model state holds str under 'fc1.weight', not a tensor")),
    Case("checkpoint-model-wrong-shape", _ckpt(lambda s: s["model"].__setitem__("fc1.weight", torch.zeros(4, 64))),
         2, DAMAGED.format(r"its fc1\.weight has shape \(4, 64\) where this run's model has \(16, 64\)")),
    Case("checkpoint-other-model", _ckpt(lambda s: s["model"].pop("fc3.bias")), 2,
         DAMAGED.format("its model state lacks fc3.bias: it is not from this run's model")),
    Case("checkpoint-epoch-not-integer", _ckpt(_set("epoch", "two")), 2,
         DAMAGED.format("'epoch' must be an integer >= 0; got 'two'")),
    Case("checkpoint-step-below-epochs", _ckpt(_set("step", -1)), 2,
         DAMAGED.format("'step' must be an integer >= 2; got -1")),
    Case("checkpoint-time-not-finite", _ckpt(_set("train_time_s", float("nan"))), 2,
         DAMAGED.format("'train_time_s' must be a number of seconds >= 0; got nan")),
    Case("checkpoint-history-mismatch", _ckpt(lambda s: s["history"].pop()), 2,
         DAMAGED.format(r"it records 2 epoch\(s\) but holds 1 epoch row\(s\)")),
    Case("checkpoint-optimizer-missing", _ckpt(_set("optimizer", None)), 2,
         DAMAGED.format("the optimizer state is missing or malformed")),
    Case("checkpoint-optimizer-state-shape", _ckpt(_first_adam_state), 2,
         DAMAGED.format(r"its optimizer's 'exp_avg' of parameter 0 has shape \(3\), not the parameter's "
                        r"\(16, 64\)")),
    Case("checkpoint-optimizer-unknown-parameter",
         _ckpt(lambda s: s["optimizer"]["state"].__setitem__(99, {"step": torch.tensor(1.0)})), 2,
         DAMAGED.format("its optimizer state names the parameter 99, which does not exist")),
    Case("checkpoint-scheduler-malformed", _ckpt(_set("scheduler", 5)), 2,
         DAMAGED.format("the scheduler state is malformed")),
    Case("checkpoint-rng-malformed", _ckpt(lambda s: s["rng"].__setitem__("torch", torch.zeros(3))), 2,
         DAMAGED.format("its random number generator states are missing or malformed")),
    Case("checkpoint-rng-wrong-size",
         _ckpt(lambda s: s["rng"].__setitem__("torch", torch.zeros(3, dtype=torch.uint8))), 2,
         DAMAGED.format(r"its random number generator state does not fit this run \(.*\)")),
    Case("path-checkpoint-model-wrong-shape",
         _path_ckpt(lambda s: s["model"].__setitem__("fc1.weight", torch.zeros(4, 64))), 2,
         DAMAGED.format(r"its fc1\.weight has shape \(4, 64\) where this run's model has \(16, 64\)")),
    Case("path-checkpoint-stage-beyond-the-path", _path_ckpt(_set("stage", 7)), 2,
         DAMAGED.format(r"its stage is 7, not an integer in \[0, 2\]")),
    Case("path-checkpoint-rows-missing", _path_ckpt(lambda s: s["rows"].pop()), 2,
         DAMAGED.format(r"it records stage 2 but not 2 result row\(s\)")),
    Case("path-checkpoint-other-strengths", _path_ckpt(lambda s: s["strengths"].reverse()), 2,
         DAMAGED.format(r"its strengths are not this path's \(see config\.json\)")),
    Case("path-checkpoint-rng-wrong-size",
         _path_ckpt(lambda s: s["rng"].__setitem__("batches", torch.zeros(3, dtype=torch.uint8))), 2,
         DAMAGED.format(r"its 'batches' random number generator state is invalid")),
    Case("checkpoint-link", _replace_ckpt(lambda run, p: p.symlink_to(run.parent / "elsewhere.pt")), 2,
         r"'.*checkpoint\.pt' is a symbolic link; regtorch never reads or writes a run's files through links"),
    Case("checkpoint-folder", _replace_ckpt(lambda run, p: p.mkdir()), 2,
         r"'.*checkpoint\.pt' is not a regular file; remove it or choose another folder"),
    Case("checkpoint-fifo", _replace_ckpt(lambda run, p: os.mkfifo(p)), 2,
         r"'.*checkpoint\.pt' is not a regular file"),
    # ---- the metrics files a resumed run truncates and appends to
    Case("offset-negative", _ckpt(_offsets(-5)), 2, DAMAGED.format("'jsonl' must be an integer >= 0; got -5")),
    Case("offset-10-terabytes", _ckpt(_offsets(10**13)), 2,
         MISMATCH.format("metrics.jsonl", r"it has \d+ bytes, fewer than the 10000000000000 recorded")),
    Case("offset-mid-line", _ckpt(lambda s: s["metrics_offsets"].__setitem__("jsonl", s["metrics_offsets"]["jsonl"] - 3)),
         2, MISMATCH.format("metrics.jsonl", "its recorded length does not end a line")),
    Case("metrics-shorter", _metrics("metrics.jsonl", lambda d: d[: len(d) // 2]), 2,
         MISMATCH.format("metrics.jsonl", r"it has \d+ bytes, fewer than the \d+ recorded")),
    Case("metrics-missing", _without("metrics.csv"), 2, MISMATCH.format("metrics.csv", "it is missing")),
    Case("metrics-epoch-row-edited",
         _metrics("metrics.jsonl", lambda d: d.replace(b'"kind": "epoch"', b'"kind": "epocX"', 1)), 2,
         MISMATCH.format("metrics.jsonl", r"it holds 1 epoch row\(s\) where the checkpoint has 2")),
    Case("metrics-not-json", _metrics("metrics.jsonl", lambda d: b"#" * d.index(b"\n") + d[d.index(b"\n"):]), 2,
         MISMATCH.format("metrics.jsonl", "line 1 is not JSON")),
    Case("metrics-csv-header-edited", _metrics("metrics.csv", lambda d: d.replace(b"kind", b"KIND", 1)), 2,
         MISMATCH.format("metrics.csv", "its first line is not the header of metrics.csv")),
    Case("metrics-jsonl-link-outside", _link_outside("metrics.jsonl"), 2,
         r"'.*metrics\.jsonl' is a symbolic link; regtorch never reads or writes a run's files through links"),
    Case("metrics-csv-link-outside", _link_outside("metrics.csv"), 2, r"'.*metrics\.csv' is a symbolic link"),
    Case("tensorboard-link-outside", _tensorboard_link, 2,
         r"'.*tensorboard' is a symbolic link; regtorch never writes a run's files through links: remove it"),
    Case("lock-file-link", _lock_link, 2, r"'.*run/\.regtorch\.lock' is a symbolic link; remove it"),
    # ---- config.json and summary.json
    Case("config-not-json", _metrics("config.json", lambda d: d[:-10]), 2,
         r"'.*config\.json' is not valid JSON \(.*\); it was damaged or not written by regtorch"),
    Case("config-bad-value", _config(lambda d: d["config"].__setitem__("epochs", -1)), 2,
         r"'.*config\.json' holds an invalid configuration \(--epochs must be >= 1; got -1\); it was damaged"),
    Case("config-bad-hidden", _config(lambda d: d["config"].__setitem__("hidden", "ab")), 2,
         r"'.*config\.json' holds an invalid configuration \(.*\); it was damaged or edited"),
    Case("config-unknown-key", _config(lambda d: d["config"].__setitem__("evil", 1)), 2,
         r"holds an invalid configuration \(unknown configuration key\(s\): evil\)"),
    Case("config-not-a-dict", _config(lambda d: d.__setitem__("config", [1, 2])), 2,
         r"'.*config\.json' holds no training configuration"),
    Case("config-link-outside", _link_outside("config.json"), 2, r"'.*config\.json' is a symbolic link"),
    Case("summary-damaged", _summary_damaged("train"), 2,
         r"'.*summary\.json' is damaged \(KeyError: 'test_accuracy'\); remove it and continue the run with --resume"),
    Case("report-summary-damaged", _summary_damaged("report"), 2, r"'.*summary\.json' is damaged \(KeyError"),
    Case("report-compare-csv-damaged", _report_damaged_compare, 2,
         r"'.*compare\.csv' is damaged \((KeyError|ValueError).*\); it was not written by regtorch"),
    Case("report-metrics-fifo", _report_fifo, 2, r"'.*metrics\.jsonl' is not a regular file"),
    Case("report-checkpoint-runs-code", _report_code_checkpoint, 2,
         r"holds objects other than tensors.*could run code; nothing was changed"),
    # ---- data files
    Case("npz-is-a-folder", lambda c: ["train", *TRAIN, "--dataset", f"npz:{c.tmp}", "--out", c.tmp / "r"], 2,
         r"The npz file '.*' is a folder; expected a file\."),
    Case("csv-is-a-device", lambda c: ["train", *TRAIN, "--dataset", "csv:/dev/zero", "--target", "y",
                                       "--out", c.tmp / "r"], 2,
         r"The CSV file '/dev/zero' is not a regular file \(a device or a pipe\?\); expected a file\."),
    Case("npz-single-class", _npz(lambda: {"x": _features(20), "y": np.ones(20)}), 2,
         r"npz file '.*' has a single class \(every label is '1'\); a classifier needs examples of at least 2"),
    Case("csv-single-class", _csv([f"{i},{i},cat" for i in range(20)]), 2,
         r"CSV file '.*' has a single class \(every label is 'cat'\)"),
    Case("npz-float-labels", _npz(lambda: {"x": _features(20), "y": np.arange(20) / 2}), 2,
         r"Labels in npz file '.*' must be integer class ids or strings; found the value \d+\.5 \(regression"),
    Case("csv-float-labels", _csv([f"{i},{i},{i / 2}" for i in range(20)]), 2,
         r"Labels in CSV file '.*' must be integer class ids or strings; found the value \d+\.5 \(regression"),
    Case("npz-too-many-classes", _npz(lambda: {"x": _features(10_001), "y": np.arange(10_001)}), 2,
         r"npz file '.*' has 10,001 distinct labels; at most 10,000 classes are supported"),
    Case("npz-shape-lies", _npz_shape_lies, 2,
         r"x in npz file '.*' declares shape \(1000000000000,\) of float64 \(8,000,000,000,000 bytes\) but "
         r"holds 320 bytes; the file is damaged"),
    Case("idx-header-beyond-memory",
         lambda c: _mnist_folder(c, bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 28)), 2,
         r"IDX file '.*train-images-idx3-ubyte\.gz' declares [\d,]+ bytes of data that need .* of memory"),
    Case("idx-gzip-bomb",
         lambda c: _mnist_folder(c, bytes([0, 0, 8, 3]) + struct.pack(">3I", 20, 28, 28) + bytes(10**7)), 2,
         r"IDX file '.*\.gz' has trailing bytes: expected 15696 bytes of data for shape \(20, 28, 28\), found "
         r"more than 15696"),
    Case("cifar-batch-too-large", _cifar_too_large, 2,
         r"CIFAR-10 batch '.*data_batch_1' has 73,400,320 bytes; a batch of 10,000 images has about 31 MB"),
    # ---- the disk
    Case("disk-full-checkpoint", _disk_full_checkpoint, 2,
         r"cannot write '.*checkpoint\.pt': no space left on the device; the previous 'checkpoint\.pt', if any, "
         r"is unchanged; completed epochs are in that checkpoint: make room, then continue the run with --resume",
         keep=("run/checkpoint.pt",)),
    Case("disk-full-metrics", _disk_full_metrics, 2,
         r"cannot write the metrics of '.*run': no space left on the device; completed epochs are in the "
         r"checkpoint: make room, then continue the run with --resume", keep=("run/checkpoint.pt",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, cli, tmp_path, finished_run, monkeypatch):
    ctx = Ctx(tmp_path, finished_run, monkeypatch)
    try:
        argv = case.build(ctx)
        before = _snapshot(tmp_path)
        result = cli(*argv)
        after = _snapshot(tmp_path)
    finally:
        monkeypatch.undo()
        for cleanup in ctx.cleanups:
            cleanup()
    assert result.status == case.status, result
    assert result.err.endswith("\n") and result.err.count("\n") == 1, result.err
    line = result.err.strip()
    assert line.startswith(f"regtorch {argv[0]}: error: "), line
    assert re.search(case.pattern, line), f"{case.pattern!r} not found in {line!r}"
    assert "Traceback" not in result.err and "weights_only" not in result.err
    if case.keep is None:
        assert after == before, _difference(before, after)
    else:
        for name in case.keep:
            assert after[name] == before[name], f"{name} changed"
        assert not [n for n in after if n.endswith(".tmp")], "a temporary file was left"


def test_the_table_is_large_enough():
    # One row per refusal fixed or found; the count is reported with the changes.
    assert len(CASES) == len({c.id for c in CASES}) >= 70


def _snapshot(root: Path) -> dict[str, Any]:
    """Every entry under ``root``: a link's target, a file's bytes, a folder, or another kind."""
    entries: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            entries[name] = ("link", os.readlink(path))
        elif path.is_file():
            size = path.stat().st_size
            entries[name] = ("file", size, path.read_bytes() if size < 2**20 else path.stat().st_mtime_ns)
        elif path.is_dir():
            entries[name] = ("folder",)
        else:
            entries[name] = ("other",)
    return entries


def _difference(before: dict[str, Any], after: dict[str, Any]) -> str:
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    return (
        f"appeared {sorted(after.keys() - before.keys())}, went {sorted(before.keys() - after.keys())}, "
        f"changed {changed}"
    )
