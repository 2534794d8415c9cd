# `make quickstart` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
# 2.13.0 is a CPU build on this project's machines; on a GPU machine, set TORCH=torch.
TORCH ?= torch==2.13.0
GLUE ?= $(or $(REGBENCH_GLUE_DIR),../shared/glue)
export REGBENCH_GLUE_DIR := $(abspath $(GLUE))
BIN := $(VENV)/bin

.PHONY: quickstart test bench
# Two workers of half the cores each share the quickstart: on two cores they train more runs an
# hour than one worker with both (BENCHMARKS.md). The second one's log goes to a file.
HALF_CORES := $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( (n + 1) / 2 )))
quickstart: $(VENV)/.installed
	mkdir -p runs
	OMP_NUM_THREADS=$(HALF_CORES) $(BIN)/regbench run --suite quickstart \
		2> runs/quickstart-worker-2.log & \
	OMP_NUM_THREADS=$(HALF_CORES) $(BIN)/regbench run --suite quickstart; status=$$?; \
	wait $$! && exit $$status
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
