# fetalhc: two commands a newcomer needs — `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

export TF_CPP_MIN_LOG_LEVEL ?= 2
export FETALHC_HC18 ?= $(abspath ../shared/data/hc18)

.PHONY: demo test test-slow lint venv hc18-model bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/fetalhc demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow" -q

lint: $(STAMP)
	$(BIN)/ruff check fetalhc tests benchmarks scripts

clean:
	rm -rf runs .pytest_cache
