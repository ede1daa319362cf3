"""The verifier's durable vote log: at most one decision per transfer, ever."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from bridge.domain.claims import ClaimKind
from bridge.domain.errors import PreconditionFailed


class ConflictingVote(PreconditionFailed):
    """Signing would contradict a decision this member already signed."""


class VoteLog:
    """Records COMMIT/ABORT decisions before any signature leaves the process.

    ``record`` is atomic (one SQLite transaction, fsync'd): after a crash the member
    remembers every decision it may have signed.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS votes ("
            " transfer_id BLOB PRIMARY KEY, decision INTEGER NOT NULL,"
            " terms_hash BLOB NOT NULL, at REAL NOT NULL)"
        )

    def record(self, transfer_id: bytes, decision: ClaimKind, terms_hash: bytes) -> None:
        """Record ``decision``; idempotent for the same decision and terms, else refuses."""
        if decision not in (ClaimKind.COMMIT, ClaimKind.ABORT):
            raise ValueError("only COMMIT and ABORT are decisions")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute(
                "SELECT decision, terms_hash FROM votes WHERE transfer_id = ?", (transfer_id,)
            ).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO votes VALUES (?, ?, ?, ?)",
                    (transfer_id, int(decision), terms_hash, time.time()),
                )
            elif int(row[0]) != int(decision):
                earlier = ClaimKind(int(row[0])).name
                raise ConflictingVote(
                    f"already signed {earlier} for transfer 0x{transfer_id.hex()}"
                )
            elif bytes(row[1]) != terms_hash:
                raise ConflictingVote(
                    f"already signed other terms for transfer 0x{transfer_id.hex()}"
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def decision(self, transfer_id: bytes) -> ClaimKind | None:
        """The decision recorded for ``transfer_id``, if any."""
        row = self._db.execute(
            "SELECT decision FROM votes WHERE transfer_id = ?", (transfer_id,)
        ).fetchone()
        return ClaimKind(int(row[0])) if row else None

    def close(self) -> None:
        """Close the database."""
        self._db.close()
