"""SQLite files of the daemons: durable connections, one write transaction, migration.

SECURITY: a running daemon holds a SHARED ``flock`` on ``<file>.lock``; ``bridge store
restore`` needs it EXCLUSIVE, so a store is never replaced under a daemon that has it open
(the daemon would keep signing from its old pages, or see a log change under it). The lock
file is named from the store's RESOLVED path, so a symlink to the store (or a path through
one) meets the same lock (review s17 finding 6).

:func:`open_store` opens a store only if it is one: not a backup file never restored
(:class:`NotRestored`), its schema exactly what its kind's migrations build
(:mod:`bridge.storage.schema`), before and after migrating; a missing file is created only
where the caller allows it (:class:`StoreMissing` otherwise).
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from bridge.storage.migrations import (
    Migration,
    StoreError,
    WrongStore,
    migrate,
    store_kind,
)
from bridge.storage.schema import (
    BACKUP_TABLE,
    Schema,
    canonical_sqlite,
    check_schema,
    inspect,
)

T = TypeVar("T")


class StoreInUse(StoreError):
    """Another process holds the store (a daemon runs on it, or a restore replaces it)."""


class StoreMissing(StoreError):
    """The store file does not exist and may not be created here (a store that was here
    is gone, or the path is mistyped): refused, nothing created."""


class NotRestored(StoreError):
    """The file is a backup (it has ``backup_info``): it becomes a store only through
    ``bridge store restore``, which checks it and, for a member, quarantines it."""


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
    """The lock file beside the store ``path`` (the coordinator's is the same name), named
    from the resolved path: every name of one file meets one lock."""
    return Path(f"{path.resolve()}.lock")


_HELD_EXCLUSIVE: set[Path] = set()
"""Lock files this process already holds exclusively for its whole life (a relayer's or
member's state lock, :class:`bridge.standby.StateLock`)."""


def held_for_life(lock: Path, held: bool = True) -> None:
    """Record that this process holds ``lock`` (a :func:`lock_path`) exclusively until it
    exits (or, ``held=False``, no longer): its own stores on that file then open without a
    second ``flock`` (two open descriptions of one file conflict even within one process)."""
    if held:
        _HELD_EXCLUSIVE.add(lock)
    else:
        _HELD_EXCLUSIVE.discard(lock)


def hold_lock(path: Path, *, exclusive: bool) -> IO[bytes] | None:
    """The open lock file of store ``path``, locked shared or exclusive without waiting;
    StoreInUse when another process holds it incompatibly. SECURITY: when this process
    already holds the file's lock exclusively for life (:func:`held_for_life`), a shared
    request is already satisfied: None, and the lock file is NOT opened again (HA review
    finding 8: where ``flock`` is emulated with POSIX record locks, as on Linux NFS, closing
    ANY descriptor of the file drops the process's lock); an exclusive one (a restore) is
    still refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if lock_path(path) in _HELD_EXCLUSIVE:
        if exclusive:
            raise StoreInUse(f"{path} is in use (this process serves it)")
        return None
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


def migrate_sqlite(
    db: sqlite3.Connection,
    kind: str,
    migrations: Sequence[Migration[Any]],
    markers: Sequence[str] = (),
) -> int:
    """:func:`bridge.storage.migrations.migrate` on ``db``, one ``BEGIN IMMEDIATE`` per step."""
    return migrate(kind, migrations, transaction(db), markers=markers)


def check_store(
    db: sqlite3.Connection, kind: str, migrations: Sequence[Migration[Any]], version: int
) -> None:
    """SchemaMismatch unless ``db``'s schema is what ``migrations`` build up to ``version``
    (version 0, a file of a release before versioning, is checked once migrated)."""
    if version > 0:
        check_schema(db, kind, version, canonical_sqlite(kind, migrations, version))


def inspect_store(
    path: Path,
    kind: str,
    latest: int,
    canonical: Callable[[int], Schema],
    markers: Sequence[str] = (),
) -> None:
    """Check the existing file ``path`` read-only, writing nothing: not a backup
    (NotRestored), not another kind (WrongStore, also for an unstamped file with none of
    ``markers``), and, at a version this code knows, exactly the kind's schema
    (SchemaMismatch). A newer version is left to the runner (StoreTooNew)."""
    db = inspect(path)
    try:
        tables = {
            str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if BACKUP_TABLE in tables:
            raise NotRestored(
                f"{path} is a backup: restore it with `bridge store restore`, never by copying"
            )
        found = store_kind(db)
        if found is not None and found != kind:
            raise WrongStore(kind, found)
        own = tables - {"schema_version", "store_identity"}
        own = {t for t in own if not t.startswith("sqlite_")}
        if found is None and markers and own and not own & set(markers):
            raise WrongStore(kind, "unknown")
        have = 0
        if "schema_version" in tables:
            row = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
            have = int(row[0])
        if 0 < have <= latest:  # version 0: checked once migrated; newer: StoreTooNew
            expected = canonical(have)
            if found is None:  # versioned before stores were stamped (the coordinator)
                expected = tuple(e for e in expected if e[2] != "store_identity")
            check_schema(db, kind, have, expected)
    finally:
        db.close()


def open_store(
    path: Path,
    kind: str,
    migrations: Sequence[Migration[Any]],
    *,
    markers: Sequence[str] = (),
    create: bool = True,
    lock: bool = True,
) -> sqlite3.Connection:
    """:func:`open_durable` at the latest version of ``migrations``; closed if that fails.

    SECURITY: refuses, changing nothing, a missing file unless ``create`` (StoreMissing), a
    backup file (NotRestored), another kind (WrongStore) and a schema that is not exactly
    the kind's own, checked before migrating and again after (SchemaMismatch). Without
    ``lock`` the caller holds the store's lock (a restore or a rewind)."""
    if path.is_file():
        inspect_store(
            path,
            kind,
            migrations[-1].version,
            lambda v: canonical_sqlite(kind, migrations, v),
            markers,
        )
    elif not create:
        raise StoreMissing(f"no {kind} store at {path}: refusing to create one here")
    db = open_durable(path, lock=lock)
    try:
        latest = migrate_sqlite(db, kind, migrations, markers)
        check_store(db, kind, migrations, latest)
    except BaseException:
        db.close()
        raise
    return db
