"""A real PostgreSQL 15 cluster for tests: ``initdb`` + ``pg_ctl`` on a free port (no mocks).

:func:`postgres_cluster` (session-scoped) starts one cluster under the pytest basetemp and
stops it at the end; :func:`pg_database` creates one database per test module;
:func:`fresh_pg_url` gives each test its own schema in it (``search_path``), so store
contract tests start empty without paying for a database per test.

As root (CI), the cluster runs as the ``postgres`` system user (initdb refuses root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

PG_BINDIR = Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresCluster:
    """A running cluster reachable at ``127.0.0.1:port`` as ``user`` (trust auth, local)."""

    data: Path
    port: int
    user: str
    as_user: list[str]

    def url(self, database: str, schema: str | None = None) -> str:
        """A connection URL (no password: trust authentication on loopback)."""
        url = f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"
        if schema is not None:
            url += "?options=" + quote(f"-csearch_path={schema}")
        return url

    def psql(self, sql: str, database: str = "postgres") -> None:
        """Run ``sql`` (autocommit) in ``database``."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the cluster (fast shutdown)."""
        subprocess.run(
            [*self.as_user, str(PG_BINDIR / "pg_ctl"), "-D", str(self.data), "-m", "fast",
             "-w", "stop"],
            check=False, capture_output=True, timeout=60,
        )  # fmt: skip


def start_cluster(directory: Path) -> PostgresCluster:
    """initdb + pg_ctl start under ``directory`` on a free loopback port."""
    if not (PG_BINDIR / "initdb").exists():
        raise RuntimeError(f"{PG_BINDIR}/initdb missing: run `make setup` (installs postgresql)")
    as_user: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses root: run the cluster as the package's system user, in a
        # directory it owns, reachable through the (0700) pytest basetemp parents.
        pg = pwd.getpwnam("postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
        p = directory
        while p != p.parent:
            with contextlib.suppress(OSError):
                p.chmod(p.stat().st_mode | 0o011)
            p = p.parent
        os.chown(directory, pg.pw_uid, pg.pw_gid)
    data = directory / "data"
    socket_dir = directory / "sock"
    for d in (data, socket_dir):
        d.mkdir(mode=0o700)
        if as_user:
            os.chown(d, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
    subprocess.run(
        [*as_user, str(PG_BINDIR / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
         "-E", "UTF8", "--no-locale", "--no-instructions"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    port = _free_port()
    log = directory / "postgres.log"
    if as_user:
        log.touch()
        shutil.chown(log, "postgres", "postgres")
    options = (
        f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        " -c shared_buffers=32MB"
    )
    subprocess.run(
        [*as_user, str(PG_BINDIR / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
         "-w", "-t", "60", "start"],
        check=True, capture_output=True, timeout=90,
    )  # fmt: skip
    return PostgresCluster(data, port, "postgres", as_user)


@pytest.fixture(scope="session")
def postgres_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    """One PostgreSQL cluster for the whole test session."""
    cluster = start_cluster(tmp_path_factory.mktemp("postgres"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def pg_database(postgres_cluster: PostgresCluster, request: pytest.FixtureRequest) -> str:
    """A database for this test module; returns its name."""
    name = "t_" + request.module.__name__.rsplit(".", 1)[-1][:40] + "_" + secrets.token_hex(3)
    postgres_cluster.create_database(name)
    return name


@pytest.fixture
def fresh_pg_url(postgres_cluster: PostgresCluster, pg_database: str) -> str:
    """A URL whose ``search_path`` is a new, empty schema: one clean store per test."""
    schema = "s_" + secrets.token_hex(6)
    postgres_cluster.psql(f"CREATE SCHEMA {schema}", pg_database)
    return postgres_cluster.url(pg_database, schema)
