"""The relayer's durable delivery checkpoint (SQLite, fsync on commit)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bridge.domain.legs import EventPosition

END_OF_BLOCK = 2**31 - 1


class CheckpointStore:
    """Remembers the last ledger position whose events the coordinator acknowledged."""

    def __init__(self, path: Path, ledger: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS checkpoint ("
            " ledger TEXT PRIMARY KEY, height INTEGER NOT NULL, idx INTEGER NOT NULL)"
        )
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
