"""The run folder's guarantees: one writer, stale locks and temporary files, ``--overwrite`` keeps
the old run until the new one has a checkpoint, SIGTERM and Ctrl-C end with the resume command,
``report`` leaves a read-only folder alone."""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import FAST, StopAfter, assert_png, read_json

from regtorch.training import Reporter, TrainConfig, UsageError, run_train
from regtorch.training._runlock import ASIDE_NAME, LOCK_NAME

LONG = ["--hidden", "16,8", "--epochs", "500", "--no-plots", "--batch-size", "8"]
TIMEOUT = 120


def _start(*args, cwd=None) -> subprocess.Popen:
    """``regtorch train ARGS`` in its own process (SIGINT not ignored, as in a terminal)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "regtorch", "train", *map(str, args)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, err


@pytest.mark.parametrize(("sig", "status", "words"), [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                      (signal.SIGINT, 130, "interrupted")])  # fmt: skip
def test_a_second_writer_is_refused_and_a_signal_ends_with_the_resume_command(cli, tmp_path, sig, status, words):
    out = tmp_path / "run"
    proc = _start(*LONG, "--out", out)
    try:
        _wait_for(out / "checkpoint.pt", proc)
        second = cli("train", *FAST, "--overwrite", "--out", out)
        assert second.status == 2
        assert f"the run folder '{out}' is in use by process {proc.pid} on " in second.err
        code, err = _stop(proc, sig)
    finally:
        proc.kill()
        proc.wait()
    assert code == status
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"regtorch train: error: {words}; what was completed is saved in '{out}': ")
    assert err.strip().endswith(f"continue with: regtorch train --resume --out {shlex.quote(str(out))}")
    assert not (out / LOCK_NAME).exists()  # released
    epochs = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    resumed = cli("train", "--resume", "--epochs", str(epochs + 1), "--out", out, "--quiet")
    assert resumed.status == 0, resumed
    assert read_json(out / "summary.json")["epochs"] == epochs + 1


def test_an_interrupt_names_the_default_run_folder(tmp_path):
    proc = _start(*LONG, cwd=tmp_path)  # no --out: runs/train-<time>
    try:
        deadline = time.monotonic() + TIMEOUT
        while not list(tmp_path.glob("runs/train-*/checkpoint.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        code, err = _stop(proc, signal.SIGINT)
    finally:
        proc.kill()
        proc.wait()
    (folder,) = tmp_path.glob("runs/train-*")
    assert code == 130
    assert f"continue with: regtorch train --resume --out runs/{folder.name}\n" in err
    assert "DIR" not in err


def test_a_lock_left_by_a_killed_process_is_taken_over(cli, tmp_path):
    out = tmp_path / "run"
    proc = _start(*LONG, "--out", out)
    try:
        _wait_for(out / "checkpoint.pt", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
        proc.wait()
    assert (out / LOCK_NAME).read_text().startswith(f"{proc.pid} ")  # left behind, stale
    epochs = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    resumed = cli("train", "--resume", "--epochs", str(epochs + 1), "--out", out, "--quiet")
    assert resumed.status == 0, resumed
    assert not (out / LOCK_NAME).exists()


def test_temporary_files_of_a_killed_write_are_removed(cli, tmp_path):
    assert cli("train", *FAST, "--out", tmp_path, "--quiet").status == 0
    stale = [tmp_path / ".checkpoint.pt.k2j_x9a1.tmp", tmp_path / ".summary.json.abcdefgh.tmp"]
    kept = [tmp_path / ".checkpoint.pt.tmp", tmp_path / "notes.tmp"]  # not atomic_write's names
    for path in stale + kept:
        path.write_bytes(b"partial")
    assert cli("train", "--resume", "--epochs", "2", "--out", tmp_path, "--quiet").status == 0
    assert not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"partial" for p in kept)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_overwrite_keeps_the_old_run_when_the_new_one_diverges(cli, tmp_path):
    assert cli("train", *FAST, "--out", tmp_path, "--quiet").status == 0
    before = _files(tmp_path)
    bad = cli("train", *FAST, "--overwrite", "--optimizer", "sgd", "--lr", "1e12", "--out", tmp_path)
    assert bad.status == 1 and "training diverged" in bad.err
    assert _files(tmp_path) == before
    assert not (tmp_path / ASIDE_NAME).exists()


def test_overwrite_keeps_the_old_run_until_the_first_checkpoint(tmp_path):
    quiet = Reporter(quiet=True)
    config = TrainConfig(hidden=(16, 8), epochs=2)
    run_train(config, tmp_path, reporter=quiet, plots=False)
    before = _files(tmp_path)
    with pytest.raises(KeyboardInterrupt):  # during epoch 1 of the new run
        run_train(config.replace(seed=1), tmp_path, overwrite=True, reporter=quiet, plots=False,
                  callbacks=[StopAfter(5)])  # fmt: skip
    assert _files(tmp_path) == before
    with pytest.raises(KeyboardInterrupt):  # during epoch 2: the new run has its first checkpoint
        run_train(config.replace(seed=1), tmp_path, overwrite=True, reporter=quiet, plots=False,
                  callbacks=[StopAfter(50)])  # fmt: skip
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / ASIDE_NAME).exists()
    assert read_json(tmp_path / "config.json")["config"]["seed"] == 1


def test_an_overwrite_killed_before_its_first_checkpoint_gives_the_old_run_back(cli, tmp_path):
    assert cli("train", *FAST, "--out", tmp_path, "--quiet").status == 0
    before = _files(tmp_path)
    proc = _start(*LONG, "--batch-size", "1", "--overwrite", "--out", tmp_path)  # long first epoch
    try:
        _wait_for(tmp_path / ASIDE_NAME / "summary.json", proc)
        _wait_for(tmp_path / "metrics.csv", proc)  # the new run has started
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
        proc.wait()
    if (tmp_path / "checkpoint.pt").exists():
        pytest.skip("the new run reached its first checkpoint before it could be killed")
    result = cli("report", tmp_path, "--quiet", "--no-plots")  # report only reads
    assert result.status == 0
    resumed = cli("train", "--resume", "--out", tmp_path)  # the next claim settles it
    assert resumed.status == 0 and "already complete" in resumed.out
    assert "the previous run is restored" in resumed.err
    assert _files(tmp_path) == before and not (tmp_path / ASIDE_NAME).exists()


def test_report_of_a_read_only_run_folder(cli, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert cli("train", *FAST, "--out", run, "--quiet").status == 0
    before = _files(run)
    run.chmod(0o555)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not (Path(path) == run and mode & os.W_OK))
    try:
        result = cli("report", run)
        elsewhere = cli("report", run, "--plots-dir", tmp_path / "plots", "--quiet")
    finally:
        run.chmod(0o755)
    assert result.status == 0 and "test accuracy" in result.out
    assert result.err == (
        f"warning: '{run}' is read-only: the plots are not redrawn (--plots-dir DIR draws them elsewhere)\n"
    )
    assert _files(run) == before
    assert elsewhere.status == 0 and elsewhere.err == ""
    for png in ("loss.png", "accuracy.png", "sparsity.png", "weights.png"):
        assert_png(tmp_path / "plots" / png)


def test_report_where_a_write_fails_still_reports(cli, tmp_path, monkeypatch):
    assert cli("train", *FAST, "--out", tmp_path, "--quiet").status == 0
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    result = cli("report", tmp_path)
    assert result.status == 0 and "test accuracy" in result.out
    assert result.err.startswith("warning: the plots were not redrawn: cannot write ")
    assert "Read-only file system" in result.err and result.err.count("\n") == 1


def test_library_resume_starts_again_a_run_without_checkpoint(tmp_path):
    # What compare relies on for a configuration killed in its first epoch.
    quiet = Reporter(quiet=True)
    config = TrainConfig(hidden=(16, 8), epochs=1)
    with pytest.raises(KeyboardInterrupt):
        run_train(config, tmp_path, reporter=quiet, plots=False, callbacks=[StopAfter(3)])
    assert (tmp_path / "config.json").exists() and not (tmp_path / "checkpoint.pt").exists()
    summary = run_train(config, tmp_path, resume=True, reporter=quiet, plots=False)
    assert summary["epochs"] == 1
    (tmp_path / "checkpoint.pt").unlink()
    (tmp_path / "summary.json").unlink()
    with pytest.raises(UsageError, match=r"has no checkpoint\.pt"):
        run_train(config, tmp_path, resume=True, reporter=quiet, plots=False, require_checkpoint=True)


def test_compare_resumes_a_configuration_killed_in_its_first_epoch(cli, tmp_path):
    small = ["--hidden", "16,8", "--epochs", "1", "--limit", "200", "--no-plots", "--quiet"]
    assert cli("compare", "none", "l2", *small, "--out", tmp_path).status == 0
    (tmp_path / "l2" / "checkpoint.pt").unlink()
    (tmp_path / "l2" / "summary.json").unlink()
    again = cli("compare", "--resume", "--out", tmp_path, "--quiet", "--no-plots")
    assert again.status == 0, again
    assert read_json(tmp_path / "l2" / "summary.json")["epochs"] == 1


def _lock_is_free(folder: Path) -> bool:
    """Whether another process can take ``folder``'s run lock now."""
    code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(folder / LOCK_NAME)]).returncode == 0


@pytest.mark.parametrize("command", ["compare", "path"])
def test_compare_and_path_called_from_python_release_their_folder(tmp_path, command):
    from regtorch.training import run_compare, run_path

    quiet = Reporter(quiet=True)
    config = TrainConfig(hidden=(16, 8), epochs=1, limit=200, penalty="l1")
    if command == "compare":
        run_compare(config, ["none", "l1"], tmp_path, reporter=quiet, plots=False)
    else:
        run_path(config, tmp_path, steps=2, reporter=quiet, plots=False)
    assert not (tmp_path / LOCK_NAME).exists()
    assert _lock_is_free(tmp_path)
    with pytest.raises(UsageError, match="is not empty"):  # refused, and released again
        (run_compare(config, ["l1"], tmp_path, reporter=quiet) if command == "compare"
         else run_path(config, tmp_path, steps=2, reporter=quiet))  # fmt: skip
    assert _lock_is_free(tmp_path)


def test_compare_refuses_a_configuration_folder_that_is_a_link(cli, tmp_path):
    small = ["--hidden", "16,8", "--epochs", "1", "--limit", "200", "--no-plots", "--quiet"]
    out, elsewhere = tmp_path / "cmp", tmp_path / "elsewhere"
    assert cli("compare", "none", "l2", *small, "--out", out).status == 0
    shutil_target = out / "l2"
    for name in os.listdir(shutil_target):
        os.unlink(shutil_target / name)
    shutil_target.rmdir()
    elsewhere.mkdir()
    (out / "l2").symlink_to(elsewhere)
    result = cli("compare", "--resume", "--out", out, "--quiet", "--no-plots")
    assert result.status == 2
    assert re.search(r"'.*l2' is a symbolic link; regtorch never reads or writes a run's files", result.err)
    assert os.listdir(elsewhere) == []


# ---- the file primitives behind these guarantees


def test_atomic_write_replaces_a_link_and_never_writes_through_it(tmp_path):
    from regtorch.training._files import atomic_write

    outside = tmp_path / "outside.txt"
    outside.write_text("mine")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").symlink_to(outside)
    atomic_write(tmp_path / "run" / "summary.json", lambda f: f.write(b"{}"))
    assert outside.read_text() == "mine"
    assert not (tmp_path / "run" / "summary.json").is_symlink()
    assert (tmp_path / "run" / "summary.json").read_bytes() == b"{}"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path, code):
    from regtorch.training._files import atomic_write

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")

    def write(f):
        f.write(b"partial")
        raise OSError(code, os.strerror(code))

    with pytest.raises(UsageError, match=r"cannot write '.*checkpoint\.pt': no space left on the device; "
                       r"the previous 'checkpoint\.pt', if any, is unchanged"):  # fmt: skip
        atomic_write(path, write)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["checkpoint.pt"]


def test_open_regular_refuses_links_folders_and_pipes_without_blocking(tmp_path):
    from regtorch.training._files import open_regular

    (tmp_path / "target").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "pipe")  # opening it for reading would block without O_NONBLOCK
    with pytest.raises(UsageError, match=r"'.*link' is a symbolic link; regtorch never reads or writes"):
        open_regular(tmp_path / "link")
    for name in ("folder", "pipe"):
        with pytest.raises(UsageError, match=rf"'.*{name}' is not a regular file"):
            open_regular(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "missing")
    os.close(open_regular(tmp_path / "target"))


def test_plots_that_cannot_be_written_do_not_fail_a_finished_run(cli, tmp_path, monkeypatch):
    from regtorch.training import _plots

    def full_disk(fig, path):
        raise UsageError(f"cannot write '{path}': no space left on the device")

    monkeypatch.setattr(_plots, "_save", full_disk)
    result = cli("train", "--hidden", "16,8", "--epochs", "1", "--out", tmp_path, "--quiet")
    assert result.status == 0 and "test accuracy" in result.out
    assert result.err.startswith("warning: plots skipped: cannot write '") and result.err.count("\n") == 1
    assert read_json(tmp_path / "summary.json")["status"] == "completed"


def _locked_elsewhere(folder: Path) -> bool:
    """Whether another process finds ``folder``'s lock taken."""
    code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(folder / LOCK_NAME)], timeout=TIMEOUT).returncode == 3


def test_claims_are_counted_and_void_once_their_folder_is_gone(tmp_path):
    import shutil

    from regtorch.training._runlock import claim_run_dir, release_run_dir

    folder = tmp_path / "run"
    claim_run_dir(folder)
    claim_run_dir(folder)
    release_run_dir(folder)
    assert _locked_elsewhere(folder)
    release_run_dir(folder)
    assert not folder.exists()  # created by the claim and left empty: removed again
    claim_run_dir(folder)
    shutil.rmtree(folder)
    folder.mkdir()
    claim_run_dir(folder)  # the folder is new: its lock is taken again, not counted
    try:
        assert _locked_elsewhere(folder)
    finally:
        release_run_dir(folder)
    assert folder.exists() and not (folder / LOCK_NAME).exists()


def test_a_run_started_with_more_threads_than_this_machine_allows_resumes_with_fewer(cli, tmp_path):
    assert cli("train", *FAST, "--epochs", "1", "--quiet", "--out", tmp_path).status == 0
    config = read_json(tmp_path / "config.json")
    config["config"]["threads"] = 4 * (os.cpu_count() or 1) + 4  # as if written on a larger machine
    (tmp_path / "config.json").write_text(json.dumps(config))
    refused = cli("train", "--resume", "--epochs", "2", "--quiet", "--out", tmp_path)
    assert refused.status == 2
    assert re.search(rf"uses --threads {config['config']['threads']}, more than the \d+ this machine allows .*"
                     r"resume it with --threads \d+", refused.err), refused.err  # fmt: skip
    resumed = cli("train", "--resume", "--epochs", "2", "--threads", "1", "--quiet", "--out", tmp_path)
    assert resumed.status == 0, resumed
    assert read_json(tmp_path / "summary.json")["epochs"] == 2
    assert read_json(tmp_path / "config.json")["config"]["threads"] == 1
