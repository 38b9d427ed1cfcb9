# Two commands: `make demo` and `make test`. Both create/refresh .venv first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)
DEMO_DIR ?= data/demo

.PHONY: venv demo test lab export clean-nbs check-export check-clean test-nbs test-py bench help

help:
	@echo "make demo   simulate a small marketplace and print its summary (embedded defaults)"
	@echo "make test   export/clean checks, notebook tests and pytest"
	@echo "make lab    JupyterLab on nbs/"
	@echo "make export nbdev-export + nbdev-clean after editing notebooks"

# The virtualenv is rebuilt only when pyproject.toml changes, so a rerun is cheap.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the project and its dev extras into $(VENV) ..."
	@$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
	@set -o pipefail; $(BIN)/python -m pip install --quiet -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || test $${PIPESTATUS[0]} -eq 0
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/propensity simulate --profile small --days 7 --seed 42 --out $(DEMO_DIR)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=nbs

export: $(STAMP)
	$(BIN)/nbdev-export
	$(BIN)/nbdev-clean

# propensity/ must be exactly what nbdev-export makes from nbs/ (checked in a scratch copy).
check-export: $(STAMP)
	@tmp=$$(mktemp -d) && cp -r pyproject.toml nbs propensity $$tmp/ && rm -rf $$tmp/propensity/*.py \
	 && cp propensity/__init__.py $$tmp/propensity/ \
	 && (cd $$tmp && $(abspath $(BIN))/nbdev-export) \
	 && if diff -r -x __pycache__ propensity $$tmp/propensity; then echo "export check: propensity/ matches nbs/"; rm -rf $$tmp; \
	    else echo "export check FAILED: propensity/ differs from nbdev-export of nbs/ (run 'make export' and commit both)"; rm -rf $$tmp; exit 1; fi

# Notebooks must be clean (what nbdev-clean writes).
check-clean: $(STAMP)
	@tmp=$$(mktemp -d) && cp -r pyproject.toml nbs $$tmp/ && (cd $$tmp && $(abspath $(BIN))/nbdev-clean) \
	 && if diff -r nbs $$tmp/nbs >/dev/null; then echo "clean check: notebooks are clean"; rm -rf $$tmp; \
	    else diff -rq nbs $$tmp/nbs; echo "clean check FAILED: run 'make export' (nbdev-clean) and commit"; rm -rf $$tmp; exit 1; fi

test-nbs: $(STAMP)
	$(BIN)/nbdev-test --n-workers 2 --timing

test-py: $(STAMP)
	$(BIN)/python -m pytest tests

test: check-export check-clean test-nbs test-py

bench: $(STAMP)
	$(BIN)/python benchmarks/simulate.py --quick
