# The README's two commands are `make nightly` and `make test`; CI runs `make test` (.ci/run).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: nightly test lint pytest bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

## Set up, land the demo sources, and run the nightly build through Temporal into DuckDB.
nightly: $(STAMP)
	$(BIN)/starsmith demo --days 7
	$(BIN)/starsmith build

## Lint, type-check and run every test (real DuckDB, real Temporal dev server).
test: lint pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/scd2_merge.py

clean:
	rm -rf $(VENV) .state landing
