"""The member's store: one SQLite file holding its vote, rotation and supply logs.

Versioned with the shared runner (:mod:`bridge.storage.migrations`, kind ``verifier``).
Version 1 is the schema as released before versioning (287b48a), so a file written by that
release is adopted as-is; version 2 adds the restore quarantine (ADR 0022).

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

from bridge.storage.migrations import Migration
from bridge.storage.sqlite import immediate, open_store

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


MIGRATIONS: tuple[Migration[sqlite3.Connection], ...] = (
    Migration(1, "baseline: votes, rotation votes, supply chain (release 287b48a)", _v1),
    Migration(2, "restore quarantine (ADR 0022)", _v2),
)
"""Every migration of the member's store, in version order (append-only)."""


def open_member_store(path: Path) -> sqlite3.Connection:
    """The member's store at ``path``, migrated to the latest version, its lock held."""
    return open_store(path, KIND, MIGRATIONS)


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


def lift_quarantine(db: sqlite3.Connection, acknowledgement: str) -> int:
    """End every open quarantine, recording who/why; the number lifted (0: none open)."""
    with immediate(db):
        cur = db.execute(
            "UPDATE restores SET lifted_at = ?, lift_acknowledgement = ? WHERE lifted_at IS NULL",
            (time.time(), acknowledgement),
        )
        return int(cur.rowcount)
