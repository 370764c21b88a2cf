"""``regtorch train`` under ``torchrun`` (gloo, CPU, 2 processes): DDP, FSDP2, resume, a dead rank.

Each launch is ``python -m torch.distributed.run --nproc-per-node 2 -m regtorch train ...`` in a
subprocess bounded by a timeout; a single-process run of the same global batch is the reference.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist
from cli_helpers import read_json

from regtorch.training._distributed import TIMEOUT_S

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

ARGS = ["--hidden", "16,8", "--lr", "0.01", "--penalty", "l1", "--mode", "prox", "--no-plots"]
TIMEOUT = 120


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def torchrun(*args, env=None) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_port()),
        "-m", "regtorch", "train", *map(str, args),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env or _env())


def single(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "regtorch", "train", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    result = single("--epochs", "2", *ARGS, "--out", out)
    assert result.returncode == 0, result.stderr
    return read_json(out / "summary.json")


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_torchrun_matches_single_process(engine, reference, tmp_path):
    out = tmp_path / "run"
    extra = ["--fsdp"] if engine == "fsdp" else []
    result = torchrun("--epochs", "2", *ARGS, *extra, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_json(out / "summary.json")
    # The ranks' shares make up each global batch exactly: the result is the single process's
    # (observed equal to the last digit; the test allows 1 point).
    assert abs(summary["test_accuracy"] - reference["test_accuracy"]) <= 0.01
    assert summary["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-4)
    assert summary["zero_fraction"] == pytest.approx(reference["zero_fraction"], abs=1e-3)
    # Only rank 0 prints: one result line.
    assert result.stdout.count("test accuracy") == 1
    assert {"checkpoint.pt", "summary.json", "metrics.csv", "config.json"} <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize("engine", ["ddp", "fsdp", "single-then-fsdp"])
def test_torchrun_resume(engine, reference, tmp_path):
    out = tmp_path / "run"
    extra = ["--fsdp"] if "fsdp" in engine else []
    first_run = single if engine.startswith("single") else torchrun
    first = first_run("--epochs", "1", *ARGS, *([] if first_run is single else extra), "--out", out)
    assert first.returncode == 0, first.stderr[-3000:]
    assert read_json(out / "summary.json")["epochs"] == 1
    second = torchrun("--epochs", "2", "--resume", *extra, "--out", out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resuming" in second.stdout
    summary = read_json(out / "summary.json")
    assert summary["epochs"] == 2
    assert summary["test_accuracy"] == pytest.approx(reference["test_accuracy"], abs=0.01)
    assert summary["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-4)


def test_dead_rank_ends_the_run(tmp_path):
    # dying_rank.py makes rank 1 call os._exit(1) after 50 steps (epoch 2: epoch 1 has 38), by
    # patching the trainer.
    status_dir = tmp_path / "status"
    status_dir.mkdir()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_port()),
        str(Path(__file__).with_name("dying_rank.py")), "1", "50", str(status_dir),
        "train", "--epochs", "3", *ARGS, "--out", str(tmp_path / "run"),
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-3000:]
    assert elapsed < TIMEOUT_S  # ended by the failure, not by the collective's timeout
    lines = [line for line in result.stderr.splitlines() if line.startswith("regtorch train")]
    assert len(lines) == 1, result.stderr[-3000:]  # the surviving rank's one line
    assert "a collective failed" in lines[0] or "stopped by torchrun (SIGTERM)" in lines[0], lines
    assert f"continue with: regtorch train --resume --out {tmp_path / 'run'}" in lines[0]
    assert (status_dir / "rank0").read_text() == "1"  # the survivor ended with status 1
    assert not (status_dir / "rank1").exists()  # the dead rank never got there


def test_global_batch_must_divide(tmp_path):
    result = torchrun("--batch-size", "33", *ARGS, "--out", tmp_path / "run")
    assert result.returncode != 0
    assert "must be divisible by the 2 processes" in result.stderr


def test_fsdp_without_torchrun_is_usage_error(cli, tmp_path):
    result = cli("train", "--fsdp", "--out", tmp_path / "run")
    assert result.status == 2
    assert "torchrun" in result.err and len(result.err.strip().splitlines()) == 1


def test_torchrun_finetune_shrink_tensorboard(tmp_path):
    args = ["--hidden", "64,32", "--lr", "0.01", "--penalty", "group", "--strength", "2.5", "--mode", "prox",
            "--epochs", "2", "--finetune-epochs", "1", "--no-plots"]  # fmt: skip
    ref = single(*args, "--out", tmp_path / "single")
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "run"
    result = torchrun(*args, "--shrink", "--tensorboard", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = read_json(out / "summary.json"), read_json(tmp_path / "single" / "summary.json")
    assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=0.01)
    assert a["zero_fraction"] == pytest.approx(b["zero_fraction"], abs=1e-3)
    assert a["finetune"]["epochs"] == 1
    assert a["shrink"]["test_accuracy_after"] == a["shrink"]["test_accuracy_before"]
    assert len(list((out / "tensorboard").iterdir())) == 1  # rank 0 only


def test_end_rank_flushes_output_and_exits_with_the_status():
    code = (
        "import sys; from regtorch.training import _distributed as d\n"
        "assert not d.joined_process_group()\n"
        "print('to stdout', end=''); print('to stderr', end='', file=sys.stderr)\n"
        "d.end_rank(3)\n"
        "print('not reached')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert (result.returncode, result.stdout, result.stderr) == (3, "to stdout", "to stderr")
