"""Fixtures shared by the tests and the benchmarks."""

import os
import shutil
import socket
import subprocess
import tempfile
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
