"""Workers sharing a suite through its database, as Optuna's distributed optimisation shares a
study: any number of `regbench run` processes, on any machines, started at any time, with the same
storage URL. They need nothing else in common.

A worker claims a piece of work by inserting a row keyed by the work's name, so the database's
primary key decides between two workers that claim at once. Each worker writes a heartbeat while
it lives; a claim whose worker has not been heard from for `timeout` seconds, or whose process is
gone from this machine, is taken over by a compare-and-set update, which exactly one worker wins.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import platform
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from regbench.store import database_call, tolerate_creation_race

log = logging.getLogger(__name__)

metadata = sa.MetaData()
workers = sa.Table(
    "regbench_workers", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("machine", sa.String(16), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    # Seconds since the epoch, by the worker's clock; double precision, as MySQL's FLOAT would
    # round today's epoch to two minutes.
    sa.Column("heartbeat", sa.Double, nullable=False),
)
claims = sa.Table(
    "regbench_claims", metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("worker", sa.String(64), nullable=False),
    sa.Column("done", sa.Boolean, nullable=False),
)


def _machine() -> str:
    """This host in this boot and process namespace: where a worker's pid means something."""
    parts = [platform.node()]
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):
        try:
            parts.append(read())
        except OSError:
            pass
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


MACHINE = _machine()
_POLL = 0.5  # seconds between two looks at the claims of a worker that waits for others


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class Claim(enum.Enum):
    OURS = "ours"  # this worker holds it now
    HELD = "held"  # a live worker holds it
    DONE = "done"  # finished, by whichever worker


class Worker:
    """One process's membership of a suite: its heartbeat, and the work it claims."""

    def __init__(self, engine: sa.Engine, timeout: float = 300.0):
        # A database out of reach is waited for as long as other workers wait for this one.
        self.engine, self.timeout, self.url, self.patience = engine, timeout, engine.url, timeout
        self.id = f"{platform.node()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # Since when this worker's own heartbeat lands again after it failed: others' silence is
        # counted from then, as they could not write theirs either (0: never failed). None while
        # it fails, when no other worker is judged dead.
        self._heard_since: float | None = 0.0
        self._join()
        self._stop = threading.Event()
        self._heart = threading.Thread(target=self._beat, name="regbench-heartbeat", daemon=True)
        self._heart.start()

    @database_call
    def _join(self) -> None:
        tolerate_creation_race(lambda: metadata.create_all(self.engine))
        with self.engine.begin() as connection:
            # Registered already when a first try's reply was lost.
            if connection.execute(sa.update(workers).where(workers.c.id == self.id)
                                  .values(heartbeat=time.time())).rowcount == 0:
                connection.execute(sa.insert(workers).values(
                    id=self.id, machine=MACHINE, host=platform.node(), pid=os.getpid(),
                    heartbeat=time.time()))

    @property
    def interval(self) -> float:
        """How often the heartbeat is written, and how often a waiting worker looks again."""
        return self.timeout / 10

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.engine.begin() as connection:
                    connection.execute(sa.update(workers).where(workers.c.id == self.id)
                                       .values(heartbeat=time.time()))
            except sa.exc.SQLAlchemyError as err:  # a lost beat is harmless; the next may land
                self._heard_since = None
                log.warning("heartbeat of worker %s not written: %s", self.id, err)
            else:
                if self._heard_since is None:
                    self._heard_since = time.time()

    def close(self) -> None:
        """Stop the heartbeat and give back the claims still open (an interrupted run), so that
        other workers need not wait out the timeout."""
        self._stop.set()
        self._heart.join()
        try:
            with self.engine.begin() as connection:
                connection.execute(sa.delete(claims).where(claims.c.worker == self.id,
                                                           sa.not_(claims.c.done)))
                connection.execute(sa.delete(workers).where(workers.c.id == self.id))
        except sa.exc.SQLAlchemyError as err:  # must not hide why the worker stops
            log.warning("worker %s could not give its claims back (%s); other workers take them "
                        "over in %.0f s", self.id, err, self.timeout)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @database_call
    def claim(self, key: str) -> Claim:
        """Claim `key`: free work, or work whose worker is dead, becomes this worker's."""
        while True:
            try:
                with self.engine.begin() as connection:
                    connection.execute(sa.insert(claims).values(key=key, worker=self.id,
                                                                done=False))
                return Claim.OURS
            except sa.exc.IntegrityError:
                pass
            with self.engine.begin() as connection:
                row = connection.execute(sa.select(claims.c.worker, claims.c.done)
                                         .where(claims.c.key == key)).first()
                if row is None:  # given back since the insert failed: try again
                    continue
                if row.done:
                    return Claim.DONE
                if row.worker == self.id:
                    return Claim.OURS
                if self._alive(connection, row.worker):
                    return Claim.HELD
                taken = connection.execute(
                    sa.update(claims).where(claims.c.key == key, claims.c.worker == row.worker,
                                            sa.not_(claims.c.done))
                    .values(worker=self.id)).rowcount == 1
            if taken:
                log.warning("took over %s from worker %s, which is gone", key, row.worker)
            return Claim.OURS if taken else Claim.HELD

    @database_call
    def finish(self, key: str) -> None:
        """Mark claimed work done for good: no worker will claim it again."""
        with self.engine.begin() as connection:
            connection.execute(sa.update(claims).where(claims.c.key == key,
                                                       claims.c.worker == self.id)
                               .values(done=True))

    @database_call
    def release(self, key: str) -> bool:
        """Give claimed work back, for any worker to claim again; False when it was no longer
        this worker's (taken over while this worker was silent). Given back already, as when a
        first try's reply was lost, is not taken over."""
        with self.engine.begin() as connection:
            connection.execute(sa.delete(claims).where(claims.c.key == key,
                                                       claims.c.worker == self.id))
            return connection.execute(sa.select(claims.c.key).where(
                claims.c.key == key)).first() is None

    @database_call
    def holds(self, key: str) -> bool:
        """Whether `key` is still this worker's open claim."""
        with self.engine.connect() as connection:
            return connection.execute(sa.select(claims.c.key).where(
                claims.c.key == key, claims.c.worker == self.id,
                sa.not_(claims.c.done))).first() is not None

    def _alive(self, connection: sa.Connection, worker: str) -> bool:
        row = connection.execute(sa.select(workers).where(workers.c.id == worker)).first()
        if row is None:  # it left without giving the claim back
            return False
        if row.machine == MACHINE and not _process_exists(row.pid):
            return False  # killed on this machine: no need to wait for its heartbeat to age
        if self._heard_since is None:
            return True
        return time.time() - max(row.heartbeat, self._heard_since) < self.timeout

    @database_call
    def live_workers(self, here: bool = False) -> int:
        """The workers heard from within the timeout: all, or those on this machine."""
        query = sa.select(sa.func.count()).select_from(workers).where(
            workers.c.heartbeat > time.time() - self.timeout)
        if here:
            query = query.where(workers.c.machine == MACHINE)
        with self.engine.connect() as connection:
            return connection.execute(query).scalar()

    def wait(self, seconds: float) -> None:
        """Sleep for up to `seconds`, waking as soon as some claim is given back or done: what
        this worker waits for may be free, or the suite complete."""
        query = sa.select(sa.func.count(), sa.func.sum(sa.case((claims.c.done, 1), else_=0)))
        end, before = time.monotonic() + seconds, None
        while True:
            try:
                with self.engine.connect() as connection:
                    now = connection.execute(query).one()
            except sa.exc.SQLAlchemyError:  # the next look at the work says what is wrong
                return
            if before is not None and now != before or time.monotonic() >= end:
                return
            before = now
            time.sleep(min(_POLL, max(0.0, end - time.monotonic())))
