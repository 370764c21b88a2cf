"""Importing regtorch pulls no framework; a missing framework gives an ImportError naming the extra."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

CASES = [
    ("regtorch.integrations.lightning", "lightning", r"pip install 'regtorch\[lightning\]'"),
    ("regtorch.integrations.transformers", "transformers", r"pip install 'regtorch\[hf\]'"),
]


@pytest.mark.parametrize(("module", "framework", "message"), CASES)
def test_missing_framework_names_the_extra(monkeypatch, module, framework, message):
    monkeypatch.setitem(sys.modules, framework, None)
    for name in [n for n in sys.modules if n == module or n.startswith(framework + ".")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=message):
        importlib.import_module(module)


def test_missing_tensorboard_names_the_extra(monkeypatch, tmp_path):
    from regtorch.integrations.tensorboard import TensorBoardLogger

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match=r"needs TensorBoard.*pip install 'regtorch\[cli\]'"):
        TensorBoardLogger(tmp_path)


def test_importing_regtorch_imports_no_framework():
    code = (
        "import sys, regtorch, regtorch.integrations, regtorch.integrations.tensorboard; "
        "heavy = [m for m in ('lightning', 'transformers', 'tensorboard', 'accelerate') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI must install the frameworks; a developer may not")
@pytest.mark.parametrize("framework", ["lightning", "transformers", "accelerate", "tensorboard"])
def test_ci_installs_the_frameworks(framework):
    """Without these the integration tests would be skipped silently in CI."""
    importlib.import_module(framework)
