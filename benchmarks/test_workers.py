"""Sharing a suite: the throughput of two workers against one on the same machine, and what the
database costs each run (claims, heartbeat, store, studies), on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from regbench.features import task_data
from regbench.modeling import load_model
from regbench.runner import SuiteRunner
from regbench.store import Store
from regbench.suite import load_suite
from regbench.tasks import get_task

# Untuned, so that one worker and two do the same runs: RTE, N = 64, three regularizers, four
# seeds, max length 64: runs of a few seconds, as the quickstart's.
SUITE = {"name": "bench", "tasks": ["rte"], "sizes": [64], "final_seeds": [1, 2, 3, 4],
         "regularizers": ["vanilla", "weight_decay", "l2sp"], "tuning": {"trials": 0},
         "recipe": {"epochs": 1, "min_steps": 16, "batch_size": 8, "max_length": 64,
                    "evaluations": 1}}
RUNS = 12


@pytest.fixture
def suite_file(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    return path


def _runs_per_hour(workers: int, url: str, suite_file, glue_dir) -> float:
    """`workers` processes share the suite, each with its share of the cores: runs over the wall
    time to the last one's end."""
    command = [sys.executable, "-m", "regbench.cli", "run", "--suite", str(suite_file),
               "--storage", url, "--data-dir", str(glue_dir), "--heartbeat-timeout", "20"]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, os.cpu_count() // workers))}
    started = time.perf_counter()
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for _ in range(workers)]
    assert [p.wait() for p in processes] == [0] * workers
    return RUNS / (time.perf_counter() - started) * 3600


@pytest.mark.benchmark(group="workers")
def test_two_workers_against_one(benchmark, new_postgres_database, suite_file, glue_dir):
    rates = {1: [], 2: []}
    for round_, workers in enumerate((1, 2, 1, 2)):  # alternate: drifting load hits both alike
        url = new_postgres_database(f"throughput_{round_}")
        rates[workers].append(_runs_per_hour(workers, url, suite_file, glue_dir))
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
