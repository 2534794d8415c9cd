"""Several workers on one suite: claims and heartbeats, then real worker processes on SQLite and
on a real PostgreSQL server, one of them killed partway."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from regbench.leaderboard import publish_suite
from regbench.runner import Plan
from regbench.store import Store, create_engine
from regbench.suite import Cell, load_suite
from regbench.tuning import RUN_FAILED
from regbench.workers import Claim, Worker, claims, workers


@pytest.fixture
def engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'claims.db'}")
    yield engine
    engine.dispose()


def test_a_claim_is_held_until_given_back_or_done(engine):
    with Worker(engine) as a, Worker(engine) as b:
        assert a.claim("run") is Claim.OURS
        assert a.claim("run") is Claim.OURS  # claiming again is harmless
        assert b.claim("run") is Claim.HELD
        a.release("run")
        assert b.claim("run") is Claim.OURS
        b.finish("run")
        assert a.claim("run") is Claim.DONE and b.claim("run") is Claim.DONE


def _remote_worker(engine, seconds_silent: float) -> None:
    """What a worker on another machine leaves in the database: its pid means nothing here."""
    with engine.begin() as connection:
        connection.execute(sa.insert(workers).values(
            id="gpu-7", machine="elsewhere", host="gpu-7", pid=1,
            heartbeat=time.time() - seconds_silent))
        connection.execute(sa.insert(claims).values(key="run", worker="gpu-7", done=False))


def _holder(engine) -> str:
    with engine.connect() as connection:
        return connection.execute(sa.select(claims.c.worker).where(claims.c.key == "run")).scalar()


def test_a_worker_not_heard_from_is_taken_over_after_the_timeout(engine):
    with Worker(engine, timeout=60) as local:
        _remote_worker(engine, seconds_silent=50)
        assert local.claim("run") is Claim.HELD  # silent for less than the timeout
        with engine.begin() as connection:
            connection.execute(sa.update(workers).where(workers.c.id == "gpu-7")
                               .values(heartbeat=time.time() - 61))
        assert local.claim("run") is Claim.OURS
        assert _holder(engine) == local.id


def test_a_worker_killed_on_this_machine_is_taken_over_at_once(engine):
    url = engine.url.render_as_string(hide_password=False)
    code = ("import sys, time; from regbench.store import create_engine; "
            "from regbench.workers import Worker; "
            "Worker(create_engine(sys.argv[1])).claim('run'); print('claimed', flush=True); "
            "time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "claimed"
    process.kill()
    process.wait()
    with Worker(engine, timeout=600) as survivor:
        assert survivor.claim("run") is Claim.OURS  # no need to wait ten minutes


def test_closing_gives_back_open_claims_and_keeps_done_ones(engine):
    with Worker(engine) as first:
        first.claim("open")
        first.claim("finished")
        first.finish("finished")
    with Worker(engine) as second:
        assert second.claim("open") is Claim.OURS and second.claim("finished") is Claim.DONE
        assert second.live_workers() == 1


# -- real worker processes ---------------------------------------------------------------------

RECIPE = {"epochs": 1, "min_steps": 0, "batch_size": 8, "max_length": 32, "evaluations": 2}


def _suite_file(tmp_path, **values):
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["rte"], "sizes": [16], "final_seeds": [1, 2, 3],
                                    "tuning_seeds": [101, 102], "recipe": RECIPE, **values}))
    return path


def _start_workers(n, suite, url, glue_dir, tmp_path, timeout=10, first=0):
    """`n` worker processes, logging to worker-<first>.log, worker-<first + 1>.log, ..."""
    command = [sys.executable, "-m", "regbench.cli", "run", "--suite", str(suite), "--storage",
               url, "--data-dir", str(glue_dir), "--heartbeat-timeout", str(timeout)]
    # One thread each: three workers with two threads each would fight over two cores.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return [subprocess.Popen(command, env=env, stderr=subprocess.STDOUT,
                             stdout=(tmp_path / f"worker-{i}.log").open("w"))
            for i in range(first, first + n)]


def _kill_a_busy_worker(engine, processes):
    """SIGKILL a worker that holds open work and has already stored a run of its own."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            with engine.connect() as connection:
                holders = connection.execute(
                    sa.select(workers.c.id, workers.c.pid).join(
                        claims, claims.c.worker == workers.c.id).where(
                        sa.not_(claims.c.done))).all()
                stored = connection.execute(sa.text(
                    "select provenance from regbench_runs")).scalars().all()
        except sa.exc.DBAPIError:  # the tables are not there yet
            continue
        done_by = {(p if isinstance(p, dict) else json.loads(p))["worker"] for p in stored}
        for worker, pid in holders:
            if worker in done_by:
                victim = next(p for p in processes if p.pid == pid)
                victim.kill()
                victim.wait()
                return worker
    pytest.fail("no worker held work while having stored a run")


def _finish(processes, tmp_path) -> int:
    """Wait for the workers; the runs they trained or began, from their summaries."""
    trained = 0
    for i, process in enumerate(processes):
        if process.returncode == -signal.SIGKILL:
            continue
        assert process.wait(timeout=600) == 0, (tmp_path / f"worker-{i}.log").read_text()[-3000:]
        summary = re.search(r"(\d+) runs trained, (\d+) pruned",
                            (tmp_path / f"worker-{i}.log").read_text())
        trained += int(summary.group(1)) + int(summary.group(2))
    return trained


def _check_runs(url, victim, trained, suite):
    """Every final run once, finished; none trained twice; the victim's finished runs kept."""
    runs = Store(url).frame(suite.name)
    finals = runs[runs.phase == "final"]
    assert sorted(zip(finals.regularizer, finals.seed, strict=True)) == sorted(
        (r, s) for r in suite.regularizers for s in suite.final_seeds)
    assert (finals.status == "finished").all()
    by_victim = int((runs.provenance.map(lambda p: p["worker"]) == victim).sum())
    assert by_victim >= 1
    assert trained + by_victim == len(runs), "a run was trained twice"
    return runs


def test_workers_share_a_tuned_suite_within_its_budget(storage_url, glue_dir, tmp_path, watcher):
    suite_file = _suite_file(tmp_path, regularizers=["vanilla", "weight_decay", "l2sp"],
                             tuning={"trials": 3, "pruner": "median"})
    suite = load_suite(str(suite_file))
    processes = _start_workers(3, suite_file, storage_url, glue_dir, tmp_path)
    victim = _kill_a_busy_worker(watcher(storage_url), processes)
    trained = _finish(processes, tmp_path)
    _check_runs(storage_url, victim, trained, suite)
    plan = Plan.of(suite)
    for regularizer in ("weight_decay", "l2sp"):
        study = optuna.load_study(study_name=plan.study_name(Cell(regularizer, "rte", 16)),
                                  storage=storage_url)
        spent = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                        optuna.trial.TrialState.PRUNED)
                 or t.user_attrs.get(RUN_FAILED)]
        assert len(spent) == 3, [(t.number, t.state, t.user_attrs) for t in study.trials]


def test_workers_without_tuning_publish_the_single_worker_leaderboard(storage_url, glue_dir,
                                                                      tmp_path, watcher):
    # Parallel sampling is not reproducible: only an untuned suite can match a lone worker's.
    suite_file = _suite_file(tmp_path, regularizers=["vanilla", "weight_decay", "l2sp"],
                             tuning={"trials": 0})
    suite = load_suite(str(suite_file))
    processes = _start_workers(3, suite_file, storage_url, glue_dir, tmp_path)
    victim = _kill_a_busy_worker(watcher(storage_url), processes)
    _check_runs(storage_url, victim, _finish(processes, tmp_path), suite)

    alone = f"sqlite:///{tmp_path / 'alone.db'}"
    (tmp_path / "alone").mkdir()
    _finish(_start_workers(1, suite_file, alone, glue_dir, tmp_path / "alone"), tmp_path / "alone")
    shared, single = (pd.read_csv(publish_suite(suite, Store(url).frame(suite.name),
                                                tmp_path / name).with_suffix(".csv"))
                      .drop(columns=["seconds", "peak_memory_mb", "time_vs_vanilla"])
                      for name, url in (("shared", storage_url), ("alone", alone)))
    pd.testing.assert_frame_equal(shared, single)  # scores, statistics and ranks; not timings


# -- a cluster's faults, on a real PostgreSQL ------------------------------------------------------

def _wait_for(engine, query, deadline=300):
    """Poll `query` until it returns a true value; that value."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with engine.connect() as connection:
                found = connection.execute(sa.text(query)).scalar()
            if found:
                return found
        except sa.exc.DBAPIError:  # the tables are not there yet
            pass
        time.sleep(0.2)
    pytest.fail(f"waited {deadline} s for: {query}")


def _stored_once(url, suite) -> int:
    """Every final run stored once, finished, and every run stored at most once; how many."""
    runs = Store(url).frame(suite.name)
    finals = runs[runs.phase == "final"]
    assert sorted(zip(finals.regularizer, finals.seed, strict=True)) == sorted(
        (r, s) for r in suite.regularizers for s in suite.final_seeds)
    assert (runs.status == "finished").all() and runs.key.is_unique
    return len(runs)


def test_a_worker_rides_out_a_database_restart(postgres, postgres_url, glue_dir, tmp_path,
                                               watcher):
    """Stop the server for some seconds while the worker is mid-suite: it waits, keeps what it
    trained meanwhile, stores it when the server is back, and finishes the suite."""
    suite_file = _suite_file(tmp_path, regularizers=["vanilla", "weight_decay"],
                             tuning={"trials": 2, "pruner": "median"})
    [worker] = _start_workers(1, suite_file, postgres_url, glue_dir, tmp_path, timeout=120)
    try:
        _wait_for(watcher(postgres_url), "select count(*) from regbench_runs")
        postgres.stop()
        time.sleep(8)  # the worker trains on, then waits for the server
    finally:
        postgres.start()
    trained = _finish([worker], tmp_path)
    log = (tmp_path / "worker-0.log").read_text()
    assert "lost the database at postgresql://" in log and "Traceback" not in log
    assert _stored_once(postgres_url, load_suite(str(suite_file))) == trained, \
        "a run was trained twice, or one was lost"


def test_a_worker_paused_past_the_timeout_drops_the_work_taken_over(postgres_url, glue_dir,
                                                                     tmp_path, watcher):
    """SIGSTOP a worker in the middle of a tuning trial, long enough for a second worker to take
    the trial over and finish the suite; SIGCONT it: it says so, and ends with the suite."""
    suite_file = _suite_file(tmp_path, regularizers=["weight_decay"], final_seeds=[1, 2],
                             tuning_seeds=[101], tuning={"trials": 2, "pruner": "none"})
    [paused] = _start_workers(1, suite_file, postgres_url, glue_dir, tmp_path, timeout=6)
    workers_ = [paused]
    try:
        _wait_for(watcher(postgres_url), "select count(*) from regbench_claims where not done")
        time.sleep(1)  # into the trial's training, away from any database call
        paused.send_signal(signal.SIGSTOP)
        workers_ += _start_workers(1, suite_file, postgres_url, glue_dir, tmp_path, timeout=6,
                                   first=1)
        assert workers_[1].wait(timeout=300) == 0, (tmp_path / "worker-1.log").read_text()
    finally:
        paused.send_signal(signal.SIGCONT)
    trained = _finish(workers_, tmp_path)
    log = (tmp_path / "worker-0.log").read_text()
    assert re.search(r"trial \d+ of \S+ was taken over by another worker while this one was "
                     r"silent past --heartbeat-timeout; this worker drops it", log), log
    assert "Traceback" not in log
    # The paused worker stops its run at its next report to the trial, or, past the last one,
    # trains it to the end and finds it stored: one run trained twice at most, stored once.
    assert trained - _stored_once(postgres_url, load_suite(str(suite_file))) in (0, 1)
