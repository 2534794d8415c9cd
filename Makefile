# `make quickstart` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
# 2.13.0 is a CPU build on this project's machines; on a GPU machine, set TORCH=torch.
TORCH ?= torch==2.13.0
GLUE ?= $(or $(REGBENCH_GLUE_DIR),../shared/glue)
export REGBENCH_GLUE_DIR := $(abspath $(GLUE))
BIN := $(VENV)/bin

.PHONY: quickstart test bench
quickstart: $(VENV)/.installed
	$(BIN)/regbench run --suite quickstart
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
