"""The results store: one row per run, keyed by a hash of everything that decides its outcome.

The same database (a SQLAlchemy URL; SQLite by default, PostgreSQL or MySQL for workers on several
machines) holds the Optuna studies of the suite and the claims of its workers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import random
import sqlite3
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import optuna
import pandas as pd
import sqlalchemy as sa
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

import regbench
from regbench.errors import RegbenchError
from regbench.paths import not_a_file, not_a_folder, os_problem

if TYPE_CHECKING:
    from regbench.suite import Cell, Suite

log = logging.getLogger(__name__)
FINISHED = "finished"  # trained to the end and evaluated
DIVERGED = "diverged"  # the training loss stopped being finite: a result, not an accident
FAILED = "failed"  # raised: a final run is retried when the suite runs again
PRUNED = "pruned"  # a tuning run the pruner stopped; kept to count what pruning saved
SETTLED = (FINISHED, DIVERGED)  # outcomes that a rerun keeps
CELL = ["task", "n_train", "regularizer"]  # the key of a cell: its runs differ in the seed alone
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
    # regbench.metrics.test_reference: the test half's size, label counts and constant predictor,
    # so that a board is rendered from the store alone.
    sa.Column("test_reference", sa.JSON),
)

# The runs of a suite stored under another suite's name (the same key: the same run), which count
# for this suite too.
shared = sa.Table(
    "regbench_shared_runs", metadata,
    sa.Column("suite", sa.String(200), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
)


def storage_url(suite: str, url: str | None = None) -> str:
    """`url` when one is given, else the suite's own SQLite file, `runs/<suite>.db`."""
    if url is None:
        return f"sqlite:///{Path('runs') / f'{suite}.db'}"
    if not url.strip():
        raise RegbenchError("--storage is empty: give a database URL, or leave the flag out for "
                            f"runs/{suite}.db.")
    if _in_memory(url):
        raise RegbenchError(f"--storage {url} is a database in memory, which keeps nothing once "
                            "regbench exits: name a file, as sqlite:///runs/mine.db.")
    return url


def _in_memory(url: str) -> bool:
    """Whether `url` is a SQLite database in memory, in any of SQLite's spellings of one."""
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        return False  # not a URL: check_url says so
    database = parsed.database or ""
    return parsed.get_backend_name() == "sqlite" and (
        database in ("", ":memory:") or database.startswith("file::memory:")
        or parsed.query.get("mode") == "memory")


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite store's URL (a URI filename's path too); None for a server's."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or _in_memory(url):
        return None
    database = parsed.database
    if parsed.query.get("uri") == "true" and database.startswith("file:"):
        database = urllib.parse.unquote(urllib.parse.urlsplit(database).path)
    return Path(database)


def _where(url: str | sa.URL) -> str:
    """A URL fit to print: its password hidden."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return str(url)


_FULL = ("the disk is full; free some space (or move the store elsewhere with --storage) and run "
         "the same command again")
_DAMAGED = ("it is damaged (database disk image is malformed); restore it from a copy, or name a "
            "new file with --storage")
_NOT_SQLITE = "it is not a SQLite database; name a regbench store, or a new file"
_READ_ONLY = ("it is read-only; make the file and its folder writable, or copy it to a writable "
              "place and name the copy with --storage")
# What the drivers' errors mean, by a telling part of their message (SQLite's, or the operating
# system's under any driver), and what to do about each.
_PROBLEMS = {
    "database or disk is full": _FULL,
    "no space left on device": _FULL,
    "readonly database": _READ_ONLY,
    "file is not a database": _NOT_SQLITE,
    "database disk image is malformed": _DAMAGED,
    "unable to open database file": "it cannot be opened; check that its folder exists and is "
                                    "writable",
    "disk i/o error": "the disk failed to read or write it (disk I/O error); check the disk",
    "database is locked": "another process has held it locked for over a minute; stop that "
                          "process, or wait for it",
}
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first bytes of every SQLite database file


def _chain(err: BaseException):
    """`err`, its causes, and the driver's exceptions they wrap."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        orig = getattr(err, "orig", None)
        if isinstance(orig, BaseException):
            yield orig
        err = err.__cause__ or err.__context__


def _disconnected(err: BaseException) -> bool:
    """Whether `err` is a database server out of reach (a restart, a network cut), or one with no
    connection free: worth waiting for. SQLite's operational errors (a full disk, a lock) are
    not: waiting does not end them."""
    return _cause(err) is not None


def _cause(err: BaseException) -> sa.exc.DBAPIError | None:
    """The driver's error that makes `err` worth waiting for, if any."""
    for cause in _chain(err):
        if isinstance(cause, sa.exc.DBAPIError) and (
                cause.connection_invalidated or (isinstance(cause, sa.exc.OperationalError)
                                                 and not _from_sqlite(cause))):
            return cause
    return None


# How PostgreSQL ("sorry, too many clients already", "remaining connection slots are reserved",
# "too many connections for role") and MySQL ("Too many connections") refuse a connection when
# their limit is reached.
_CROWDED = ("too many clients", "too many connections", "remaining connection slots")
# The most a worker holds at once: the store's pool of two (its work and its heartbeat), and
# Optuna's one (two for its schema check at start-up, before the heartbeat starts).
CONNECTIONS_PER_WORKER = 3


def _crowded(err: BaseException) -> bool:
    return any(word in str(cause).lower() for cause in _chain(err) for word in _CROWDED)


def _from_sqlite(err: sa.exc.DBAPIError) -> bool:
    return type(err.orig).__module__.startswith("sqlite3")


def explain(err: BaseException, url: str | sa.URL) -> RegbenchError | None:
    """The user's or the machine's problem behind a database error, as a `RegbenchError` naming the
    store and what to do; None for an error regbench does not expect (a bug)."""
    where = _where(url)
    for cause in _chain(err):
        text = str(cause).lower()
        for telling, problem in _PROBLEMS.items():
            if telling in text:
                return RegbenchError(f"Storage {where}: {problem}.")
    cause = _cause(err)
    if cause is not None:
        said = str(cause.orig or cause).strip()
        first = said.splitlines()[0] if said else type(cause).__name__
        if _crowded(err):
            return RegbenchError(
                f"The database server at {where} has no connection free ({first}). Each "
                f"regbench worker needs up to {CONNECTIONS_PER_WORKER} connections: raise the "
                "server's limit (PostgreSQL: max_connections in postgresql.conf, or the role's "
                "CONNECTION LIMIT; MySQL: max_connections), or start fewer workers.")
        return RegbenchError(f"Could not use the database at {where}: {first}. Check that the "
                             "server is running, and the URL's host, port, user, password and "
                             "database name.")
    return None


def database_call(method: Callable[..., T] | None = None, *,
                  landed: Callable[..., T | None] | None = None):
    """A method of an object with a `url` and `patience` (seconds) that uses the database, made
    patient and plain-spoken: while the server is out of reach it is called again, backing off
    with jitter, for up to `patience` seconds; then, or at once for any problem of the user's or
    the machine's, a `RegbenchError` names the store and says what to do.

    A write whose reply was lost may have landed: before it is tried again, `landed` (called with
    the same arguments) says so by returning its result, or None to try it again."""
    if method is None:
        return functools.partial(database_call, landed=landed)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        retried = False

        def attempt():
            if retried and landed is not None:
                found = landed(self, *args, **kwargs)
                if found is not None:
                    return found
            return method(self, *args, **kwargs)

        def again():
            nonlocal retried
            retried = True

        return patiently(attempt, self.url, self.patience, again)

    return call


def patiently(attempt: Callable[[], T], url: str | sa.URL, patience: float,
              on_retry: Callable[[], None] | None = None,
              transient: Callable[[BaseException], bool] = _disconnected) -> T:
    """`attempt()`, called again while it fails for a `transient` reason (by default, the
    database server out of reach or with no connection free), for up to `patience` seconds (see
    `database_call`)."""
    lost, delay = None, 0.5
    while True:
        try:
            return attempt()
        except (sa.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
            now = time.monotonic()
            if lost is None:
                lost = now
                if transient(err) and patience:
                    log.warning("%s %s (%s); trying again for up to %.0f s",
                                "no connection free on the database server at"
                                if _crowded(err) else "lost the database at",
                                _where(url), type(err).__name__, patience)
            if transient(err) and now < lost + patience:
                # Jitter on the back-off, not on the time left: a fraction of what is left
                # would shrink without end and call the server ever faster near the deadline.
                time.sleep(min(delay * random.uniform(0.5, 1.0), lost + patience - now))
                delay = min(2 * delay, 30.0)
                if on_retry is not None:
                    on_retry()
                continue
            problem = explain(err, url)
            if problem is None:
                raise
            if patience and transient(err):
                raise RegbenchError(
                    f"{problem} It could not be used for {now - lost:.0f} s, past "
                    f"--heartbeat-timeout ({patience:.0f} s); once it is back, run the same "
                    "command again: every stored run is kept, and the suite resumes.") from err
            raise problem from err


def _engine_options(url: str) -> dict[str, Any]:
    """What an engine needs when several processes write to one database: SQLite waits for the
    lock (a minute) rather than failing at once; a server's connections are checked before use,
    as a worker may sit idle longer than the server keeps a connection open, and a server that
    does not answer is given up on after 10 s rather than the system's minutes."""
    backend = sa.make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    # A worker's two threads (its work, its heartbeat) use the store's engine at once, never
    # more: a bounded pool keeps what a worker takes from the server's connections known.
    if backend in ("postgresql", "mysql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10},
                "pool_size": 2, "max_overflow": 0}
    return {"pool_pre_ping": True}


def connection_limit(engine: sa.Engine) -> tuple[int, str] | None:
    """The connections this database user may open on the server, and the setting that decides
    it; None for SQLite, or where the server does not say."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            row = connection.execute(sa.text(
                "select current_setting('max_connections')::int, "
                "current_setting('superuser_reserved_connections')::int, "
                "coalesce(current_setting('reserved_connections', true), '0')::int, "
                "r.rolsuper, r.rolconnlimit, d.datconnlimit "
                "from pg_roles r, pg_database d "
                "where r.rolname = current_user and d.datname = current_database()")).one()
            limits = [(row[0] - (0 if row[3] else row[1] + row[2]),
                       "max_connections in postgresql.conf")]
            if row[4] >= 0 and not row[3]:
                limits.append((row[4], "the role's CONNECTION LIMIT (ALTER ROLE)"))
            if row[5] >= 0 and not row[3]:
                limits.append((row[5], "the database's CONNECTION LIMIT (ALTER DATABASE)"))
            return min(limits)
        if engine.dialect.name == "mysql":
            server, user = connection.execute(sa.text(
                "select @@max_connections, @@max_user_connections")).one()
            return min((server, "max_connections"),
                       (user or server + 1, "max_user_connections"))
    return None


def create_engine(url: str) -> sa.Engine:
    return _serialise_sqlite(sa.create_engine(url, **_engine_options(url)))


TOKEN = "regbench_token"  # system attribute: what makes a trial's creation a no-op when repeated


class _PatientStudies(optuna.storages.RDBStorage):
    """Optuna's storage with every call a `database_call`, and its writes safe to repeat when a
    reply is lost: a trial created from a template with a `TOKEN` is created once, and a state
    already set is not set again."""

    patience = 0.0

    def _get_prepared_new_trial(self, study_id: int, template_trial: FrozenTrial | None,
                                session: Any) -> Any:
        # Called with the study's row locked, and again by Optuna's own retries of a creation.
        token = template_trial.system_attrs.get(TOKEN) if template_trial is not None else None
        if token is not None:
            found = (session.query(models.TrialModel).join(models.TrialSystemAttributeModel)
                     .filter(models.TrialModel.study_id == study_id,
                             models.TrialSystemAttributeModel.key == TOKEN,
                             models.TrialSystemAttributeModel.value_json == json.dumps(token))
                     .one_or_none())
            if found is not None:
                return found
        return super()._get_prepared_new_trial(study_id, template_trial, session)

    def _state_was_set(self, trial_id: int, state: TrialState,
                       values: Sequence[float] | None = None) -> bool | None:
        trial = optuna.storages.RDBStorage.get_trial(self, trial_id)
        if trial.state == state and (values is None or trial.values == list(values)):
            return True
        return None


# The calls of Optuna's storage that each open a session of their own: the storage interface and
# the private ones its cache calls. The helpers they call within a session are left alone, as
# one is not worth retrying in a session already lost.
for _name in {*(n for n in dir(optuna.storages.BaseStorage) if not n.startswith("_")),
              "_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials",
              "_get_stale_trial_ids"}:
    setattr(_PatientStudies, _name, database_call(
        getattr(optuna.storages.RDBStorage, _name),
        landed=_PatientStudies._state_was_set if _name == "set_trial_state_values" else None))


def study_storage(url: str, patience: float = 0.0) -> optuna.storages.RDBStorage:
    """Optuna's storage in the same database, its engine set up as the store's (but for the pool:
    its schema check at start-up holds two connections, its calls one), its calls as patient as
    `patience` (seconds)."""
    options = _engine_options(url)
    if "pool_size" in options:
        options.update(pool_size=1, max_overflow=1)
    storage = patiently(lambda: tolerate_creation_race(
        lambda: _PatientStudies(url, engine_kwargs=options)), url, patience, transient=_crowded)
    storage.patience = patience
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
        except sa.exc.DatabaseError as err:
            if _crowded(err):  # not a race: for the caller's patience
                raise
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
            "cpu": f"{cpu_model()}, {os.cpu_count()} logical CPUs", "gpu": gpu}


def cpu_model() -> str:
    """The CPU's model name as Linux gives it; where there is no /proc/cpuinfo, the platform's
    word for it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runs_of_setup(frame: pd.DataFrame, suite: Suite) -> pd.DataFrame:
    """The runs of `frame` made with the suite's setup as it is now: its model, data seed and
    recipe. A suite's name may hold runs of others, as flags override a suite."""
    return frame[(frame.model == suite.model) & (frame.data_seed == suite.data_seed)
                 & frame.recipe.map(lambda recipe: recipe == suite.recipe.as_dict())]


def stored_per_cell(frame: pd.DataFrame, suite: Suite) -> dict[Cell, tuple[int, int]]:
    """Per cell of the suite, its tuning runs and final seeds in `frame` (the store's runs of the
    suite) that running it would keep rather than train: settled, or pruned for tuning runs."""
    mine = runs_of_setup(frame, suite)
    tuning = mine[(mine.phase == "tune") & mine.status.isin((*SETTLED, PRUNED))
                  & mine.seed.isin(suite.tuning_seeds)]
    finals = mine[(mine.phase == "final") & mine.status.isin(SETTLED)
                  & mine.seed.isin(suite.final_seeds)]
    cell = ["regularizer", "task", "n_train"]
    tuned = tuning.groupby(cell).size()
    seeds = finals.drop_duplicates([*cell, "seed"]).groupby(cell).size()
    return {c: (int(tuned.get((c.regularizer, c.task, c.size), 0)),
                int(seeds.get((c.regularizer, c.task, c.size), 0))) for c in suite.cells()}


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


def check_url(url: str) -> sa.URL:
    """`url` parsed, once it is known to be a database URL of a kind whose driver is installed:
    what can be said of a store without reaching it."""
    try:
        if "\x00" in url:
            raise ValueError("it holds a NUL character")
        parsed = sa.make_url(url)
        dialect = parsed.get_dialect()
        dialect.import_dbapi()
        dialect().create_connect_args(parsed)  # the URL's options read as the driver will
    except sa.exc.NoSuchModuleError:
        raise RegbenchError(f"Storage {_where(url)}: no database kind {parsed.drivername!r}; "
                            "regbench stores in sqlite, postgresql or mysql+pymysql.") from None
    except (sa.exc.ArgumentError, ValueError, TypeError) as err:
        said = f" ({err})" if not isinstance(err, sa.exc.ArgumentError) else ""
        raise RegbenchError(f"Storage {url!r} is not a database URL{said}; write a file as "
                            f"sqlite:///{url if '://' not in url else 'runs/mine.db'}, a server "
                            "as postgresql://user:password@host/database.") from None
    except ImportError as err:
        raise _missing_driver(parsed, err) from None
    return parsed


def open_database(url: str, create: bool) -> sa.Engine:
    """An engine on the database at `url`, checked before anything is written to it: that the URL
    is one, its driver installed, its server reached; that a SQLite file, where there is one, is a
    sound SQLite database; that the database is a regbench store, or, when `create`, empty. Without
    `create`, nothing is ever created or changed, and the store must exist."""
    check_url(url)
    path = sqlite_file(url)
    engine = create_engine(url) if path is None else _sqlite_engine(path, url, create)
    try:
        with engine.connect() as connection:
            tables = set(sa.inspect(connection).get_table_names())
            foreign = _foreign_table(sa.inspect(connection), tables)
            if foreign:
                raise RegbenchError(f"Storage {_where(url)} holds a table {foreign} that regbench "
                                    "or Optuna would use, but another program's: name a "
                                    "regbench store with --storage, or a new database.")
            if engine.dialect.name == "sqlite":
                verdict = connection.exec_driver_sql("PRAGMA quick_check").scalar()
                if verdict != "ok":
                    raise RegbenchError(f"Storage {_where(url)}: {_DAMAGED} ({verdict}).")
    except sa.exc.SQLAlchemyError as err:
        engine.dispose()
        problem = explain(err, url)
        if problem is None or _crowded(err):  # the latter for the caller's patience
            raise
        raise problem from err
    if runs.name not in tables and (tables or not create):
        engine.dispose()
        found = f"another program's tables ({', '.join(sorted(tables)[:5])})" if tables else \
            "no tables"
        raise RegbenchError(
            f"Storage {_where(url)} holds {found}, none of regbench's: it is not "
            "a regbench store. Name the store of this suite with --storage"
            + (", or a new database." if create else ", or run the suite first to make one."))
    return engine


def _missing_driver(url: sa.URL, err: ImportError) -> RegbenchError:
    install = {"postgresql": "pip install -e '.[postgres]' (psycopg 3, for postgresql://)",
               "mysql": "pip install -e '.[mysql]' (PyMySQL, for mysql+pymysql://)"}
    return RegbenchError(
        f"Storage {_where(url)} needs the Python driver {err.name or url.drivername!r}, which is "
        f"not installed: {install.get(url.get_backend_name(), 'install it')}.")


def _sqlite_engine(path: Path, url: str, create: bool) -> sa.Engine:
    """An engine on the SQLite file at `path`: for writing, with a new store made in one step when
    there is none; for reading, read-only, and only on a store that exists."""
    where = f"Storage {_where(url)}"
    problem = not_a_file(path)
    if problem:
        raise RegbenchError(f"{where}: {path} {problem}; name a database file.")
    if not path.exists():
        if not create:
            raise RegbenchError(f"{where}: no such file, so no runs to show. Run the suite first "
                                "(regbench run), or name its store with --storage.")
        _check_new_store_folder(path, where)
        _new_sqlite_store(path, url)
    elif path.stat().st_size == 0:
        raise RegbenchError(f"{where} is an empty file (0 bytes), not a regbench store; it may be "
                            "left from a failed copy. Delete it to start a new store, or name "
                            "the right file.")
    else:
        try:
            with path.open("rb") as head:
                magic = head.read(len(SQLITE_MAGIC))
        except OSError as err:
            raise RegbenchError(f"{where}: {path} {os_problem(err)}.") from None
        if magic != SQLITE_MAGIC:
            raise RegbenchError(f"{where}: {_NOT_SQLITE}.")
    if create and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        raise RegbenchError(f"{where}: {_READ_ONLY}.")
    if create:
        return create_engine(url)
    # Read-only by SQLite's own flag: not even a journal is left behind.
    uri = f"file:{urllib.request.pathname2url(str(path.resolve()))}?mode=ro"
    return sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True,
                                                                         timeout=60))


def _check_new_store_folder(path: Path, where: str) -> None:
    """An error unless a new store can be made at `path`, in a writable folder."""
    problem = not_a_folder(path.parent) or ("does not exist" if not path.parent.exists() else None)
    if problem:
        raise RegbenchError(f"{where}: the folder {path.parent} {problem}; create it, or name "
                            "another file.")
    if not os.access(path.parent, os.W_OK):
        raise RegbenchError(f"{where}: the folder {path.parent} is read-only; make it "
                            "writable, or name a file elsewhere.")


def planned_store(url: str) -> Store | None:
    """The store `run` would write to, opened to read, once it passes every check `run` makes
    of it (nothing is created); None where `run` would make a new one."""
    path = sqlite_file(check_url(url))
    if path is not None and not path.exists() and not not_a_file(path):
        _check_new_store_folder(path, f"Storage {_where(url)}")
        return None
    engine = open_database(url, create=True)  # on a file that exists or a server: creates nothing
    try:
        present = sa.inspect(engine).has_table(runs.name)
    finally:
        engine.dispose()
    return Store(url, create=False) if present else None


# The columns by which a table of that name is known for regbench's or Optuna's, where a
# store holds it: a table of another program under one of these names would break a run midway.
_KNOWN_COLUMNS = {"regbench_runs": {"key", "suite", "phase", "status", "params"},
                  "regbench_workers": {"id", "heartbeat"},
                  "regbench_claims": {"key", "worker", "done"},
                  "studies": {"study_id", "study_name"},
                  "trials": {"trial_id", "study_id", "state"}}


def _foreign_table(inspector, tables: set[str]) -> str | None:
    """The first table of `tables` named as one of regbench's or Optuna's but lacking its
    columns, with what it lacks."""
    for name, columns in _KNOWN_COLUMNS.items():
        if name in tables:
            lacking = columns - {c["name"] for c in inspector.get_columns(name)}
            if lacking:
                return f"{name!r} (without its columns {', '.join(sorted(lacking))})"
    return None


def _new_sqlite_store(path: Path, url: str) -> None:
    """Make an empty store at `path` in one step: built beside it, then linked into place, which
    fails if another worker got there first. A store is never seen half made, so an empty file is
    never a store in the making."""
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.new")
    engine = sa.create_engine(f"sqlite:///{staging}")
    try:
        metadata.create_all(engine)
        engine.dispose()
        os.link(staging, path)
    except FileExistsError:
        pass
    except (OSError, sa.exc.SQLAlchemyError) as err:
        raise explain(err, url) or RegbenchError(
            f"Storage {_where(url)}: cannot create {path} ({err}).") from None
    finally:
        engine.dispose()
        staging.unlink(missing_ok=True)


class Store:
    """The runs of a database. `create` (for `run`): the store is made if need be; without it (for
    the read-only commands) it must exist, and nothing is ever written. Database calls wait for a
    server that is out of reach for up to `patience` seconds."""

    def __init__(self, url: str, create: bool = True, patience: float = 0.0):
        self.url, self.patience = url, patience
        # A server out of reach at start-up is more likely a wrong URL than a restart: said at
        # once. One with no connection free is waited for.
        self.engine = patiently(lambda: open_database(url, create), url, patience,
                                transient=_crowded)
        if create:
            self._create_tables()
        self._columns = self._present_columns()

    @database_call
    def _present_columns(self) -> list[sa.Column]:
        """The runs table's columns this store has: a store of an older version, opened to read,
        lacks those added since, and gets none added."""
        present = {c["name"] for c in sa.inspect(self.engine).get_columns(runs.name)}
        return [column for column in runs.columns if column.name in present]

    @database_call
    def _create_tables(self) -> None:
        tolerate_creation_race(lambda: metadata.create_all(self.engine))
        tolerate_creation_race(lambda: _add_new_columns(self.engine))

    @database_call
    def get(self, key: str) -> dict | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(*self._columns).where(runs.c.key == key)).mappings().first()
        return dict(row) if row else None

    @database_call
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

    @database_call
    def set_test_references(self, references: dict[str, dict]) -> None:
        """Store each task's test reference in its runs that have none (a store of an older
        regbench)."""
        column = runs.c.test_reference
        with self.engine.begin() as connection:
            for task, reference in references.items():
                connection.execute(sa.update(runs).where(
                    runs.c.task == task, sa.or_(column.is_(None), column == sa.JSON.NULL))
                    .values(test_reference=reference))

    @database_call
    def study_names(self) -> set[str]:
        """The Optuna studies the database holds; none before the first, read without creating
        Optuna's tables."""
        with self.engine.connect() as connection:
            if not sa.inspect(connection).has_table("studies"):
                return set()
            return set(connection.execute(sa.text("select study_name from studies")).scalars())

    @property
    def where(self) -> str:
        """The store's URL, fit to print."""
        return _where(self.url)

    @database_call
    def connection_limit(self) -> tuple[int, str] | None:
        """See `connection_limit`."""
        return connection_limit(self.engine)

    @database_call
    def share(self, suite: str, key: str) -> None:
        """Count the stored run `key`, of another suite, as `suite`'s too; once, however many
        workers of the suite (or tries of one) do it."""
        try:
            with self.engine.begin() as connection:
                connection.execute(sa.insert(shared).values(suite=suite, key=key))
        except sa.exc.IntegrityError:  # shared already
            pass

    @database_call
    def frame(self, suite: str | None = None) -> pd.DataFrame:
        """The stored runs: all, or a suite's, those it stored and those of other suites it
        shares (`share`)."""
        query = sa.select(*self._columns)
        if suite is not None:
            condition = runs.c.suite == suite
            with self.engine.connect() as connection:
                if sa.inspect(connection).has_table(shared.name):  # an older store has none
                    condition = condition | runs.c.key.in_(
                        sa.select(shared.c.key).where(shared.c.suite == suite))
            query = query.where(condition)
        with self.engine.connect() as connection:
            return pd.read_sql(query, connection)
