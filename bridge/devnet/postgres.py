"""A throwaway PostgreSQL 15 cluster (``initdb`` + ``pg_ctl`` on a free loopback port) for
tests, benchmarks and the devnet (ADR 0013). Trust authentication on 127.0.0.1 only.

As root (CI), the cluster runs as the ``postgres`` system user (initdb refuses root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

PG_BINDIR = Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    """A port no devnet component was handed (``free_port``): a cluster started while a
    system runs (the HA e2e module) must not take the port of a daemon that is restarting."""
    from bridge.devnet.processes import free_port

    return free_port()


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
            conn.execute(sql)

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the cluster (fast shutdown). As root, the data directory's parents are
        made traversable again first: ``pg_ctl`` runs as the cluster's user, and another
        pytest session may have closed the basetemp root meanwhile (the cluster would
        outlive its test)."""
        if self.as_user:
            make_traversable(self.data)
        subprocess.run(
            [*self.as_user, str(PG_BINDIR / "pg_ctl"), "-D", str(self.data), "-m", "fast",
             "-w", "stop"],
            check=False, capture_output=True, timeout=60,
        )  # fmt: skip


def make_traversable(directory: Path) -> None:
    """Give every parent of ``directory`` that lacks it traversal (``x``) for group and
    others, never read: every parent, not only those up to the first traversable one."""
    for p in directory.parents:
        with contextlib.suppress(OSError):
            mode = p.stat().st_mode
            if not mode & 0o001:
                p.chmod(mode | 0o011)


def start_cluster(directory: Path) -> PostgresCluster:
    """initdb + pg_ctl start under ``directory`` on a free loopback port."""
    if not (PG_BINDIR / "initdb").exists():
        raise RuntimeError(f"{PG_BINDIR}/initdb missing: run `make setup` (installs postgresql)")
    directory.mkdir(parents=True, exist_ok=True)
    as_user: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses root: run the cluster as the package's system user, in a
        # directory it owns, reachable through the (0700) pytest basetemp parents. Every
        # parent is checked, not only up to the first traversable one: another pytest
        # session resets its ``pytest-of-<user>`` root to 0700 while this session's numbered
        # directory below it keeps the traversal an earlier cluster gave it.
        pg = pwd.getpwnam("postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
        make_traversable(directory)
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
