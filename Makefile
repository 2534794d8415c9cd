# `make quickstart` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
# 2.13.0 is a CPU build on this project's machines; on a GPU machine, set TORCH=torch.
TORCH ?= torch==2.13.0
GLUE ?= $(or $(REGBENCH_GLUE_DIR),../shared/glue)
export REGBENCH_GLUE_DIR := $(abspath $(GLUE))
BIN := $(VENV)/bin

.PHONY: quickstart test bench
CORES := $(shell nproc 2> /dev/null || echo 1)
# Where there are two cores or more, two workers of half of them each share the quickstart: they
# train more runs an hour than one worker with all of them (BENCHMARKS.md). The second worker's
# output goes to runs/quickstart-worker-2.log, and it stops when the first is stopped.
quickstart: $(VENV)/.installed
	mkdir -p runs
	threads=$$(( $(CORES) / 2 )); second=; \
	if [ $$threads -ge 1 ]; then \
		OMP_NUM_THREADS=$$threads $(BIN)/regbench run --suite quickstart \
			> runs/quickstart-worker-2.log 2>&1 & \
		second=$$!; trap 'kill $$second 2> /dev/null' INT TERM; \
	else threads=1; fi; \
	OMP_NUM_THREADS=$$threads $(BIN)/regbench run --suite quickstart; status=$$?; \
	if [ -n "$$second" ]; then wait $$second || status=$$?; fi; exit $$status
	$(BIN)/regbench leaderboard --suite quickstart

test: $(VENV)/.installed
	$(BIN)/python -m pytest tests

bench: $(VENV)/.installed
	$(BIN)/python -m pytest benchmarks --benchmark-only -s

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@
