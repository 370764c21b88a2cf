"""The public surface is pinned: regtorch.__all__ is sorted, complete and importable."""

from __future__ import annotations

import regtorch

EXPECTED = {
    "ActivityRegularizer",
    "ActivityStats",
    "AttachHandle",
    "ElasticNet",
    "FrozenZeros",
    "GroupLasso",
    "GroupShrink",
    "L1",
    "L2",
    "LayerShrink",
    "MCP",
    "SCAD",
    "Lp",
    "ModuleActivity",
    "ParameterChoice",
    "ParameterStats",
    "Penalty",
    "Regularizer",
    "Rule",
    "Scaled",
    "SelectFeatures",
    "SelectionExplanation",
    "ShrinkReport",
    "SparseSaveInfo",
    "Stats",
    "Sum",
    "__version__",
    "explain_selection",
    "freeze_zeros",
    "list_penalties",
    "load_sparse",
    "penalty_class",
    "penalty_from_config",
    "regularize",
    "save_sparse",
    "select_parameters",
    "shrink",
    "shrink_report",
    "sparsity",
}


def test_all_is_pinned_and_importable() -> None:
    assert set(regtorch.__all__) == EXPECTED
    assert len(regtorch.__all__) == len(EXPECTED)
    for name in regtorch.__all__:
        assert getattr(regtorch, name) is not None


def test_all_is_sorted() -> None:
    # isort style (ruff RUF022): constants, then classes, then functions and dunders, each sorted
    def key(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)

    assert list(regtorch.__all__) == sorted(regtorch.__all__, key=key)


def test_core_import_pulls_no_optional_dependency() -> None:
    import subprocess
    import sys

    code = (
        "import sys, regtorch; heavy = [m for m in ('sklearn', 'matplotlib', 'lightning', 'transformers',"
        " 'tensorboard', 'rich') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("regtorch").joinpath("py.typed").is_file()
