"""The relayer's durable delivery checkpoint (SQLite, fsync on commit).

Versioned with the shared runner (:mod:`bridge.storage.migrations`, kind ``relayer``):
version 1 is the schema as released before versioning (287b48a). A checkpoint restored
from an older backup only moves the relayer back: it re-delivers events the coordinator
already has, which it deduplicates by ledger position (ADR 0022).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bridge.domain.legs import EventPosition
from bridge.storage.migrations import Migration
from bridge.storage.sqlite import open_store

END_OF_BLOCK = 2**31 - 1
KIND = "relayer"


def _v1(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS checkpoint ("
        " ledger TEXT PRIMARY KEY, height INTEGER NOT NULL, idx INTEGER NOT NULL)"
    )


MIGRATIONS: tuple[Migration[sqlite3.Connection], ...] = (
    Migration(1, "baseline: one checkpoint per ledger (release 287b48a)", _v1),
)
"""Every migration of the relayer's store, in version order (append-only)."""

MARKERS = ("checkpoint",)
"""The table every release of the relayer's store wrote (an unstamped file needs it)."""


class CheckpointStore:
    """Remembers the last ledger position whose events the coordinator acknowledged."""

    def __init__(self, path: Path, ledger: str) -> None:
        self._db = open_store(path, KIND, MIGRATIONS, markers=MARKERS)
        self._ledger = ledger

    def load(self) -> EventPosition | None:
        """The last acknowledged position, or None when nothing was delivered yet."""
        row = self._db.execute(
            "SELECT height, idx FROM checkpoint WHERE ledger = ?", (self._ledger,)
        ).fetchone()
        return EventPosition(int(row[0]), int(row[1])) if row else None

    def save(self, position: EventPosition) -> None:
        """Durably record ``position``; it must not move backwards."""
        current = self.load()
        if current is not None and position < current:
            raise ValueError(f"checkpoint would move backwards: {position} < {current}")
        self._db.execute(
            "INSERT INTO checkpoint(ledger, height, idx) VALUES (?, ?, ?) "
            "ON CONFLICT(ledger) DO UPDATE SET height = excluded.height, idx = excluded.idx",
            (self._ledger, position.height, position.index),
        )

    def close(self) -> None:
        """Close the database."""
        self._db.close()


def rewind(path: Path, ledger: str, position: EventPosition) -> EventPosition | None:
    """Set ``ledger``'s checkpoint in store ``path`` to ``position`` (backwards allowed);
    returns the one it replaced. Only while no relayer has the store open (StoreInUse).

    Moving back is always safe: the relayer re-delivers events the coordinator already
    has, and the coordinator keeps each ledger position once (ADR 0022). This is how the
    checkpoints are brought level with a coordinator log restored from an older backup."""
    from bridge.storage.sqlite import hold_lock, migrate_sqlite, open_durable

    lock = hold_lock(path, exclusive=True)
    try:
        db = open_durable(path, lock=False)
        try:
            migrate_sqlite(db, KIND, MIGRATIONS)
            row = db.execute(
                "SELECT height, idx FROM checkpoint WHERE ledger = ?", (ledger,)
            ).fetchone()
            db.execute(
                "INSERT INTO checkpoint(ledger, height, idx) VALUES (?, ?, ?) ON CONFLICT(ledger)"
                " DO UPDATE SET height = excluded.height, idx = excluded.idx",
                (ledger, position.height, position.index),
            )
        finally:
            db.close()
    finally:
        lock.close()
    return EventPosition(int(row[0]), int(row[1])) if row else None
