"""Bad input: one clear line on stderr, exit status 2, no traceback, nothing written or lost."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from cli_helpers import FAST

from regtorch.data import write_idx


def assert_one_line(result, status: int, *fragments: str) -> None:
    assert result.status == status, result
    assert result.err.endswith("\n") and result.err.count("\n") == 1, result.err
    assert result.err.startswith("regtorch")
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err, result.err


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--dataset", "nope"], ["Unknown data set 'nope'", "digits, mnist"]),
        (["--model", "resnet"], ["--model: invalid choice: 'resnet'"]),
        (["--optimizer", "lbfgs"], ["--optimizer: invalid choice: 'lbfgs'"]),
        (["--penalty", "l3"], ["--penalty: unknown penalty 'l3'; choose from", "mcp", "scad"]),
        (["--penalty", "mcp:gama=3"], ["expected KEY=VALUE items; mcp's arguments are strength, gamma"]),
        (["--penalty", "mcp:strength=-1"], ["--penalty mcp: The 'strength' argument of MCP must be"]),
        (["--penalty", "l1:strength=1e-3", "--l1", "1e-3"], ["--l1 sets what --penalty 'l1:strength=1e-3' already gives"]),
        (["--penalty", "scad", "--l2", "1e-3"], ["--l2 is not used by --penalty scad"]),
        (["--mode", "fast"], ["--mode: invalid choice: 'fast'"]),
        (["--penalty", "l1", "--l1", "-0.1"], ["argument --l1: must be >= 0; got -0.1"]),
        (["--penalty", "l2", "--l2", "abc"], ["argument --l2: expected a number; got 'abc'"]),
        (["--penalty", "l1", "--l1", "nan"], ["argument --l1: expected a finite number"]),
        (["--penalty", "group", "--strength", "inf"], ["--strength: expected a finite number"]),
        (["--lr", "0"], ["argument --lr: must be > 0; got 0"]),
        (["--epochs", "two"], ["argument --epochs: expected an integer; got 'two'"]),
        (["--hidden", "64,x"], ["--hidden: expected comma-separated layer sizes"]),
        (["--penalty", "l2", "--l1", "1e-3"], ["--l1 is not used by --penalty l2"]),
        (["--penalty", "elasticnet", "--alpha", "1", "--l1", "1"], ["give one of them"]),
        (["--target", "y"], ["--target is only used with --dataset csv:PATH"]),
        (["--params", "nothing.*", "--penalty", "l1"], ["nothing.*"]),
        (["--no-such-option"], ["unrecognized arguments: --no-such-option"]),
    ],
)
def test_bad_options(cli, tmp_path, args, fragments):
    out = tmp_path / "run"
    assert_one_line(cli("train", *FAST, *args, "--out", out), 2, *fragments)
    assert not out.exists()  # nothing was created


def test_library_errors_become_one_line(cli, tmp_path):
    # The core refuses a group lasso on biases (1-D) grouped by columns.
    result = cli("train", *FAST, "--penalty", "group", "--groups", "columns", "--params", "all",
                 "--out", tmp_path / "run")  # fmt: skip
    assert_one_line(result, 2, "GroupLasso(groups='columns')")


def test_cnn_needs_images(cli, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20)))
    result = cli("train", *FAST, "--dataset", f"csv:{path}", "--target", "label", "--model",
                 "cnn", "--out", tmp_path / "run")  # fmt: skip
    assert_one_line(result, 2, "--model cnn needs image data")


def test_missing_mnist_files_name_the_files(cli, tmp_path):
    result = cli("train", *FAST, "--dataset", "mnist", "--data-dir", tmp_path / "nothing",
                 "--out", tmp_path / "run")  # fmt: skip
    assert_one_line(result, 2, "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "--download")


def _write_mnist(folder, n=20):
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte", ((np.arange(n) + 3) % 10).astype(np.uint8))


def test_truncated_idx_file(cli, tmp_path):
    _write_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    result = cli("train", *FAST, "--dataset", "mnist", "--data-dir", tmp_path,
                 "--out", tmp_path / "run")  # fmt: skip
    assert_one_line(result, 2, "train-images-idx3-ubyte")


def test_idx_file_with_a_wrong_magic_number(cli, tmp_path):
    _write_mnist(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[:4] = struct.pack(">I", 0x0BADF00D)
    labels.unlink()
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes(data))
    result = cli("train", *FAST, "--dataset", "mnist", "--data-dir", tmp_path,
                 "--out", tmp_path / "run")  # fmt: skip
    assert_one_line(result, 2, "t10k-labels-idx1-ubyte", "magic")


def test_csv_without_the_target_column(cli, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    result = cli("train", *FAST, "--dataset", f"csv:{path}", "--target", "class",
                 "--out", tmp_path / "run")  # fmt: skip
    assert_one_line(result, 2, "'class'", "'label'")


def test_non_empty_out_is_kept(cli, tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    result = cli("train", *FAST, "--out", tmp_path)
    assert_one_line(result, 2, "is not empty", "--resume", "--overwrite")
    assert keep.read_text() == "mine" and len(list(tmp_path.iterdir())) == 1
    foreign = cli("train", *FAST, "--out", tmp_path, "--overwrite")
    assert_one_line(foreign, 2, "--overwrite refuses")
    assert keep.read_text() == "mine"
    nothing = cli("train", *FAST, "--out", tmp_path, "--resume")
    assert_one_line(nothing, 2, "holds no run to resume")


def test_overwrite_replaces_a_run_only_once_the_new_one_can_start(cli, tmp_path):
    assert cli("train", *FAST, "--out", tmp_path, "--quiet").status == 0
    before = (tmp_path / "summary.json").read_text()
    bad = cli("train", *FAST, "--out", tmp_path, "--overwrite", "--dataset", "nope")
    assert_one_line(bad, 2, "Unknown data set")
    assert (tmp_path / "summary.json").read_text() == before  # the old run survived
    assert cli("train", *FAST, "--out", tmp_path, "--overwrite", "--quiet", "--seed", "1").status == 0


def test_resume_of_another_command_and_compare_errors(cli, tmp_path):
    assert cli("train", *FAST, "--out", tmp_path, "--quiet").status == 0
    assert_one_line(cli("compare", "--resume", "--out", tmp_path), 2, "holds a regtorch train run")
    assert_one_line(cli("compare", "lasso", "--out", tmp_path / "c"), 2, "unknown penalty 'lasso'")
    assert_one_line(cli("compare", "l1:fast", "--out", tmp_path / "c"), 2, "unknown mode 'fast'")
    assert_one_line(cli("compare", "l1,l1=big", "--out", tmp_path / "c"), 2, "must be a number")
    assert_one_line(cli("compare", "l1,l1=-1", "--out", tmp_path / "c"), 2, "--l1 must be >= 0")
    assert_one_line(cli("path", "--penalty", "none"), 2, "needs a penalty")
    assert_one_line(cli("path", "--l1", "0.1"), 2, "sets the strengths itself")
    assert_one_line(cli("report", tmp_path / "absent"), 2, "is not a folder")
    assert not (tmp_path / "c").exists()


def test_no_command(cli):
    assert_one_line(cli(), 2, "required: COMMAND")
    assert cli("--version").status == 0


@pytest.mark.parametrize("command", ["train", "compare", "path"])
def test_resume_needs_out(cli, command):
    assert_one_line(cli(command, "--resume"), 2, "--resume needs --out")


def test_sigterm_during_a_distributed_run_becomes_one_line():
    import os
    import signal

    from regtorch.cli._commands import sigterm_raises
    from regtorch.training._errors import RunFailed

    before = signal.getsignal(signal.SIGTERM)

    def stopped():
        return RunFailed("rank 0: stopped by torchrun (SIGTERM)")

    with pytest.raises(RunFailed, match="stopped by torchrun"), sigterm_raises(stopped):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode
    assert signal.getsignal(signal.SIGTERM) is before
