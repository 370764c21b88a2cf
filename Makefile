# Two entry points a fresh machine needs: `make demo` (the main job) and `make test`.
# torch is installed first, pinned, so that `pip install -e .` finds `torch>=2.2` already satisfied
# and never resolves a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test lint docs bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: $(BIN)/activate
	$(PIP) install "$(TORCH)"
	touch $@

$(VENV)/.cli: $(VENV)/.torch pyproject.toml
	$(PIP) install -e ".[cli]"
	touch $@

$(VENV)/.test: $(VENV)/.torch pyproject.toml
	$(PIP) install -e ".[test,docs]"
	touch $@

demo: $(VENV)/.cli
	$(BIN)/regtorch compare --out runs/demo --overwrite

test: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs: $(VENV)/.test
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(VENV)/.test
	$(BIN)/ruff check .

bench: $(VENV)/.test
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info .pytest_cache .ruff_cache
