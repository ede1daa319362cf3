"""The application's state: a versioned key-value table in SQLite, one version per block.

Guarantees: reads at any committed height see exactly the state after that block (queries
at past heights, supply at a height); a block's writes and the block's meta row (height,
time, app hash) are committed in ONE SQLite transaction (WAL, synchronous=FULL), so after a
crash the store is at the last committed block or the one before, never in between, and
CometBFT's handshake replays whatever follows from its own block store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT NOT NULL, height INTEGER NOT NULL, value BLOB, PRIMARY KEY (key, height)
);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY, time INTEGER NOT NULL, app_hash BLOB NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class BlockMeta:
    """A committed block as the application saw it."""

    height: int
    time: int
    app_hash: bytes


class VersionedStore:
    """The SQLite-backed state; one writer (the ABCI consensus connection)."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        """Open (and create) the store; ``readonly``: a second, read-only connection to an
        existing store (WAL: it reads committed blocks while the writer commits)."""
        if readonly:
            uri = f"{path.resolve().as_uri()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def last(self) -> BlockMeta:
        """The last committed block (height 0, empty hash: nothing committed yet)."""
        row = self._db.execute(
            "SELECT height, time, app_hash FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        return BlockMeta(0, 0, b"") if row is None else BlockMeta(row[0], row[1], bytes(row[2]))

    def block(self, height: int) -> BlockMeta | None:
        """The committed block at ``height``, or None."""
        row = self._db.execute(
            "SELECT height, time, app_hash FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        return None if row is None else BlockMeta(row[0], row[1], bytes(row[2]))

    def get(self, key: str, height: int) -> bytes | None:
        """``key``'s value after block ``height`` (None: absent or deleted)."""
        row = self._db.execute(
            "SELECT value FROM kv WHERE key = ? AND height <= ? ORDER BY height DESC LIMIT 1",
            (key, height),
        ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def scan(self, prefix: str, height: int) -> list[tuple[str, bytes]]:
        """Every live key starting with ``prefix`` after block ``height``, sorted by key.

        Keys are printable ASCII, so ``[prefix, prefix + DEL)`` is the prefix range."""
        rows = self._db.execute(
            "SELECT k.key, k.value FROM kv k WHERE k.key >= ? AND k.key < ? AND k.height = ("
            " SELECT MAX(height) FROM kv WHERE key = k.key AND height <= ?) ORDER BY k.key",
            (prefix, prefix + "\x7f", height),
        ).fetchall()
        return [(str(k), bytes(v)) for k, v in rows if v is not None]

    # ---- counter bounds (review F12)
    def scan_after(
        self, prefix: str, after: str, limit: int, height: int
    ) -> list[tuple[str, bytes]]:
        """At most ``limit`` live keys starting with ``prefix``, strictly after ``after``, in
        key order, as after block ``height``.

        Cost: one index walk from ``after`` that stops at the ``limit``-th live key (it also
        passes the deleted keys between, inside SQLite), never the whole prefix: a
        ``CountSupply`` step costs its page, as on Fabric."""
        rows = self._db.execute(
            "SELECT k.key, k.value FROM kv k WHERE k.key > ? AND k.key >= ? AND k.key < ?"
            " AND k.height = (SELECT MAX(height) FROM kv WHERE key = k.key AND height <= ?)"
            " AND k.value IS NOT NULL ORDER BY k.key LIMIT ?",
            (after, prefix, prefix + "\x7f", height, limit),
        ).fetchall()
        return [(str(k), bytes(v)) for k, v in rows]

    def commit(self, meta: BlockMeta, writes: Mapping[str, bytes | None]) -> None:
        """Persist block ``meta`` and its writes (None deletes) atomically."""
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.executemany(
                "INSERT OR REPLACE INTO kv (key, height, value) VALUES (?, ?, ?)",
                [(k, meta.height, writes[k]) for k in sorted(writes)],
            )
            cur.execute(
                "INSERT OR REPLACE INTO blocks (height, time, app_hash) VALUES (?, ?, ?)",
                (meta.height, meta.time, meta.app_hash),
            )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the database."""
        self._db.close()
