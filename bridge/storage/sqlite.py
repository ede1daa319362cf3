"""SQLite files of the daemons: durable connections, one write transaction, migration.

SECURITY: a running daemon holds a SHARED ``flock`` on ``<file>.lock``; ``bridge store
restore`` needs it EXCLUSIVE, so a store is never replaced under a daemon that has it open
(the daemon would keep signing from its old pages, or see a log change under it).
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from bridge.storage.migrations import Migration, StoreError, migrate

T = TypeVar("T")


class StoreInUse(StoreError):
    """Another process holds the store (a daemon runs on it, or a restore replaces it)."""


class LockedConnection(sqlite3.Connection):
    """A connection that also holds the store's lock file until :meth:`close`."""

    lock_file: IO[bytes] | None = None

    def close(self) -> None:
        """Close the database and release the lock."""
        try:
            super().close()
        finally:
            if self.lock_file is not None:
                self.lock_file.close()
                self.lock_file = None


def lock_path(path: Path) -> Path:
    """The lock file beside the store ``path`` (the coordinator's is the same name)."""
    return Path(f"{path}.lock")


def hold_lock(path: Path, *, exclusive: bool) -> IO[bytes]:
    """The open lock file of store ``path``, locked shared or exclusive without waiting;
    StoreInUse when another process holds it incompatibly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(lock_path(path), "a+b")  # noqa: SIM115 (held by the caller)
    try:
        fcntl.flock(fh.fileno(), (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise StoreInUse(
            f"{path} is in use ("
            + ("a daemon has it open" if exclusive else "it is being restored")
            + ")"
        ) from None
    return fh


def open_durable(path: Path, *, lock: bool = True) -> sqlite3.Connection:
    """A SQLite connection for a daemon's store: WAL, ``synchronous=FULL`` (every commit
    is fsync'd), explicit transactions only (see :func:`immediate`); with ``lock``, the
    store's lock file is held shared until the connection closes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = hold_lock(path, exclusive=False) if lock else None
    try:
        db = sqlite3.connect(path, isolation_level=None, factory=LockedConnection)
    except BaseException:
        if fh is not None:
            fh.close()
        raise
    db.lock_file = fh
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=5000")
    return db


@contextlib.contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction taken at its start (``BEGIN IMMEDIATE``): committed when the
    block ends, rolled back (nothing recorded) when it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def transaction(db: sqlite3.Connection) -> Callable[[Callable[[sqlite3.Connection], T]], T]:
    """``fn(db)`` in one :func:`immediate` transaction (the runner's transaction)."""

    def run(fn: Callable[[sqlite3.Connection], T]) -> T:
        with immediate(db):
            return fn(db)

    return run


def migrate_sqlite(db: sqlite3.Connection, kind: str, migrations: Sequence[Migration[Any]]) -> int:
    """:func:`bridge.storage.migrations.migrate` on ``db``, one ``BEGIN IMMEDIATE`` per step."""
    return migrate(kind, migrations, transaction(db))


def open_store(path: Path, kind: str, migrations: Sequence[Migration[Any]]) -> sqlite3.Connection:
    """:func:`open_durable` at the latest version of ``migrations``; closed if that fails."""
    db = open_durable(path)
    try:
        migrate_sqlite(db, kind, migrations)
    except BaseException:
        db.close()
        raise
    return db
