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

# the fast suite on TEST_WORKERS processes (pytest-xdist), each test file on one worker so
# that a file's module fixtures (small trained runs) are built once; 2 = this machine's cores
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow" -q

lint: $(STAMP)
	$(BIN)/ruff check fetalhc tests benchmarks scripts

# The HC18 recipe (docs/hc18-model.md), localise then measure: stage 1 trains the shipped
# config hc18_best (fetalhc/configs/hc18_best.toml) into $(HC18_LOCALISER), stage 2
# hc18_crop into $(HC18_RUN) with stage 1 as its localiser. Each resumes an interrupted
# run; a finished run is left alone (delete it to retrain). HC18_TRAIN_ARGS passes extra `fetalhc train` options
# to both (the tests shorten the runs with it).
HC18_RUN ?= runs/hc18-best
HC18_LOCALISER ?= $(HC18_RUN)-localiser
HC18_TRAIN_ARGS ?=
define hc18_stage
	@if [ -f "$(2)/metrics.json" ]; then \
		echo "$(2) is already trained (delete the folder to retrain)"; \
	else \
		$(BIN)/fetalhc train --config $(1) --data "$(FETALHC_HC18)" --out "$(2)" \
			$(3) $(HC18_TRAIN_ARGS) $$( [ -f "$(2)/config.toml" ] && echo --resume ); \
	fi
endef
hc18-model: $(STAMP)
	$(call hc18_stage,hc18_best,$(HC18_LOCALISER),)
	$(call hc18_stage,hc18_crop,$(HC18_RUN),--set data.localiser=$(HC18_LOCALISER))
	@echo "model: $(HC18_RUN)/model.keras (localiser $(HC18_LOCALISER)); metrics: $(HC18_RUN)/metrics.json"

clean:
	rm -rf runs .pytest_cache
