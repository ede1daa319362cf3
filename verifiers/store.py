"""The member's store: one SQLite file holding its vote, rotation and supply logs.

Versioned with the shared runner (:mod:`bridge.storage.migrations`, kind ``verifier``).
Version 1 is the schema as released before versioning (287b48a), so a file written by that
release is adopted as-is; version 2 adds the restore quarantine (ADR 0022); version 3 binds
the store to its member and makes the release before versioning fail closed on it.

SECURITY (quarantine): a vote log restored from a backup may have lost decisions this member
signed after the backup was taken. Until an operator lifts it (an explicit, recorded act), a
quarantined member signs a COMMIT/ABORT for a transfer absent from its log only when a
ledger already shows that outcome applied, and signs no rotation for an epoch absent from
its rotation log; see :func:`quarantined`.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.standby import created_here
from bridge.storage.migrations import Migration, StoreError, WrongOwner
from bridge.storage.sqlite import immediate, lock_path, open_store

KIND = "verifier"


def _v1(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS votes ("
        " transfer_id BLOB PRIMARY KEY, decision INTEGER NOT NULL,"
        " terms_hash BLOB NOT NULL, at REAL NOT NULL)"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS rotation_votes ("
        " next_epoch INTEGER PRIMARY KEY, fingerprint BLOB NOT NULL, at REAL NOT NULL)"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS supply_signed ("
        " security TEXT PRIMARY KEY, sequence INTEGER NOT NULL, digest BLOB NOT NULL,"
        " heights TEXT NOT NULL, registration_version INTEGER NOT NULL, at REAL NOT NULL)"
    )
    columns = {row[1] for row in db.execute("PRAGMA table_info(supply_signed)")}
    if "previous_hash" not in columns:
        # Logs written before the sequencing rule: NULL means "not remembered", and
        # the tip is then re-signed only over a certified anchor.
        db.execute("ALTER TABLE supply_signed ADD COLUMN previous_hash BLOB")


def _v2(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS restores ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT, restored_at REAL NOT NULL,"
        " backup_taken_at REAL NOT NULL, acknowledgement TEXT NOT NULL,"
        " lifted_at REAL, lift_acknowledgement TEXT NOT NULL DEFAULT '')"
    )


def _v3(db: sqlite3.Connection) -> None:
    # SECURITY (review s17 finding 3): release 287b48a knows no quarantine and inserts
    # positionally (``INSERT INTO votes VALUES (?, ?, ?, ?)``); one more column makes every
    # new vote or rotation signature of that release fail, so going back to it after a
    # restore cannot sign what the quarantine refuses. This code names its columns.
    db.execute("ALTER TABLE votes ADD COLUMN written_by INTEGER NOT NULL DEFAULT 3")
    db.execute("ALTER TABLE rotation_votes ADD COLUMN written_by INTEGER NOT NULL DEFAULT 3")
    db.execute(
        "CREATE TABLE IF NOT EXISTS member_identity ("
        " id INTEGER PRIMARY KEY CHECK (id = 1), address BLOB NOT NULL)"
    )


MIGRATIONS: tuple[Migration[sqlite3.Connection], ...] = (
    Migration(1, "baseline: votes, rotation votes, supply chain (release 287b48a)", _v1),
    Migration(2, "restore quarantine (ADR 0022)", _v2),
    Migration(3, "member binding; the release before versioning fails closed", _v3),
)
"""Every migration of the member's store, in version order (append-only)."""

MARKERS = ("votes", "rotation_votes", "supply_signed")
"""Tables every release of the member's store wrote (an unstamped file needs one)."""


class QuarantineNotEntered(StoreError):
    """A restored member store does not read back as quarantined: the restore is refused."""


def open_member_store(
    path: Path, member: bytes | None = None, *, create: bool | None = None
) -> sqlite3.Connection:
    """The member's store at ``path``, migrated to the latest version, its lock held.

    SECURITY: refuses (nothing created or changed) a backup file copied into place
    (NotRestored), another kind or a schema not exactly the member store's
    (:func:`bridge.storage.sqlite.open_store`), and a missing file unless ``create``; by
    default (``create=None``) a missing file is created only on the first start, i.e. when
    no lock file shows a store was opened here before (StoreMissing: a store that vanished,
    e.g. a crash mid-restore, is never silently replaced by an empty log). With ``member``
    (a signing address) the store is bound to it on first use and WrongOwner afterwards
    for any other."""
    if create is None:
        # The daemon's StateLock creates the lock file before the store opens: that is a
        # first start too (created_here), not a store that vanished.
        lock = lock_path(path)
        create = not lock.exists() or created_here(lock)
    db = open_store(path, KIND, MIGRATIONS, markers=MARKERS, create=create)
    try:
        if member is not None:
            bind_member(db, member)
    except BaseException:
        db.close()
        raise
    return db


def bound_member(db: sqlite3.Connection) -> bytes | None:
    """The signing address the store is bound to, or None (not yet bound, or a store
    before version 3)."""
    if not db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'member_identity'"
    ).fetchone():
        return None
    row = db.execute("SELECT address FROM member_identity WHERE id = 1").fetchone()
    return None if row is None else bytes(row[0])


def bind_member(db: sqlite3.Connection, member: bytes) -> None:
    """Bind the store to ``member`` if unbound; WrongOwner if bound to another."""
    with immediate(db):
        found = bound_member(db)
        if found is None:
            db.execute("INSERT INTO member_identity (id, address) VALUES (1, ?)", (member,))
        elif found != member:
            raise WrongOwner(member, found)


@dataclass(frozen=True, slots=True)
class Quarantine:
    """An unlifted restore: when it happened and when the backup it restored was taken."""

    restored_at: float
    backup_taken_at: float
    acknowledgement: str


def quarantined(db: sqlite3.Connection) -> Quarantine | None:
    """The oldest restore not yet lifted, or None (call inside the write transaction, so a
    lift and a signature never interleave)."""
    row = db.execute(
        "SELECT restored_at, backup_taken_at, acknowledgement FROM restores"
        " WHERE lifted_at IS NULL ORDER BY id LIMIT 1"
    ).fetchone()
    return None if row is None else Quarantine(float(row[0]), float(row[1]), str(row[2]))


def enter_quarantine(db: sqlite3.Connection, backup_taken_at: float, acknowledgement: str) -> None:
    """Record a restore (the caller's transaction): the store is quarantined from now."""
    db.execute(
        "INSERT INTO restores (restored_at, backup_taken_at, acknowledgement) VALUES (?, ?, ?)",
        (time.time(), backup_taken_at, acknowledgement),
    )


class AcknowledgementMissing(StoreError):
    """Lifting a quarantine needs a non-empty written acknowledgement."""


def lift_quarantine(db: sqlite3.Connection, acknowledgement: str) -> int:
    """End every open quarantine, recording who/why; the number lifted (0: none open).
    AcknowledgementMissing (nothing changed) for an empty or blank acknowledgement."""
    if not acknowledgement.strip():
        raise AcknowledgementMissing("lifting a quarantine needs a non-empty --acknowledge")
    with immediate(db):
        cur = db.execute(
            "UPDATE restores SET lifted_at = ?, lift_acknowledgement = ? WHERE lifted_at IS NULL",
            (time.time(), acknowledgement),
        )
        return int(cur.rowcount)
