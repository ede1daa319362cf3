"""The verifier's durable vote log: at most one decision per transfer, ever."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from bridge.domain.claims import ClaimKind
from bridge.domain.errors import PreconditionFailed


class ConflictingVote(PreconditionFailed):
    """Signing would contradict a decision this member already signed."""


def open_durable(path: Path) -> sqlite3.Connection:
    """A SQLite connection for a member's logs: WAL, ``synchronous=FULL`` (every commit is
    fsync'd), explicit transactions only (see :func:`immediate`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
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


class VoteLog:
    """Records COMMIT/ABORT decisions before any signature leaves the process.

    ``record`` is atomic (one SQLite transaction, fsync'd): after a crash the member
    remembers every decision it may have signed.
    """

    def __init__(self, path: Path) -> None:
        self._db = open_durable(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS votes ("
            " transfer_id BLOB PRIMARY KEY, decision INTEGER NOT NULL,"
            " terms_hash BLOB NOT NULL, at REAL NOT NULL)"
        )

    def record(self, transfer_id: bytes, decision: ClaimKind, terms_hash: bytes) -> None:
        """Record ``decision``; idempotent for the same decision and terms, else refuses."""
        if decision not in (ClaimKind.COMMIT, ClaimKind.ABORT):
            raise ValueError("only COMMIT and ABORT are decisions")
        with immediate(self._db):
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

    def decision(self, transfer_id: bytes) -> ClaimKind | None:
        """The decision recorded for ``transfer_id``, if any."""
        row = self._db.execute(
            "SELECT decision FROM votes WHERE transfer_id = ?", (transfer_id,)
        ).fetchone()
        return ClaimKind(int(row[0])) if row else None

    def close(self) -> None:
        """Close the database."""
        self._db.close()
