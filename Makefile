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

# The HC18 recipe (docs/hc18-model.md): trains configs/hc18_best.toml into $(HC18_RUN),
# resuming an interrupted run; a finished run is left alone (delete it to retrain).
# HC18_TRAIN_ARGS passes extra `fetalhc train` options (the tests shorten the run with it).
HC18_RUN ?= runs/hc18-best
HC18_TRAIN_ARGS ?=
hc18-model: $(STAMP)
	@if [ -f "$(HC18_RUN)/metrics.json" ]; then \
		echo "$(HC18_RUN) is already trained (delete the folder to retrain)"; \
	else \
		$(BIN)/fetalhc train --config configs/hc18_best.toml --data "$(FETALHC_HC18)" \
			--out "$(HC18_RUN)" $(HC18_TRAIN_ARGS) \
			$$( [ -f "$(HC18_RUN)/config.toml" ] && echo --resume ); \
	fi
	@echo "model: $(HC18_RUN)/model.keras; metrics: $(HC18_RUN)/metrics.json"

clean:
	rm -rf runs .pytest_cache
