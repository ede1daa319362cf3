"""The one canonical-schema check every SQLite store shares (ADR 0022, review s17 finding 1).

A store's schema is what its migrations build, nothing else: the same tables, indexes and
column definitions (defaults, constraints, conflict clauses), and no trigger or view. The
expected schema is not a list written by hand: :func:`canonical_sqlite` builds it by running
the kind's own migrations, up to the version asked, on an empty in-memory database.

SECURITY: a file whose schema differs in any way is refused (:class:`SchemaMismatch`)
before anything reads or writes it as a store. A trigger (``AFTER INSERT ON restores ...
SET lifted_at = 0``, ``AFTER INSERT ON votes ... DELETE``), a changed default
(``lifted_at DEFAULT 0``) or an ``ON CONFLICT IGNORE`` clause would otherwise silently
change what the daemon's own statements do; a backup's digest cannot catch that, since
whoever crafts the file also writes its digest.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from bridge.storage.migrations import Migration, StoreError, migrate

Entry = tuple[str, str, str, str | None]
"""One ``sqlite_master`` row: type, name, table, normalised SQL (None: an automatic index)."""

Schema = tuple[Entry, ...]
"""A store's schema: its ``sqlite_master`` entries, sorted."""

BACKUP_TABLE = "backup_info"
"""The provenance table only a backup file has (never part of a live store's schema)."""


class SchemaMismatch(StoreError):
    """The file's schema is not the one this kind's migrations build (an added trigger,
    view, index or table, or a changed column definition): refused, nothing changed."""

    def __init__(self, kind: str, version: int, extra: Schema, missing: Schema) -> None:
        def names(entries: Schema) -> str:
            return ", ".join(f"{t} {n}" for t, n, _, _ in entries) or "none"

        super().__init__(
            f"the file's schema is not the {kind} store's schema at version {version}:"
            f" unexpected {names(extra)}; expected but absent or different {names(missing)}"
        )
        self.store_kind = kind
        self.version = version
        self.extra = extra
        self.missing = missing


def _normalise(sql: str | None) -> str | None:
    if sql is None:
        return None
    text = re.sub(r"\s+", " ", sql.strip())
    return re.sub(r"\s*([(),])\s*", r"\1", text)


def schema_of(db: sqlite3.Connection) -> Schema:
    """Every ``sqlite_master`` entry of ``db`` but a backup's ``backup_info`` (read only)."""
    rows = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    return tuple(
        sorted(
            (str(t), str(n), str(tb), _normalise(s)) for t, n, tb, s in rows if tb != BACKUP_TABLE
        )
    )


def canonical_sqlite(kind: str, migrations: Sequence[Migration[Any]], version: int) -> Schema:
    """The schema ``migrations[:version]`` build on an empty SQLite database."""
    return _canonical(kind, tuple(migrations), version)


@lru_cache(maxsize=32)
def _canonical(kind: str, migrations: tuple[Migration[Any], ...], version: int) -> Schema:
    from bridge.storage.sqlite import transaction

    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        steps = [m for m in migrations if m.version <= version]
        if steps:
            migrate(kind, steps, transaction(db))
        return schema_of(db)
    finally:
        db.close()


def check_schema(db: sqlite3.Connection, kind: str, version: int, expected: Schema) -> None:
    """Return if ``db``'s schema is exactly ``expected``; else SchemaMismatch."""
    have = schema_of(db)
    if have != expected:
        extra = tuple(e for e in have if e not in expected)
        missing = tuple(e for e in expected if e not in have)
        raise SchemaMismatch(kind, version, extra, missing)


def inspect(path: Path) -> sqlite3.Connection:
    """A connection to the existing store ``path`` that only reads (``query_only``) with
    :func:`harden`. Not SQLite's ``mode=ro``: a read-only connection to a WAL store leaves
    its ``-wal``/``-shm`` behind; this one, the last to close, removes them as a daemon's
    would, and never writes the file itself."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA query_only=ON")
    harden(db)
    return db


def harden(db: sqlite3.Connection) -> None:
    """SECURITY: a file under inspection may be crafted, so SQL functions named in its
    schema run with the least trust (``trusted_schema=OFF``) while it is checked."""
    db.execute("PRAGMA trusted_schema=OFF")
