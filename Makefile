# The README's two commands are `make nightly` and `make test`; CI runs `make test` (.ci/run).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: nightly test lint pytest bench clean emulator
# The BigQuery emulator needs CPython 3.13 (pyenv has one on these machines)
PY313 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) $(shell command -v python3.13))
EMULATOR := .emulator/bin/local-bigquery

$(STAMP): pyproject.toml
	@# an editable install maps starsmith.<folder> onto the top-level folders (package-dir)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

## Set up, land the demo sources, and run the nightly build through Temporal into DuckDB.
## The demo is a project like any user's: models/ (its starsmith.toml, landing/ and .state/).
nightly: $(STAMP)
	$(BIN)/starsmith demo models --days 7

## Lint, type-check and run every test (real DuckDB, real Temporal dev server).
test: lint pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

pytest: $(STAMP) emulator
	$(BIN)/pytest -q

## The local BigQuery emulator for the loader contract tests, in its own 3.13 environment.
emulator: $(EMULATOR)

$(EMULATOR):
	@if [ -z "$(PY313)" ]; then echo "no python3.13: the BigQuery emulator tests will be skipped"; else \
	  $(PY313) -m venv .emulator && .emulator/bin/pip install -q local-bigquery==0.3.2 duckdb==1.5.5 \
	    sqlglot==30.30.0 duckdb-extension-ducklake==1.5.5 duckdb-extension-icu==1.5.5 \
	    duckdb-extension-spatial==1.5.5; fi

bench: $(STAMP)
	$(BIN)/python benchmarks/scd2_merge.py

clean:
	rm -rf $(VENV) .emulator models/.state models/landing
