# POSIX make targets; work on Linux and macOS. Everything runs from the project's .venv.
SHELL := /bin/sh
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# Which build of torch `make setup` installs:
#   TORCH=cpu (default): the CPU build. pip takes it from this machine when it can without a
#     network (a wheel in pip's find-links, or torch already in the venv), else from PyTorch's
#     CPU index below (PyPI's Linux wheel is the CUDA build: several GB of NVIDIA packages).
#   TORCH=cuda: PyPI's default build (CUDA on Linux), for a machine with an NVIDIA GPU.
#   TORCH_INDEX=URL: that wheel index instead, e.g. https://download.pytorch.org/whl/cu128.
# Switching an existing venv: make clean setup TORCH=cuda.
TORCH ?= cpu
TORCH_INDEX ?=
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_VERSION := $(shell sed -n 's/^torch==//p' server/constraints.txt)
RUFF := $(PY) -m ruff
RUFF_CFG := --config server/pyproject.toml

.PHONY: setup torch-index lint format test check system-deps start stop logs demo bench-tokenizers bench-train bench-models bench-grid bench-sweep bench-finetune bench-databank bench-recovery bench-api fuzz container-smoke clean

setup: $(VENV)/.installed

$(VENV)/.installed: server/pyproject.toml server/constraints.txt
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (set PYTHON=...)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@index=$$($(TORCH_INDEX_SH)) || exit $$?; \
	echo "setup: torch $(TORCH_VERSION), TORCH=$(TORCH), from $${index:-the default indexes (PyPI and any find-links)}"; \
	if [ "$(TORCH)" = cpu ] && command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "setup: an NVIDIA GPU is here; for the CUDA build of torch: make clean setup TORCH=cuda"; fi; \
	set -x; $(PY) -m pip install --quiet $${index:+--extra-index-url "$$index"} \
	  -c server/constraints.txt -e './server[dev]'
	touch $@

# The extra wheel index `setup` gives pip for torch; nothing printed: none needed. For
# TORCH=cpu, none when pip finds torch==$(TORCH_VERSION) offline (`--no-index`: a wheel in its
# find-links, or the venv's own torch), so a machine that cannot reach download.pytorch.org
# (CI, a mirror) never asks it.
TORCH_INDEX_SH = case "$(TORCH)" in cpu|cuda) ;; *) echo "TORCH must be cpu or cuda (got $(TORCH))" >&2; exit 2;; esac; \
	if [ -n "$(TORCH_INDEX)" ]; then echo "$(TORCH_INDEX)"; \
	elif [ "$(TORCH)" = cpu ] && ! $(PY) -m pip install --dry-run --quiet --no-index --no-deps \
	  "torch==$(TORCH_VERSION)" >/dev/null 2>&1; then echo "$(TORCH_CPU_INDEX)"; fi

torch-index:
	@$(TORCH_INDEX_SH)

lint: setup
	$(RUFF) check $(RUFF_CFG) server scripts
	$(RUFF) format --check $(RUFF_CFG) server scripts
	cd server && ../$(PY) -m mypy
	$(PY) scripts/guard.py

format: setup
	$(RUFF) check --fix $(RUFF_CFG) server scripts
	$(RUFF) format $(RUFF_CFG) server scripts

# Tests run in pytest-xdist processes, each with its own Redis. The fast lane is CPU work:
# one process a core (TEST_PROCS). The whole suite hands a module to a process (modules
# share their stack: Data Bank, workers) and is mostly waiting on workers, leases and
# servers: CHECK_PROCS, twice that, keep the cores busy.
TEST_PROCS ?= 2
CHECK_PROCS ?= $(shell expr 2 \* $(TEST_PROCS))

# The fast lane: every test that needs no worker process and no browser (marker e2e).
test: setup
	cd server && ../$(PY) -m pytest -m "not e2e" -n $(TEST_PROCS) --dist load

# Lint and the whole suite, end-to-end and browser tests included (what CI runs).
check: lint system-deps
	cd server && ../$(PY) -m pytest -n $(CHECK_PROCS) --dist loadfile --no-loadscope-reorder

# What the suite needs from Debian, installed when missing (as root, else with sudo):
# redis-server (each test run starts its own on a free port; the package's own service is
# stopped again), chromium (the dashboard's browser tests drive it; never a download) and g++
# (inductor builds the compiled training step with it).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="redis-server"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v g++ >/dev/null 2>&1 || missing="$$missing g++"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	  else echo "system-deps: install$$missing (Debian packages) first" >&2; exit 1; fi; \
	  echo "system-deps: installing$$missing (Debian packages)"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; \
	  $$sudo service redis-server stop >/dev/null 2>&1 || true; \
	fi

start: setup
	$(PY) scripts/stack.py start

stop:
	@if [ -x $(PY) ]; then $(PY) scripts/stack.py stop; else echo "nothing to stop"; fi

logs:
	$(PY) scripts/stack.py logs

# The README's first command: stack up, a tokenizer and a tiny model (qwen3 with Muon, the
# defaults) trained through the API, eval, a sample, stack down.
demo: setup
	$(PY) scripts/demo.py

# Benchmarks (not tests): results go to docs/benchmarks.md.
# Raw library call vs our train_tokenizer, BPE and SentencePiece unigram at vocabulary 8192, on
# tinyshakespeare and the concatenated .py files of the standard library (~30 MB).
BENCH_DIR := .stack/bench
bench-tokenizers: setup
	mkdir -p $(BENCH_DIR)
	test -s $(BENCH_DIR)/stdlib.txt || $(PY) -c "import pathlib, sys, sysconfig; root = pathlib.Path(sysconfig.get_paths()['stdlib']); out = open('$(BENCH_DIR)/stdlib.txt', 'w', encoding='utf-8'); [out.write(t) for p in sorted(root.rglob('*.py')) for t in [p.read_bytes().decode('utf-8', 'replace')] if '\ufffd' not in t]"
	$(PY) scripts/bench_tokenizer_job.py --corpus ../shared/corpora/tinyshakespeare.txt --corpus $(BENCH_DIR)/stdlib.txt --method bpe --method unigram

bench-train: setup
	$(PY) scripts/bench_train.py
	$(PY) scripts/bench_first_event.py

# Families x optimizers at a 76 s budget next to nanoGPT's CPU recipe, tokens/s and MFU per
# family: NANOGPT=path/to/a/nanoGPT/checkout (without it the reference is left out).
NANOGPT ?=
bench-models: setup
	$(PY) scripts/bench_models.py $(if $(NANOGPT),--nanogpt $(NANOGPT),)

# The defaults' grid: execution, family x optimizer and shape at a 76 s budget, 3 repeats,
# scored on nanoGPT's validation text (about 70 minutes on 2 cores).
bench-grid: setup
	$(PY) scripts/bench_grid.py

# LoRA against full fine-tuning of a ~100M-parameter Llama-shaped base model (~15 min).
bench-finetune: setup
	$(PY) scripts/bench_finetune.py

bench-databank: setup
	$(PY) scripts/bench_databank.py

# API read latency at 200 requests/s, open loop, with the worker idle and while a run trains.
bench-api: setup
	$(PY) scripts/bench_api.py

# A learning rate x batch size sweep on tinyshakespeare, the full grid and with successive
# halving, through the local stack (started and stopped when none runs): figures in
# docs/benchmarks.md.
bench-sweep: setup
	$(PY) scripts/bench_sweep.py

# schemathesis against a live local stack, >= 1,000 generated requests (installed on demand:
# a tool for this target, not a dependency of the service or its tests).
SCHEMATHESIS := schemathesis==4.32.5
fuzz: setup
	$(PY) -m pip install --quiet $(SCHEMATHESIS)
	$(PY) scripts/fuzz_api.py

# Recovery times with the shipped lease and reaper settings (15 s, 5 s), five tries each:
# SIGKILL of a worker -> progress on another worker with an empty disk; SIGTERM -> queued.
bench-recovery: setup
	cd server && for i in 1 2 3 4 5; do \
	  DURABLE_PRODUCTION_TIMINGS=1 ../$(PY) -m pytest -q -s -p no:cacheprovider \
	    tests/test_durable_runs.py -k "killed_worker or redeploys" | grep -E "SIGKILL|SIGTERM|passed|failed"; \
	done

# Builds the image and runs API, worker and Data Bank containers against Redis (slow).
container-smoke:
	sh scripts/container_smoke.sh

clean: stop
	rm -rf $(VENV) .stack server/.mypy_cache server/.pytest_cache .ruff_cache server/*.egg-info
	find server scripts -name __pycache__ -type d -prune -exec rm -rf {} +
