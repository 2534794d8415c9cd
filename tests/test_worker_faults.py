"""Workers under the faults of a cluster, each forced in one process: replies lost after a commit,
a worker frozen between two steps, a database out of reach, a server short of connections.

The runs train in no time (`instant_runs`), with scores that tie on purpose: what is tested is who
trains what and what is recorded, and tied scores leave the choice of the best parameters to the
tie rule alone, where real training would leave it to chance."""

import logging
import re
import threading
import time

import optuna
import pandas as pd
import psycopg
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from regbench import runner as runner_module
from regbench.cli import main
from regbench.errors import RegbenchError
from regbench.harness import RunResult
from regbench.runner import SuiteRunner
from regbench.store import CONNECTIONS_PER_WORKER, Store
from regbench.suite import Cell, parse_suite
from regbench.tuning import SLOT, best_params, open_study, slot_key, start_trial
from regbench.workers import Claim, Worker, workers

RECIPE = {"epochs": 1, "min_steps": 0, "batch_size": 8, "max_length": 32, "evaluations": 2}
WEIGHT_DECAY = Cell("weight_decay", "rte", 16)


def _suite(**changes):
    return parse_suite({"name": "faults", "tasks": ["rte"], "sizes": [16],
                        "tuning_seeds": [101], "final_seeds": [1, 2],
                        "regularizers": ["vanilla", "weight_decay"],
                        "tuning": {"trials": 3, "pruner": "none"}, "recipe": RECIPE, **changes})


class Trained(list):
    """The (regularizer params, seed) of every run trained; `fail` set: each run raises."""

    fail = False


@pytest.fixture
def instant_runs(monkeypatch) -> Trained:
    """Runs that report each evaluation and score 0.5 whatever their parameters."""
    trained = Trained()

    def fine_tune(data, regularizer, seed, model, recipe, device, on_evaluate=None, **_):
        trained.append((regularizer.params, seed))
        if trained.fail:
            raise RuntimeError("plugin bug")
        for k in range(1, recipe.evaluations + 1):
            if on_evaluate is not None:
                on_evaluate(k, 0.5)
        return RunResult("finished", validation={"accuracy": 0.5}, test={"accuracy": 0.5},
                         steps=2, seconds=0.01)

    monkeypatch.setattr(runner_module, "fine_tune", fine_tune)
    return trained


def _outcome(url: str, suite) -> tuple[pd.DataFrame, dict]:
    """The stored runs, and each study's trials by slot: state, parameters, value."""
    runs = Store(url).frame(suite.name)[["key", "phase", "trial", "regularizer", "seed",
                                         "status", "validation_score", "test_score"]]
    plan = runner_module.Plan.of(suite)
    studies = {}
    for cell in plan.tuned:
        study = optuna.load_study(study_name=plan.study_name(cell), storage=url)
        studies[cell] = sorted((t.user_attrs[SLOT], t.number, t.state.name, t.params, t.value)
                               for t in study.trials)
    return runs.sort_values("key").reset_index(drop=True), studies


# Each kind of write a worker makes, by the SQL of its transaction.
WRITES = {
    "registering a worker": r"INSERT INTO regbench_workers",
    "creating a study": r"INSERT INTO studies",
    "claiming": r"INSERT INTO regbench_claims",
    "creating a trial (the defaults)": r"INSERT INTO trials\b",
    "setting a trial's parameter": r"INSERT INTO trial_params",
    "reporting to the pruner": r"INSERT INTO trial_intermediate_values",
    "storing a run": r"INSERT INTO regbench_runs",
    "telling a trial's value": r"INSERT INTO trial_values",
    "finishing a claim": r"UPDATE regbench_claims SET done",
    "giving a claim back": r"DELETE FROM regbench_claims",
}


def test_a_write_whose_reply_is_lost_is_not_applied_twice(new_postgres_database, lost_replies,
                                                          glue_dir, instant_runs, caplog):
    """The reply of the first write of each kind is lost after its commit: the suite's runs, and
    its trials slot by slot, numbers included, are those of a run without faults."""
    suite = _suite()
    clean = new_postgres_database("t_replies_clean")
    SuiteRunner(suite, clean, device="cpu", data_dir=glue_dir, progress=False,
                heartbeat_timeout=30).run()
    trained = len(instant_runs)
    proxy = lost_replies(*WRITES.values())
    faulty = proxy.url(new_postgres_database("t_replies_lost"))
    SuiteRunner(suite, faulty, device="cpu", data_dir=glue_dir, progress=False,
                heartbeat_timeout=30).run()
    assert sorted(proxy.dropped) == sorted(WRITES.values()), proxy.pending  # each fault struck
    assert len(instant_runs) == 2 * trained  # no run trained twice
    (runs, studies), (clean_runs, clean_studies) = _outcome(faulty, suite), _outcome(clean, suite)
    pd.testing.assert_frame_equal(runs, clean_runs)
    assert studies == clean_studies
    [trials] = studies.values()
    assert [(slot, state) for slot, _, state, _, _ in trials] == [
        (0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    assert trials[0][3] == {"weight_decay": 0.01}  # the defaults, in slot 0
    assert "taken over" not in caplog.text


def test_the_best_parameters_go_to_the_earliest_slot_on_a_tie(tmp_path):
    """Slot 1's trial made before slot 0's, as when the defaults' first trial was cut off and run
    again: the tie goes to the defaults all the same."""
    storage = f"sqlite:///{tmp_path / 'tie.db'}"
    study = open_study(storage, "tie", _suite().tuning, 2, 1)
    for slot in (1, 0):
        trial = start_trial(study, slot, {"weight_decay": 0.01}, _suite().tuning)
        trial.suggest_float("weight_decay", 1e-4, 0.3, log=True)
        study.tell(trial, 0.5)
    assert [t.user_attrs[SLOT] for t in study.trials] == [1, 0]
    assert study.best_params != {"weight_decay": 0.01}  # Optuna's rule: the first trial number
    assert best_params(study) == {"weight_decay": 0.01}


# -- interleavings, forced ------------------------------------------------------------------------

def _runner(url, glue_dir, timeout=60.0, **suite):
    runner = SuiteRunner(_suite(**suite), url, device="cpu", data_dir=glue_dir, progress=False,
                         heartbeat_timeout=timeout)
    runner.worker = Worker(runner.store.engine, timeout)
    return runner


@pytest.mark.parametrize("first", ["the frozen worker tells", "the other closes"])
def test_a_trial_taken_over_from_a_frozen_worker_crashes_neither(first, tmp_path, glue_dir,
                                                                 instant_runs, caplog):
    """A worker freezes between its check that it holds the slot and recording its trial; another
    takes the slot over, and records... whichever of the two comes first wins, once."""
    url = f"sqlite:///{tmp_path / 'frozen.db'}"
    frozen = _runner(url, glue_dir, regularizers=["weight_decay"], tuning={"trials": 1})
    other = _runner(url, glue_dir, timeout=0.5, regularizers=["weight_decay"],
                    tuning={"trials": 1})
    name = frozen.plan.study_name(WEIGHT_DECAY)
    key, space = slot_key(name, 0), frozen.plan.space(WEIGHT_DECAY)
    studies = [open_study(r.studies, name, r.suite.tuning, 2, 1) for r in (frozen, other)]
    assert frozen.worker.claim(key) is Claim.OURS
    trial = start_trial(studies[0], 0, {"weight_decay": 0.01}, frozen.suite.tuning)
    paused, resume = threading.Event(), threading.Event()
    holds = frozen.worker.holds

    def holds_then_freezes(claim):
        held = holds(claim)
        paused.set()
        resume.wait()
        return held

    frozen.worker.holds = holds_then_freezes
    # A daemon, so that a failure below cannot leave the frozen worker holding the test process.
    thread = threading.Thread(target=frozen._run_trial, daemon=True,
                              args=(WEIGHT_DECAY, studies[0], trial, key, {}, space))
    thread.start()
    assert paused.wait(30)
    time.sleep(0.6)  # past the other's timeout: the frozen worker is taken for dead
    assert other.worker.claim(key) is Claim.OURS
    if first == "the frozen worker tells":
        # It wakes between the other's look at the slot and its closing of the trial.
        tell = studies[1].tell

        def wake_first(*args, **kwargs):
            resume.set()
            thread.join()
            return tell(*args, **kwargs)

        studies[1].tell = wake_first
        # The slot is spent.
        assert start_trial(studies[1], 0, {"weight_decay": 0.01}, other.suite.tuning) is None
    else:
        retried = start_trial(studies[1], 0, {"weight_decay": 0.01}, other.suite.tuning)
        resume.set()
        thread.join()
        other._run_trial(WEIGHT_DECAY, studies[1], retried, key, {}, space)
        assert "was taken over by another worker" in caplog.text
    done = [t for t in optuna.load_study(study_name=name, storage=url).trials
            if t.state == TrialState.COMPLETE]
    assert [(t.user_attrs[SLOT], t.params) for t in done] == [(0, {"weight_decay": 0.01})]
    for runner in (frozen, other):
        runner.worker.close()


def test_a_failed_final_run_is_tried_once_a_round(tmp_path, glue_dir, instant_runs):
    """Another worker claims, fails, stores and gives back a final run between this worker's look
    at the store and its claim: this one does not train it again. A later round does, once."""
    url = f"sqlite:///{tmp_path / 'failed.db'}"
    instant_runs.fail = True
    first, second = (_runner(url, glue_dir, regularizers=["vanilla"], final_seeds=[1],
                             tuning={"trials": 0}) for _ in range(2))
    claim = first.worker.claim

    def overtaken(key):
        second._final_runs(Cell("vanilla", "rte", 16), {})
        return claim(key)

    first.worker.claim = overtaken
    assert first._final_runs(Cell("vanilla", "rte", 16), {})
    assert len(instant_runs) == 1
    later = _runner(url, glue_dir, regularizers=["vanilla"], final_seeds=[1],
                    tuning={"trials": 0})
    later._final_runs(Cell("vanilla", "rte", 16), {})
    assert len(instant_runs) == 2
    for runner in (first, second, later):
        runner.worker.close()


def test_a_worker_back_from_an_outage_does_not_take_over_the_others(tmp_path):
    """All lose the database together: the others' silence counts from this worker's return."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'outage.db'}")
    with Worker(engine, timeout=60) as holder, Worker(engine, timeout=60) as back:
        holder.claim("work")
        with engine.begin() as connection:  # silent for longer than the timeout
            connection.execute(sa.update(workers).where(workers.c.id == holder.id)
                               .values(heartbeat=time.time() - 90))
        back._heard_since = None  # this worker's own beats fail
        assert back.claim("work") is Claim.HELD
        back._heard_since = time.time()  # and land again
        assert back.claim("work") is Claim.HELD
        back._heard_since = time.time() - 61
        assert back.claim("work") is Claim.OURS


def test_a_waiting_worker_wakes_when_the_last_claim_is_given_back(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'wait.db'}")
    with Worker(engine, timeout=300) as holder, Worker(engine, timeout=300) as waiter:
        holder.claim("last")
        threading.Timer(0.5, holder.finish, ["last"]).start()
        started = time.monotonic()
        waiter.wait(waiter.interval)  # 30 s at most
        assert time.monotonic() - started < 5
        assert waiter.claim("last") is Claim.DONE


# -- outages and limits ---------------------------------------------------------------------------

def test_an_outage_past_the_timeout_during_tuning_prints_the_run_and_what_to_do(
        new_postgres_database, lost_replies, glue_dir, instant_runs, monkeypatch):
    proxy = lost_replies()
    url = proxy.url(new_postgres_database("t_outage_tuning"))
    runner = SuiteRunner(_suite(regularizers=["weight_decay"]), url, device="cpu",
                         data_dir=glue_dir, progress=False, heartbeat_timeout=1.5)
    fine_tune = runner_module.fine_tune

    def cut_off(data, regularizer, seed, model, recipe, device, on_evaluate=None, **options):
        proxy.outage(30)  # in the middle of the first tuning run, before its first report
        return fine_tune(data, regularizer, seed, model, recipe, device, on_evaluate, **options)

    monkeypatch.setattr(runner_module, "fine_tune", cut_off)
    with pytest.raises(RegbenchError) as raised:
        runner.run()
    message = str(raised.value)
    assert message.startswith(f"Could not use the database at {url.split('?')[0]}")
    assert re.search(r"It could not be used for \d s, past --heartbeat-timeout \(2 s\); once it "
                     r"is back, run the same command again", message)
    assert '"phase": "tune"' in message and '"validation": {"accuracy": 0.5}' in message
    assert "An exception is raised during the commit" not in message  # Optuna's, hiding the cause
    assert len(instant_runs) == 1  # trained to the end, unjudged: the run is in the message


@pytest.fixture
def limited_role(postgres_server):
    """`limited_role(n)`: the URL of a new database owned by a role that may open n
    connections."""
    admin = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")

    def make(n: int) -> str:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE ROLE limited_{n} LOGIN CONNECTION LIMIT {n}")
            connection.exec_driver_sql(f"CREATE DATABASE t_limited_{n} OWNER limited_{n}")
        return postgres_server.replace("//regbench@", f"//limited_{n}@") + f"/t_limited_{n}"

    yield make
    admin.dispose()


def test_too_few_connections_for_one_worker_are_said_at_start_up(limited_role, glue_dir):
    url = limited_role(CONNECTIONS_PER_WORKER - 1)
    with pytest.raises(RegbenchError, match=(
            rf"lets regbench open {CONNECTIONS_PER_WORKER - 1} connections \(the role's "
            rf"CONNECTION LIMIT \(ALTER ROLE\)\), and a worker needs {CONNECTIONS_PER_WORKER}")):
        SuiteRunner(_suite(), url, device="cpu", data_dir=glue_dir, progress=False)


def test_a_worker_waits_for_a_connection_and_needs_no_more_than_it_says(limited_role, glue_dir,
                                                                         instant_runs, caplog):
    """Every connection the role may open is taken, then given back once the worker says it
    waits: it waits, then runs a tuned suite within that many connections."""
    url = limited_role(CONNECTIONS_PER_WORKER)
    held = [psycopg.connect(url) for _ in range(CONNECTIONS_PER_WORKER)]

    class GiveBack(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("no connection free"):
                for connection in held:
                    connection.close()

    logger = logging.getLogger("regbench.store")
    logger.addHandler(handler := GiveBack())
    try:
        with caplog.at_level(logging.WARNING):
            SuiteRunner(_suite(), url, device="cpu", data_dir=glue_dir, progress=False,
                        heartbeat_timeout=20).run()
    finally:
        logger.removeHandler(handler)
    assert "no connection free on the database server at postgresql://limited_" in caplog.text
    assert len(Store(url).frame("faults")) == 3 * 1 + 2 * 2


# -- suites that share runs -----------------------------------------------------------------------

def test_a_run_stored_by_another_suite_counts_for_this_one(tmp_path, glue_dir, instant_runs,
                                                           capsys):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    SuiteRunner(_suite(name="first", tuning={"trials": 0}), url, device="cpu", data_dir=glue_dir,
                progress=False).run()
    second = tmp_path / "second.yaml"
    second.write_text(f"tasks: [rte]\nsizes: [16]\nfinal_seeds: [1, 2]\ntuning: {{trials: 0}}\n"
                      f"regularizers: [vanilla, weight_decay]\nrecipe: {RECIPE}\n")
    common = ["--suite", str(second), "--storage", url]
    assert main(["run", *common, "--data-dir", str(glue_dir), "--device", "cpu"]) == 0
    assert "0 runs trained, 0 pruned partway, 4 already stored" in capsys.readouterr().out
    assert len(instant_runs) == 4  # the first suite's
    assert main(["results", *common]) == 0
    out = capsys.readouterr().out
    assert "PARTIAL" not in out and out.count("\nfinal ") == 4
    assert set(Store(url).frame("second").suite) == {"first"}  # trained, and stored, by the first
