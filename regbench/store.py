"""The results store: one row per run, keyed by a hash of everything that decides its outcome.

The same database (a SQLAlchemy URL; SQLite by default, PostgreSQL or MySQL for workers on several
machines) holds the Optuna studies of the suite and the claims of its workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import optuna
import pandas as pd
import sqlalchemy as sa

import regbench

FINISHED = "finished"  # trained to the end and evaluated
DIVERGED = "diverged"  # the training loss stopped being finite: a result, not an accident
FAILED = "failed"  # raised: a final run is retried when the suite runs again
PRUNED = "pruned"  # a tuning run the pruner stopped; kept to count what pruning saved
SETTLED = (FINISHED, DIVERGED)  # outcomes that a rerun keeps
T = TypeVar("T")

metadata = sa.MetaData()
runs = sa.Table(
    "regbench_runs", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("suite", sa.String(200), index=True, nullable=False),
    sa.Column("phase", sa.String(10), nullable=False),  # "tune" or "final"
    sa.Column("trial", sa.Integer),  # the Optuna trial number of a tuning run
    sa.Column("regularizer", sa.String(100), nullable=False),
    sa.Column("regularizer_version", sa.String(50), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("task", sa.String(20), nullable=False),
    sa.Column("n_train", sa.Integer, nullable=False),
    sa.Column("data_seed", sa.Integer, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("model", sa.String(300), nullable=False),
    sa.Column("recipe", sa.JSON, nullable=False),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("validation", sa.JSON),
    sa.Column("test", sa.JSON),
    sa.Column("validation_score", sa.Float),  # the task's primary metric, for queries
    sa.Column("test_score", sa.Float),
    sa.Column("steps", sa.Integer),
    sa.Column("seconds", sa.Float),
    sa.Column("peak_memory_mb", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("provenance", sa.JSON),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("noise_stability", sa.JSON),  # regbench.noise_stability, for a tested run
)


def storage_url(suite: str, url: str | None = None) -> str:
    """`url` when one is given, else the suite's own SQLite file, `runs/<suite>.db`."""
    if url:
        return url
    path = Path("runs") / f"{suite}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _engine_options(url: str) -> dict[str, Any]:
    """What an engine needs when several processes write to one database: SQLite waits for the
    lock (a minute) rather than failing at once; a server's connections are checked before use,
    as a worker may sit idle longer than the server keeps a connection open."""
    if sa.make_url(url).get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def create_engine(url: str) -> sa.Engine:
    return _serialise_sqlite(sa.create_engine(url, **_engine_options(url)))


def study_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage in the same database, its engine set up as the store's."""
    storage = tolerate_creation_race(
        lambda: optuna.storages.RDBStorage(url, engine_kwargs=_engine_options(url)))
    _serialise_sqlite(storage.engine)
    return storage


def _serialise_sqlite(engine: sa.Engine) -> sa.Engine:
    """On SQLite, take the write lock when a transaction begins: a reader that turns writer midway
    is refused at once, without waiting, when another process writes; and two workers could take
    the same queued trial, as SQLite ignores Optuna's SELECT ... FOR UPDATE."""
    if engine.dialect.name == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _no_implicit_begin(dbapi_connection, _):
            dbapi_connection.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _begin_immediate(connection):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        engine.dispose()  # connections opened before the listeners would lack them
    return engine


def tolerate_creation_race(create: Callable[[], T], attempts: int = 5) -> T:
    """`create()`, tried again while it fails: workers that start together on a new database race
    to create its tables (PostgreSQL refuses the loser's CREATE TABLE, and Optuna creates its
    tables in several steps, each a race), and each try finds more of them made."""
    for _ in range(attempts - 1):
        try:
            return create()
        except sa.exc.DatabaseError:
            time.sleep(random.uniform(0.1, 0.5))  # apart, so the racers do not meet again
    return create()


def run_key(config: dict[str, Any]) -> str:
    """The content hash of a run: regularizer, its version and params, task, size, seeds, model,
    recipe and regbench's version. Nothing else may change a result."""
    payload = json.dumps({**config, "regbench": regbench.__version__}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@cache
def provenance(device: str) -> dict[str, Any]:
    import torch
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    return {"regbench": regbench.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "git_commit": commit, "device": device, "host": platform.node(),
            "cpu": f"{_cpu_model()}, {os.cpu_count()} logical CPUs", "gpu": gpu}


def _cpu_model() -> str:
    """The CPU's model name as Linux gives it; where there is no /proc/cpuinfo, the platform's
    word for it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _add_new_columns(engine: sa.Engine) -> None:
    """Columns this version added to the runs table, added to a store made by an older one (its
    rows keep their values, the new columns start empty)."""
    present = {c["name"] for c in sa.inspect(engine).get_columns(runs.name)}
    with engine.begin() as connection:
        for column in runs.columns:
            if column.name not in present:
                kind = column.type.compile(dialect=engine.dialect)
                connection.exec_driver_sql(
                    f"ALTER TABLE {runs.name} ADD COLUMN {column.name} {kind}")


class Store:
    def __init__(self, url: str):
        self.engine = create_engine(url)
        tolerate_creation_race(lambda: metadata.create_all(self.engine))
        tolerate_creation_race(lambda: _add_new_columns(self.engine))

    def get(self, key: str) -> dict | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(runs).where(runs.c.key == key)).mappings().first()
        return dict(row) if row else None

    def put(self, row: dict[str, Any], replace: bool = False) -> None:
        """Write one run in one transaction. A settled run is replaced only when asked, and only
        by another settled one: a crash never erases a result."""
        row = {**row, "finished_at": datetime.now(timezone.utc)}
        try:
            self._write(row, replace)
        except sa.exc.IntegrityError:  # another worker stored the same run meanwhile: decide again
            self._write(row, replace)

    def _write(self, row: dict[str, Any], replace: bool) -> None:
        with self.engine.begin() as connection:
            existing = connection.execute(
                sa.select(runs.c.status).where(runs.c.key == row["key"])).scalar()
            if existing in SETTLED and not (replace and row["status"] in SETTLED):
                return
            if existing is not None:
                connection.execute(sa.delete(runs).where(runs.c.key == row["key"]))
            connection.execute(sa.insert(runs).values(**row))

    def frame(self, suite: str | None = None) -> pd.DataFrame:
        query = sa.select(runs)
        if suite is not None:
            query = query.where(runs.c.suite == suite)
        with self.engine.connect() as connection:
            return pd.read_sql(query, connection)
