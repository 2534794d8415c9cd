"""Sharing a suite: the throughput of two workers against one on the same machine, and what the
database costs each run (claims, heartbeat, store, studies), on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import time

import pytest
import yaml
from measure import runs_per_hour

from regbench.features import task_data
from regbench.modeling import load_model
from regbench.runner import SuiteRunner
from regbench.store import Store
from regbench.suite import load_suite
from regbench.tasks import get_task

# Untuned, so that one worker and two do the same runs: RTE, N = 64, three regularizers, four
# seeds, max length 64: runs of a few seconds, as the quickstart's. Smaller than
# `measure.worker_suite`, which is sized for a GPU.
SUITE = {"name": "bench", "tasks": ["rte"], "sizes": [64], "final_seeds": [1, 2, 3, 4],
         "regularizers": ["vanilla", "weight_decay", "l2sp"], "tuning": {"trials": 0},
         "recipe": {"epochs": 1, "min_steps": 16, "batch_size": 8, "max_length": 64,
                    "evaluations": 1}}


@pytest.fixture
def suite_file(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    return path


@pytest.mark.benchmark(group="workers")
def test_two_workers_against_one(benchmark, new_postgres_database, glue_dir):
    rates = {1: [], 2: []}
    for round_, workers in enumerate((1, 2, 1, 2)):  # alternate: drifting load hits both alike
        rate = runs_per_hour(workers, new_postgres_database(f"throughput_{round_}"), SUITE,
                             glue_dir)
        assert rate.runs == 12 and not rate.failed
        rates[workers].append(rate.runs_per_hour)
    one, two = max(rates[1]), max(rates[2])
    benchmark.extra_info.update({"runs_per_hour_1": one, "runs_per_hour_2": two,
                                 "ratio": two / one})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\n1 worker {one:.0f} runs/h, 2 workers {two:.0f} runs/h: {two / one:.2f}x "
          f"(start-up included; {os.cpu_count()} cores shared out)")


@pytest.mark.benchmark(group="workers")
def test_database_cost_per_run(benchmark, storage_url, suite_file, glue_dir):
    """A worker's wall time less the runs' own (model, training, evaluation), per run: claims,
    store, studies and the loop around them. Data and checkpoint are loaded before the clock."""
    suite = load_suite(str(suite_file))
    task_data(get_task("rte"), 64, 0, suite.model, 64, str(glue_dir))
    load_model(suite.model, get_task("rte"), seed=0)
    started = time.perf_counter()
    SuiteRunner(suite, storage_url, data_dir=str(glue_dir), progress=False).run()
    wall = time.perf_counter() - started
    runs = Store(storage_url).frame(suite.name)
    overhead, run = (wall - runs.seconds.sum()) / len(runs), runs.seconds.mean()
    benchmark.extra_info.update({"overhead_ms_per_run": overhead * 1000, "run_seconds": run})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\n{overhead * 1000:.0f} ms a run outside training, {overhead / run:.1%} of a "
          f"{run:.1f} s run")
