"""The store as the commands open it: made once and in one step for `run`, never made nor changed
by the read-only commands; a run that cannot be stored is printed, never lost."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from regbench.cli import main
from regbench.errors import RegbenchError
from regbench.recipe import Recipe
from regbench.runner import SuiteRunner
from regbench.store import Store, database_call, runs
from regbench.suite import parse_suite
from regbench.workers import metadata as worker_tables

TINY_RECIPE = {"epochs": 1, "min_steps": 0, "batch_size": 8, "max_length": 32, "evaluations": 1}


def _row(suite: str, seed: int, **values) -> dict:
    return {"key": f"{suite}-{seed}-{values.get('regularizer', 'vanilla')}", "suite": suite,
            "phase": "final", "regularizer": "vanilla", "regularizer_version": "1", "params": {},
            "task": "rte", "n_train": 16, "data_seed": 0, "seed": seed, "model": "minilm",
            "recipe": Recipe(**TINY_RECIPE).as_dict(), "status": "finished",
            "validation_score": 0.5, "test_score": 0.5, "seconds": 1.0, **values}


def test_workers_that_start_together_make_one_store(tmp_path):
    """A new SQLite store appears whole, or not at all: a worker never finds an empty file of
    another worker's making and takes it for a stranger's."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    errors, barrier = [], threading.Barrier(4)

    def start():
        barrier.wait()
        try:
            Store(url).put(_row("s", threading.get_ident() % 1000))
        except Exception as err:  # collected: the assertion below names it
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(Store(url, create=False).frame()) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["new.db"]  # no staging file left


def test_reading_never_writes(tmp_path):
    path = tmp_path / "runs.db"
    Store(f"sqlite:///{path}").put(_row("s", 1))
    before = path.read_bytes()
    path.chmod(stat.S_IRUSR)  # readable, not writable (for all but root)
    try:
        assert len(Store(f"sqlite:///{path}", create=False).frame("s")) == 1
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "runs.db"]


READ_ONLY_CHECK = """
import sys
from regbench.errors import RegbenchError
from regbench.store import Store

folder = sys.argv[1]
for name in ("runs.db", "new.db"):
    try:
        Store(f"sqlite:///{folder}/{name}")
        print(name, "opened for writing")
    except RegbenchError as err:
        print(name, err)
print("read", len(Store(f"sqlite:///{folder}/runs.db", create=False).frame()), "runs")
"""


def test_a_read_only_store_is_refused_for_writing_and_read_as_usual(tmp_path):
    """Permissions do not stop root: there, the folder is mounted read-only, in a mount namespace
    of the check's own."""
    folder = tmp_path / "published"
    folder.mkdir()
    Store(f"sqlite:///{folder / 'runs.db'}").put(_row("s", 1))
    command = [sys.executable, "-c", READ_ONLY_CHECK, str(folder)]
    if os.geteuid() == 0:
        if not shutil.which("unshare"):
            pytest.skip("root, and no unshare to mount the folder read-only")
        command = ["unshare", "--mount", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"',
                   str(folder), *command]
    else:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        folder.chmod(stat.S_IRWXU)
    if "mount" in done.stderr and done.returncode:
        pytest.skip(f"cannot mount read-only here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"runs.db Storage sqlite:///{folder}/runs.db: it is read-only; make the file and its "
        "folder writable, or copy it to a writable place and name the copy with --storage.",
        f"new.db Storage sqlite:///{folder}/new.db: the folder {folder} is read-only; make it "
        "writable, or name a file elsewhere.",
        "read 1 runs"]


def test_results_show_one_suite_and_say_when_it_is_partial(tmp_path, capsys):
    suite = tmp_path / "mine.yaml"
    suite.write_text("tasks: [rte]\nsizes: [16]\nregularizers: [vanilla, l2sp]\n"
                     f"final_seeds: [1, 2]\nrecipe: {json.dumps(TINY_RECIPE)}\n")
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = Store(url)
    for seed in (1, 2):
        store.put(_row("mine", seed))
        store.put(_row("other", seed, regularizer="l2sp", test_score=0.9))
    store.put(_row("mine", 1, regularizer="l2sp"))
    store.put(_row("mine", 2, regularizer="l2sp", status="failed"))

    assert main(["results", "--suite", str(suite), "--storage", url]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PARTIAL: suite mine is not finished: 1 of 4 final runs have no "
                          "result yet")
    assert "0.9" not in out and len(re.findall(r"^final ", out, re.M)) == 4  # its own rows only

    store.put(_row("mine", 2, regularizer="l2sp"), replace=True)
    assert main(["results", "--suite", str(suite), "--storage", url]) == 0
    assert "PARTIAL" not in capsys.readouterr().out


def test_a_run_that_cannot_be_stored_is_printed_and_stops_the_suite(glue_dir, tmp_path):
    """The disk fills up once the store holds a few runs (SQLite's own `max_page_count`, which
    gives the same error as a full disk): the run trained next comes back in the error, whole."""
    storage = f"sqlite:///{tmp_path / 'full.db'}"
    suite = parse_suite({"name": "full", "tasks": ["rte"], "sizes": [16], "final_seeds": [1, 2],
                         "tuning_seeds": [101], "regularizers": ["vanilla"],
                         "tuning": {"trials": 0}, "recipe": TINY_RECIPE})
    runner = SuiteRunner(suite, storage, data_dir=glue_dir, progress=False)
    engine = runner.store.engine
    worker_tables.create_all(engine)  # the worker's tables have room for its rows; runs do not
    with engine.connect() as connection:
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar()
    sa.event.listen(engine, "connect", lambda dbapi, _: dbapi.execute(
        f"PRAGMA max_page_count = {pages}"))
    engine.dispose()
    stored = 0
    with pytest.raises(RegbenchError, match="the disk is full"):
        while True:  # earlier runs, until the last page of the runs is full
            runner.store.put(_row("earlier", stored))
            stored += 1

    with pytest.raises(RegbenchError) as raised:
        runner.run()
    message = str(raised.value)
    assert re.match(r"Storage sqlite:///\S+full\.db: the disk is full; free some space .* The run "
                    r"just trained was not stored, and the suite stops here; its result: \{",
                    message)
    result = json.loads(message[message.index("{"):])
    assert result["seed"] == 1 and result["status"] == "finished"
    assert 0 <= result["test"]["accuracy"] <= 1 and result["steps"] == 2
    with sa.create_engine(storage).connect() as connection:
        suites = connection.execute(sa.select(runs.c.suite)).scalars().all()
        assert suites == ["earlier"] * stored  # what was stored stays; nothing was half written
        assert not connection.exec_driver_sql("select * from regbench_claims").all()


def test_a_server_out_of_reach_is_waited_for_then_named(caplog):
    """Tried again, backing off, for `patience` seconds; then one error that names the server."""

    class Client:
        url, patience, attempts = "postgresql://u:secret@127.0.0.1:1/db", 2.0, 0

        @database_call
        def ask(self):
            self.attempts += 1
            with sa.create_engine(self.url).connect():
                pass

    client = Client()
    started = time.monotonic()
    with pytest.raises(RegbenchError, match=r"^Could not use the database at postgresql://u:\*\*\*"
                                            r"@127\.0\.0\.1:1/db: .*refused"):
        client.ask()
    assert 2.0 <= time.monotonic() - started < 4 and 3 <= client.attempts <= 8
    assert [r.message for r in caplog.records] == [
        "lost the database at postgresql://u:***@127.0.0.1:1/db (OperationalError); trying "
        "again for up to 2 s"]


def test_a_store_of_an_older_version_is_read_as_it_is_and_grown_for_writing(tmp_path):
    """A store made before the noise-stability column: reading it adds nothing, writing adds the
    column and keeps every row."""
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    Store(url).put(_row("old", 1))
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE regbench_runs DROP COLUMN noise_stability")
    engine.dispose()
    before = path.read_bytes()
    frame = Store(url, create=False).frame("old")
    assert len(frame) == 1 and "noise_stability" not in frame.columns
    assert path.read_bytes() == before
    grown = Store(url)
    grown.put(_row("old", 2, noise_stability={"summary": 0.1, "table": []}))
    frame = grown.frame("old").sort_values("seed")
    assert list(frame.seed) == [1, 2] and frame.noise_stability.iloc[1]["summary"] == 0.1
