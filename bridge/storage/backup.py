"""Online backup and offline restore of a daemon's SQLite store (ADR 0022).

``backup`` copies a store while its daemon runs, through SQLite's online backup API: the
copy is one consistent snapshot (every committed transaction before it, none after, never
a torn page), written beside the target and renamed into place only when complete and
checked, so a crash never leaves a half backup under the backup's name. The copy carries a
``backup_info`` row (kind, schema version, when taken).

``restore`` replaces a store with a backup only while no daemon has it open (the store's
lock taken exclusive, :class:`~bridge.storage.sqlite.StoreInUse` otherwise): the backup is
integrity-checked, must be of the same kind and not newer than this release, is copied
beside the store, upgraded to the latest schema there (``prepare``: the kind's migrations
and, for a member's store, its quarantine), and renamed over the store; the store it
replaces is kept beside it (``<store>.pre-restore-<unix time>``), never deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bridge.logfields import get_logger
from bridge.storage.migrations import (
    StoreError,
    StoreTooNew,
    WrongOwner,
    WrongStore,
    applied_version,
    store_kind,
)
from bridge.storage.schema import Schema, check_schema, harden, inspect
from bridge.storage.sqlite import hold_lock


class NotABackup(StoreError):
    """The file is not a complete, intact backup made by ``bridge store backup``."""


class AcknowledgementRequired(StoreError):
    """Restoring this kind of store needs the operator's explicit acknowledgement."""


@dataclass(frozen=True, slots=True)
class StoreKind:
    """What backup and restore need to know of one kind of store.

    ``marker``: a table every version of the store has (recognises a file written before
    stores were stamped with their kind). ``prepare(path, info)`` upgrades the restored
    copy at ``path`` in place and returns its schema version. ``schema(version)``: the
    canonical schema at ``version`` (:mod:`bridge.storage.schema`). ``acknowledge``: a
    restore needs the operator's written acknowledgement (it is recorded). ``owner``: whom
    a store belongs to (a member's signing address), None when unbound."""

    name: str
    marker: str
    latest: int
    prepare: Callable[[Path, BackupInfo, str], int]
    schema: Callable[[int], Schema]
    acknowledge: bool = False
    owner: Callable[[sqlite3.Connection], bytes | None] | None = None


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """A backup's provenance, as stored inside it, and the digest of its content."""

    kind: str
    schema_version: int
    taken_at: float
    source: str
    content_sha256: str = ""


def content_digest(db: sqlite3.Connection) -> str:
    """SHA-256 over every table's schema and rows (in rowid order), ``backup_info`` and
    SQLite's internal tables excepted: a backup damaged anywhere it matters fails it."""
    h = hashlib.sha256()
    tables = db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name != 'backup_info'"
        " AND name NOT LIKE 'sqlite_%' ORDER BY name"
    ).fetchall()
    for name, sql in tables:
        h.update(repr((name, sql)).encode())
        for row in db.execute(f'SELECT * FROM "{name}" ORDER BY rowid'):  # noqa: S608 (names from sqlite_master)
            h.update(repr(tuple(row)).encode())
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What a restore did: the backup restored, the version reached, the store it replaced
    (kept at ``previous``, None when there was none)."""

    info: BackupInfo
    schema_version: int
    previous: Path | None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def schema_version_of(db: sqlite3.Connection) -> int:
    """The store's schema version, read without creating anything (0: none)."""
    if not has_table(db, "schema_version"):
        return 0
    return applied_version(db)


def has_table(db: sqlite3.Connection, name: str) -> bool:
    """True if the SQLite database has table ``name``."""
    row = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


def check_kind(db: sqlite3.Connection, kind: StoreKind) -> None:
    """Return if ``db`` is a store of ``kind`` (stamped so, or unstamped with its marker
    table: a file of a release before stamping); else WrongStore."""
    found = store_kind(db)
    if found is not None and found != kind.name:
        raise WrongStore(kind.name, found)
    if found is None and not has_table(db, kind.marker):
        raise WrongStore(kind.name, "unknown")


def backup(kind: StoreKind, source: Path, target: Path) -> BackupInfo:
    """Write a consistent copy of store ``source`` to ``target`` (which must not exist),
    while its daemon may keep writing. Raises WrongStore, StoreTooNew or StoreError."""
    if not source.is_file():
        raise StoreError(f"no store at {source}")
    if target.exists():
        raise StoreError(f"{target} exists: refusing to overwrite a backup")
    # SECURITY (review s17 finding 10): a private, unique partial file (0600 from its
    # creation, never through a symlink), published with link(), which fails if the
    # target appeared meanwhile: no other process's file is ever replaced or removed.
    partial = target.with_name(f"{target.name}.partial-{secrets.token_hex(8)}")
    _private_file(partial)
    src = sqlite3.connect(source, isolation_level=None)
    try:
        src.execute("PRAGMA busy_timeout=10000")
        check_kind(src, kind)
        dst = sqlite3.connect(partial, isolation_level=None)
        try:
            # One step (pages=-1): the whole database under one read transaction, so the
            # copy is a single snapshot even while the daemon commits.
            src.backup(dst, pages=-1)
            version = schema_version_of(dst)
            if version > kind.latest:
                raise StoreTooNew(kind.name, version, kind.latest)
            if version > 0:  # never back up a store whose schema was tampered with
                check_schema(dst, kind.name, version, kind.schema(version))
            dst.execute("PRAGMA journal_mode=DELETE")
            info = BackupInfo(kind.name, version, time.time(), str(source), content_digest(dst))
            dst.execute(
                "CREATE TABLE backup_info (id INTEGER PRIMARY KEY CHECK (id = 1), kind TEXT NOT"
                " NULL, schema_version INTEGER NOT NULL, taken_at REAL NOT NULL,"
                " source TEXT NOT NULL, content_sha256 TEXT NOT NULL)"
            )
            dst.execute(
                "INSERT INTO backup_info VALUES (1, ?, ?, ?, ?, ?)",
                (info.kind, info.schema_version, info.taken_at, info.source, info.content_sha256),
            )
            _integrity(dst, partial)
        finally:
            dst.close()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    try:
        with open(partial, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.link(partial, target)
        except FileExistsError:
            raise StoreError(f"{target} exists: refusing to overwrite a backup") from None
    finally:
        partial.unlink(missing_ok=True)
    _fsync_dir(target.parent)
    get_logger(store=kind.name).info(
        "store backed up", source=str(source), backup=str(target), version=info.schema_version
    )
    return info


def _integrity(db: sqlite3.Connection, path: Path) -> None:
    rows = db.execute("PRAGMA integrity_check").fetchall()
    if [tuple(r) for r in rows] != [("ok",)]:
        raise NotABackup(f"{path} fails SQLite's integrity check")


def read_backup(kind: StoreKind, path: Path) -> BackupInfo:
    """The provenance of backup ``path`` after checking it: intact, made by ``backup``, of
    ``kind``, not newer than this release, and its schema exactly the kind's at its version
    (NotABackup, WrongStore, StoreTooNew, SchemaMismatch). ``restore`` runs these checks
    on its own private copy, never on the file the operator names."""
    if not path.is_file():
        raise NotABackup(f"no backup at {path}")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise NotABackup(f"{path} cannot be opened: {exc}") from None
    try:
        return _check_backup(kind, db, path)
    finally:
        db.close()


def _check_backup(kind: StoreKind, db: sqlite3.Connection, path: Path) -> BackupInfo:
    harden(db)
    try:
        _integrity(db, path)
        if not has_table(db, "backup_info"):
            raise NotABackup(f"{path} was not written by `bridge store backup`")
        row = db.execute(
            "SELECT kind, schema_version, taken_at, source, content_sha256"
            " FROM backup_info WHERE id = 1"
        ).fetchone()
        if row is None:
            raise NotABackup(f"{path} has no backup record")
        info = BackupInfo(str(row[0]), int(row[1]), float(row[2]), str(row[3]), str(row[4]))
        if content_digest(db) != info.content_sha256:
            raise NotABackup(f"{path} is damaged: its content does not match its digest")
    except sqlite3.DatabaseError as exc:
        raise NotABackup(f"{path} is not an intact SQLite backup: {exc}") from None
    if info.kind != kind.name:
        raise WrongStore(kind.name, info.kind)
    check_kind(db, kind)
    if info.schema_version > kind.latest:
        raise StoreTooNew(kind.name, info.schema_version, kind.latest)
    if schema_version_of(db) != info.schema_version:
        raise NotABackup(f"{path}: its record and its schema_version table disagree")
    if info.schema_version > 0:
        # SECURITY (review s17 finding 1): the digest is written by whoever wrote the file;
        # the schema must be exactly what the kind's migrations build (no trigger, view,
        # changed default or conflict clause), whatever the digest says.
        check_schema(db, kind.name, info.schema_version, kind.schema(info.schema_version))
    return info


def _check_target(kind: StoreKind, target: Path) -> bytes | None:
    """The owner of the store ``restore`` would replace, after checking it is a store of
    ``kind`` (WrongStore otherwise; review s17 finding 9)."""
    db = inspect(target)
    try:
        check_kind(db, kind)
        return kind.owner(db) if kind.owner is not None else None
    except sqlite3.DatabaseError:
        raise WrongStore(kind.name, "unknown") from None
    finally:
        db.close()


def _private_file(path: Path) -> None:
    """Create ``path`` new, mode 0600, never through a symlink (FileExistsError if any)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.close(fd)


def restore(
    kind: StoreKind, source: Path, target: Path, acknowledgement: str = ""
) -> RestoreResult:
    """Replace store ``target`` by backup ``source`` (see the module docstring).

    Refuses, changing nothing: a backup that is not intact, not of ``kind``, newer than
    this release or whose schema is not exactly the kind's (SchemaMismatch); a backup of
    another owner than the store it replaces (WrongOwner); a target that is another kind
    of store (WrongStore); a missing acknowledgement where ``kind`` needs one; a store a
    daemon has open (StoreInUse).

    SECURITY (review s17 findings 1, 2): the backup is copied ONCE into a private staged
    file and every check runs on that copy, so swapping the backup after it was checked
    changes nothing; the staged copy is checked again once upgraded (and, for a member,
    read back as quarantined) before it is published. The store it replaces is kept by a
    hard link before ONE atomic rename publishes the new one: at every instant the store
    path holds either the old store or the new one."""
    if kind.acknowledge and not acknowledgement.strip():
        raise AcknowledgementRequired(
            f"restoring a {kind.name} store needs --acknowledge: signatures made after the"
            " backup was taken are forgotten, so the store is quarantined (ADR 0022)"
        )
    if not source.is_file():
        raise NotABackup(f"no backup at {source}")
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = hold_lock(target, exclusive=True)
    assert lock is not None  # an exclusive request is never already satisfied
    try:
        owner = _check_target(kind, target) if target.exists() else None
        staged = target.with_name(f"{target.name}.restoring-{secrets.token_hex(8)}")
        _private_file(staged)
        try:
            src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
            try:
                dst = sqlite3.connect(staged, isolation_level=None)
                try:
                    src.backup(dst, pages=-1)
                finally:
                    dst.close()
            except sqlite3.DatabaseError as exc:
                raise NotABackup(f"{source} cannot be copied: {exc}") from None
            finally:
                src.close()
            db = sqlite3.connect(staged, isolation_level=None)
            try:
                info = _check_backup(kind, db, source)
                if owner is not None and kind.owner is not None:
                    theirs = kind.owner(db)
                    if theirs is not None and theirs != owner:
                        raise WrongOwner(owner, theirs)
                db.execute("DROP TABLE backup_info")
            finally:
                db.close()
            version = kind.prepare(staged, info, acknowledgement)
            db = sqlite3.connect(staged, isolation_level=None)
            try:
                harden(db)
                check_schema(db, kind.name, version, kind.schema(version))
            finally:
                db.close()
            _checkpoint(staged)
            if target.exists():
                st = target.stat()
                os.chmod(staged, stat.S_IMODE(st.st_mode))
                with contextlib.suppress(PermissionError):
                    os.chown(staged, st.st_uid, st.st_gid)
        except BaseException:
            for leftover in (staged, *_sidecars(staged)):
                leftover.unlink(missing_ok=True)
            raise
        previous: Path | None = None
        try:
            if target.exists():
                _checkpoint(target)
                previous = target.with_name(
                    f"{target.name}.pre-restore-"
                    f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"
                )
                os.link(target, previous)  # kept; the store path never goes missing
            for stale in _sidecars(target):
                stale.unlink(missing_ok=True)  # the replaced file's WAL never meets the new one
            os.replace(staged, target)  # SECURITY: the one atomic step that publishes
        except BaseException:
            for leftover in (staged, *_sidecars(staged)):
                leftover.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
    finally:
        lock.close()
    get_logger(store=kind.name).warning(
        "store restored",
        store_path=str(target),
        backup=str(source),
        backup_taken_at=info.taken_at,
        version=version,
        previous=str(previous) if previous else "",
        acknowledgement=acknowledgement,
    )
    return RestoreResult(info, version, previous)


def _sidecars(path: Path) -> tuple[Path, Path]:
    return Path(f"{path}-wal"), Path(f"{path}-shm")


def _checkpoint(path: Path) -> None:
    """Fold ``path``'s WAL into the file and fsync it, so the file alone is the store."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        with contextlib.suppress(sqlite3.OperationalError):
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA journal_mode=DELETE")
    finally:
        db.close()
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
