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
from bridge.storage.migrations import Migration, StoreError
from bridge.storage.sqlite import immediate, open_store

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


class RewindRefused(StoreError):
    """A checkpoint rewind that would skip events or touch the wrong row: refused, nothing
    changed (``--force`` overrides, for an operator who knows why)."""


def rewind_position(scanned: int) -> EventPosition:
    """Where to rewind a checkpoint for a coordinator that recorded ``scanned``: the end of
    the block BEFORE it. SECURITY (review s17 finding 5): the watcher delivers in chunks
    and the coordinator records ``scanned`` per chunk, so block ``scanned`` may be only
    partly delivered; re-delivering from the block itself loses nothing (the coordinator
    keeps each ledger position once)."""
    if scanned < 1:
        return EventPosition(0, -1)  # before the first event of block 0: everything again
    return EventPosition(scanned - 1, END_OF_BLOCK)


def rewind(
    path: Path, ledger: str, position: EventPosition, *, force: bool = False
) -> EventPosition | None:
    """Set ``ledger``'s checkpoint in store ``path`` to ``position``; returns the one it
    replaced. Only while no relayer has the store open (StoreInUse).

    Moving back is always safe: the relayer re-delivers events the coordinator already
    has, and the coordinator keeps each ledger position once (ADR 0022). This is how the
    checkpoints are brought level with a coordinator log restored from an older backup.
    Refused without ``force``, nothing changed: a missing store (StoreMissing: a mistyped
    path), a ledger with no checkpoint in it (RewindRefused: a mistyped ledger) and a move
    FORWARD (RewindRefused: that skips events)."""
    from bridge.storage.sqlite import StoreMissing, hold_lock

    if not force and not path.is_file():
        raise StoreMissing(f"no relayer store at {path}: refusing to create one")
    lock = hold_lock(path, exclusive=True)
    assert lock is not None  # an exclusive request is never already satisfied
    try:
        db = open_store(path, KIND, MIGRATIONS, markers=MARKERS, lock=False)
        try:
            with immediate(db):
                row = db.execute(
                    "SELECT height, idx FROM checkpoint WHERE ledger = ?", (ledger,)
                ).fetchone()
                before = EventPosition(int(row[0]), int(row[1])) if row else None
                if not force and before is None:
                    known = [r[0] for r in db.execute("SELECT ledger FROM checkpoint")]
                    raise RewindRefused(
                        f"no checkpoint for ledger {ledger!r} in {path} (it has {known})"
                    )
                if not force and before is not None and position > before:
                    raise RewindRefused(
                        f"{ledger}: {position} is ahead of the checkpoint {before}; moving"
                        " forward skips events"
                    )
                db.execute(
                    "INSERT INTO checkpoint(ledger, height, idx) VALUES (?, ?, ?)"
                    " ON CONFLICT(ledger) DO UPDATE SET height = excluded.height,"
                    " idx = excluded.idx",
                    (ledger, position.height, position.index),
                )
        finally:
            db.close()
    finally:
        lock.close()
    return before
