"""Fixtures shared by the tests and the benchmarks."""

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from regbench.data import GLUE_DIR_ENV

REPO = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    path = Path(os.environ.get(GLUE_DIR_ENV, REPO.parent / "shared" / "glue"))
    if not (path / "RTE" / "train.tsv").is_file():
        pytest.fail(f"GLUE test data not found at {path}; set {GLUE_DIR_ENV}.")
    return path


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL server on the loopback interface, which a test may stop and start."""

    bindir: Path
    data: Path
    port: int
    as_postgres: list[str]

    @property
    def url(self) -> str:
        """Its URL, without a database name."""
        return f"postgresql://regbench@127.0.0.1:{self.port}"

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.as_postgres, self.bindir / "pg_ctl", "-D", self.data / "db", *args],
                       check=True, capture_output=True)

    def start(self) -> None:
        self._ctl("-l", str(self.data / "log"), "-w", "-o",
                  f"-h 127.0.0.1 -p {self.port} -k {self.data}", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop")


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server from Debian's postgresql package (which .ci/run installs)."""
    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bindirs:
        message = "PostgreSQL is not installed (Debian: apt-get install postgresql)"
        if os.environ.get("REGBENCH_REQUIRE_POSTGRES"):
            pytest.fail(message)
        pytest.skip(message)
    bindir = bindirs[-1].parent
    # The server refuses to run as root, and must reach its folder: a world-traversable
    # folder of /tmp, handed to the postgres user.
    data = Path(tempfile.mkdtemp(prefix="regbench-pg-"))
    as_postgres = []
    if os.geteuid() == 0:
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(data, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run([*as_postgres, bindir / "initdb", "-D", data / "db", "-U", "regbench",
                    "--auth=trust"], check=True, capture_output=True)
    server = PostgresServer(bindir, data, port, as_postgres)
    server.start()
    yield server
    subprocess.run([*as_postgres, bindir / "pg_ctl", "-D", data / "db", "-m", "immediate",
                    "stop"], capture_output=True)
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(postgres) -> str:
    """The test server's URL, without a database name."""
    return postgres.url


@pytest.fixture(scope="session")
def new_postgres_database(postgres_server):
    """Makes a new, empty database on the test server, and gives its URL."""
    import sqlalchemy as sa

    def create(name: str) -> str:
        engine = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        return f"{postgres_server}/{name}"

    return create


@pytest.fixture
def postgres_url(new_postgres_database, request):
    name = "".join(c if c.isalnum() else "_" for c in request.node.name.lower())
    return new_postgres_database(f"t_{name[:50]}")


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    """Each kind of database a suite can share: a SQLite file, a PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'suite.db'}"
    return request.getfixturevalue("postgres_url")


class LostReplies:
    """A TCP proxy on loopback in front of a PostgreSQL server, for faults a worker meets on a
    network. For each of `patterns` (regular expressions over the SQL of a transaction), the first
    transaction that matches commits on the server, then its connection is cut before the reply
    reaches the client: a write that landed, its reply lost. `outage(seconds)` cuts every
    connection and refuses new ones for that long."""

    def __init__(self, server_port: int, patterns: tuple[str, ...] = ()):
        self.server_port = server_port
        self.pending = list(patterns)
        self.dropped: list[str] = []  # the patterns whose reply was lost, in order
        self._refuse_until = 0.0
        self._links: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, server_url: str) -> str:
        """`server_url`, through the proxy, in plain text (no SSL or GSS handshake to parse)."""
        return (server_url.replace(f":{self.server_port}/", f":{self.port}/")
                + "?sslmode=disable&gssencmode=disable")

    def outage(self, seconds: float) -> None:
        with self._lock:
            self._refuse_until = time.monotonic() + seconds
            for end in self._links:
                _close(end)
            self._links.clear()

    def close(self) -> None:
        _close(self._listener)
        self.outage(0)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if time.monotonic() < self._refuse_until:
                    _close(client)
                    continue
                server = socket.create_connection(("127.0.0.1", self.server_port))
                for end in (client, server):  # as the client wrote them: no Nagle delays
                    end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._links += [client, server]
            cut = threading.Event()  # set: the server's next reply is not passed on
            threading.Thread(target=self._from_client, args=(client, server, cut),
                             daemon=True).start()
            threading.Thread(target=self._from_server, args=(server, client, cut),
                             daemon=True).start()

    def _from_server(self, server: socket.socket, client: socket.socket,
                     cut: threading.Event) -> None:
        while (data := _recv(server)) and not cut.is_set():
            client.sendall(data)
        _close(client)
        _close(server)

    def _from_client(self, client: socket.socket, server: socket.socket,
                     cut: threading.Event) -> None:
        """Pass the client's messages on one by one, reading the SQL of each transaction: simple
        queries (BEGIN, COMMIT), and the extended protocol's Parse and Bind."""
        buffer, started, statements, prepared = b"", False, [], {}
        while data := _recv(client):
            buffer, whole = buffer + data, b""
            while True:
                head = 0 if not started else 1  # the startup message has no type byte
                if len(buffer) < head + 4:
                    break
                size = head + int.from_bytes(buffer[head:head + 4], "big")
                if len(buffer) < size:
                    break
                message, buffer = buffer[:size], buffer[size:]
                kind, body = message[:head], message[head + 4:]
                if kind == b"Q":
                    sql = body.rstrip(b"\0").decode().strip().upper()
                    if sql == "COMMIT" and self._lose("\n".join(statements)):
                        cut.set()
                    if sql in ("BEGIN", "COMMIT", "ROLLBACK"):
                        statements = []
                    else:
                        statements.append(sql)
                elif kind == b"P":
                    name, query = body.split(b"\0")[:2]
                    prepared[name] = query.decode()
                elif kind == b"B":
                    statements.append(prepared.get(body.split(b"\0")[1], ""))
                started = True
                whole += message
            try:
                server.sendall(whole)
            except OSError:
                return
        _close(server)
        _close(client)

    def _lose(self, transaction: str) -> bool:
        with self._lock:
            for pattern in self.pending:
                if re.search(pattern, transaction, re.IGNORECASE):
                    self.pending.remove(pattern)
                    self.dropped.append(pattern)
                    return True
        return False


def _recv(end: socket.socket) -> bytes:
    try:
        return end.recv(65536)
    except OSError:
        return b""


def _close(end: socket.socket) -> None:
    try:
        end.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    end.close()


@pytest.fixture
def lost_replies(postgres):
    """`lost_replies(*patterns)`: a `LostReplies` proxy in front of the test server."""
    proxies = []

    def start(*patterns: str) -> LostReplies:
        proxies.append(LostReplies(postgres.port, patterns))
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.close()
