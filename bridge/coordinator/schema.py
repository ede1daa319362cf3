"""Versioned schema of the coordinator's database, for SQLite and PostgreSQL (ADR 0013).

A small explicit migration runner rather than Alembic: the coordinator's SQL is
hand-written for two dialects without an ORM. The runner is the one every store shares
(:mod:`bridge.storage.migrations`, ADR 0022): ``schema_version`` holds one row per applied
migration; :func:`migrate` applies, in order and each in its own transaction, every
migration above the highest applied one. Migrations are append-only: a released one is
never edited.

SECURITY / concurrency: the runner takes the database's write lock first (SQLite
``BEGIN IMMEDIATE``; PostgreSQL a transaction-scoped advisory lock), so two coordinators
starting on one database never apply a migration twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from bridge.coordinator.db import MAX_ROWS_PER_STATEMENT, Conn, Database, Dialect
from bridge.storage import migrations as runner
from bridge.storage.schema import Schema, schema_of

# Advisory lock key taken by every migration on PostgreSQL ("KSTB" "mig").
_MIGRATION_LOCK = 0x4B535442_6D6967

# ---- version 1: the schema of every store as released before versioning (frozen copy).
# On SQLite, a file written by an older coordinator already has these tables
# (CREATE ... IF NOT EXISTS leaves them) once _v1_sqlite_legacy has brought it level.
_V1 = """
CREATE TABLE IF NOT EXISTS transfers (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  transfer_id BLOB NOT NULL UNIQUE,
  idempotency_key TEXT NOT NULL,
  request TEXT NOT NULL,
  terms TEXT NOT NULL,
  security TEXT NOT NULL,
  state INTEGER NOT NULL,
  reason TEXT NOT NULL,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  transactions TEXT NOT NULL DEFAULT '{}',
  origin TEXT NOT NULL DEFAULT 'submitted',
  source_ledger TEXT NOT NULL,
  UNIQUE (source_ledger, idempotency_key)
)
;
CREATE TABLE IF NOT EXISTS transfer_updates (
  transfer_id BLOB NOT NULL,
  sequence INTEGER NOT NULL,
  state INTEGER NOT NULL,
  detail TEXT NOT NULL,
  at REAL NOT NULL,
  PRIMARY KEY (transfer_id, sequence)
);
CREATE TABLE IF NOT EXISTS decisions (
  transfer_id BLOB PRIMARY KEY,
  kind INTEGER NOT NULL,
  certificates TEXT NOT NULL,
  cause TEXT NOT NULL,
  at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_events (
  ledger TEXT NOT NULL,
  height INTEGER NOT NULL,
  idx INTEGER NOT NULL,
  transfer_id BLOB NOT NULL,
  leg INTEGER NOT NULL,
  state INTEGER NOT NULL,
  tx_id TEXT NOT NULL,
  PRIMARY KEY (ledger, height, idx)
);
CREATE TABLE IF NOT EXISTS misbehaviour (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  member BLOB NOT NULL,
  endpoint TEXT NOT NULL,
  kind TEXT NOT NULL,
  subject TEXT NOT NULL,
  detail TEXT NOT NULL,
  expected_digest BLOB NOT NULL,
  signed_digest BLOB NOT NULL,
  signature BLOB NOT NULL,
  at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_progress (
  ledger TEXT PRIMARY KEY,
  scanned INTEGER NOT NULL
);
-- ---- parking: committed transfers whose target parked the units (issue 10)
CREATE TABLE IF NOT EXISTS parked_transfers (
  transfer_id BLOB PRIMARY KEY,
  reason INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS transfers_state ON transfers(state);

CREATE TABLE IF NOT EXISTS flow_waits (
  transfer_id BLOB PRIMARY KEY,
  reason INTEGER NOT NULL,
  not_before REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS transfers_lane ON transfers(security, source_ledger, state);

CREATE TABLE IF NOT EXISTS supply_registrations (
  security TEXT NOT NULL,
  version INTEGER NOT NULL,
  body TEXT NOT NULL,
  signature BLOB NOT NULL,
  operator BLOB NOT NULL,
  at REAL NOT NULL,
  PRIMARY KEY (security, version)
);
CREATE TABLE IF NOT EXISTS supply_confirmed (
  security TEXT NOT NULL,
  ledger TEXT NOT NULL,
  units TEXT NOT NULL,
  PRIMARY KEY (security, ledger)
);
CREATE TABLE IF NOT EXISTS supply_records (
  feed_seq INTEGER PRIMARY KEY AUTOINCREMENT,
  security TEXT NOT NULL,
  sequence INTEGER NOT NULL,
  digest BLOB NOT NULL,
  body BLOB NOT NULL,
  signatures TEXT NOT NULL,
  alerts TEXT NOT NULL,
  clean INTEGER NOT NULL,
  held INTEGER NOT NULL,
  hold_reason TEXT NOT NULL,
  at REAL NOT NULL,
  UNIQUE (security, sequence)
);
CREATE TABLE IF NOT EXISTS supply_holds (
  security TEXT PRIMARY KEY,
  raised_by INTEGER NOT NULL,
  reason TEXT NOT NULL,
  at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS supply_releases (
  security TEXT NOT NULL,
  raised_by INTEGER NOT NULL,
  operator BLOB NOT NULL,
  note TEXT NOT NULL,
  at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS rotations (
  next_epoch INTEGER PRIMARY KEY,
  proposal TEXT NOT NULL,
  fingerprint BLOB NOT NULL,
  removed_member BLOB NOT NULL,
  evidence TEXT NOT NULL,
  created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rotation_signatures (
  next_epoch INTEGER NOT NULL,
  ledger TEXT NOT NULL,
  signer BLOB NOT NULL,
  signature BLOB NOT NULL,
  PRIMARY KEY (next_epoch, ledger, signer)
);
CREATE TABLE IF NOT EXISTS rotation_ledgers (
  next_epoch INTEGER NOT NULL,
  ledger TEXT NOT NULL,
  certificate TEXT,
  tx_id TEXT NOT NULL DEFAULT '',
  installed INTEGER NOT NULL DEFAULT 0,
  detail TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (next_epoch, ledger)
);

CREATE TABLE IF NOT EXISTS depository_orders (
    ledger TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    security BLOB NOT NULL,
    body TEXT NOT NULL,
    state INTEGER NOT NULL,
    refusal TEXT NOT NULL DEFAULT '',
    tx_id TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    PRIMARY KEY (ledger, sequence)
);
"""

# ---- version 2: the supply feed's positions are assigned from one counter row locked
# until commit (an outbox), so positions become visible in commit order without a gap.
_V2 = """
CREATE TABLE IF NOT EXISTS supply_feed_head (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  last INTEGER NOT NULL
);
INSERT INTO supply_feed_head (id, last)
  SELECT 1, COALESCE(MAX(feed_seq), 0) FROM supply_records WHERE true
  ON CONFLICT (id) DO NOTHING;
"""

# ---- version 3: the leader lease of active/passive coordinators (bridge/coordinator/lease.py).
_V3 = """
CREATE TABLE IF NOT EXISTS coordinator_lease (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  holder TEXT NOT NULL,
  token INTEGER NOT NULL,
  expires_at REAL NOT NULL
);
INSERT INTO coordinator_lease (id, holder, token, expires_at) VALUES (1, '', 0, 0)
  ON CONFLICT (id) DO NOTHING;
"""

# ---- version 4: active/passive coordinators (ADR 0017): every coordinator's advertised
# address (standbys name the leader's to clients) and heartbeat (operator status).
_V4 = """
CREATE TABLE IF NOT EXISTS coordinator_members (
  name TEXT PRIMARY KEY,
  address TEXT NOT NULL,
  started_at REAL NOT NULL,
  seen_at REAL NOT NULL
);
"""

# ---- version 5: the batch API (ADR 0023): every batch's request fingerprint and per-item
# results, recorded before the response, so a retried batch gets the same results.
_V5 = """
CREATE TABLE IF NOT EXISTS transfer_batches (
  source_ledger TEXT NOT NULL,
  batch_id TEXT NOT NULL,
  fingerprint BLOB NOT NULL,
  results TEXT NOT NULL,
  created_at REAL NOT NULL,
  PRIMARY KEY (source_ledger, batch_id)
);
"""

# ---- version 6: the lease holder is one PROCESS (HA review finding 4): ``instance`` is a
# random id per process, so two processes configured with the same name never renew
# each other's term nor overwrite each other's advertised address.
_V6 = """
ALTER TABLE coordinator_lease ADD COLUMN instance TEXT NOT NULL DEFAULT '';
ALTER TABLE coordinator_members ADD COLUMN instance TEXT NOT NULL DEFAULT '';
"""

# ---- version 7: the batch API's hardening (issue 14, batchfix): a batch id is reserved
# (``pending`` 1, ``owner`` the call running it) before any item is submitted, so two
# concurrent copies of one batch never both run its items and a batch id already taken
# with other items submits nothing; ``pending`` goes back to 0 with the results.
_V7 = """
ALTER TABLE transfer_batches ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
ALTER TABLE transfer_batches ADD COLUMN owner TEXT NOT NULL DEFAULT '';
"""

# ---- version 8: the batch API's quota per source ledger (threat model, "batch rows"): each
# batch's item count (set when its id is reserved) and how many of its items were refused on
# their own input (set with its results), summed over a rolling day from a covering index, so
# a brokerage's certificate alone cannot grow the database without bound. Rows of older
# releases count 0.
_V8 = """
ALTER TABLE transfer_batches ADD COLUMN items INTEGER NOT NULL DEFAULT 0;
ALTER TABLE transfer_batches ADD COLUMN refused INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS transfer_batches_recent
  ON transfer_batches(source_ledger, created_at, items, refused);
"""

# ---- version 9: a batch certificate is stored once (issue 14): the decisions of a batch's
# items name it by id (SHA-256 of its text) beside their own proof, instead of each repeating
# its signatures and root (about 0.9 KB of a decision's 1.8 KB). Rows of older releases keep
# theirs inline and are read as before.
_V9 = """
CREATE TABLE IF NOT EXISTS batch_certificates (
  id BLOB PRIMARY KEY,
  certificate TEXT NOT NULL
);
"""

# ---- version 10: a transfer's terms in a compact form (issue 14): base64 of its eleven words
# and its instruction's signature behind a "t1:" prefix (about 560 characters, not the JSON
# object's 910), so three rows of ``transfers`` fit a 4 KiB page instead of two. No DDL: rows
# of older releases keep their JSON and are read as before; the version stops an older
# release (which could not read the new rows) from opening the database.
_V10 = ""

# ---- version 11: a transfer's target ledger in a column of its own (issue 14), as its source
# ledger already is. A lane's queue reads and a brokerage's ledger-scoped listing compared
# the request JSON's ``target_ledger`` in SQL, parsing every candidate row's JSON, and a row
# whose JSON was damaged failed the whole query on both engines (and the listing). Rows of
# older releases get theirs from their request (:func:`_v11_target_ledgers`); one whose
# request does not parse keeps NULL: in no lane, listed by its source ledger only. A partial
# index counts a ledger's unfinished adoptions (the intake's bound) without a scan.
_V11 = """
ALTER TABLE transfers ADD COLUMN target_ledger TEXT;
CREATE INDEX IF NOT EXISTS transfers_adopted ON transfers(source_ledger, state)
  WHERE origin = 'adopted';
"""

_BACKFILL_PAGE = 2000
"""Rows one backfill read takes (one UPDATE per 500 of them)."""


def _v11_target_ledgers(c: Conn) -> None:
    """Fill ``target_ledger`` of every existing row from its request JSON, in pages by
    ``seq`` (one pass; the migration's transaction holds the table)."""
    last = 0
    while True:
        rows = c.execute(
            "SELECT seq, request FROM transfers WHERE seq > ? ORDER BY seq LIMIT ?",
            (last, _BACKFILL_PAGE),
        ).fetchall()
        if not rows:
            return
        last = int(rows[-1][0])
        found: list[tuple[int, str]] = []
        for seq, request in rows:
            try:
                target = json.loads(str(request))["target_ledger"]
            except (ValueError, KeyError, TypeError, RecursionError):
                continue  # unreadable (UnreadableRecord to the store's readers): NULL
            if isinstance(target, str):
                found.append((int(seq), target))
        for start in range(0, len(found), MAX_ROWS_PER_STATEMENT):
            page = found[start : start + MAX_ROWS_PER_STATEMENT]
            cases = " ".join("WHEN ? THEN ?" for _ in page)
            marks = ",".join("?" for _ in page)
            c.execute(
                f"UPDATE transfers SET target_ledger = CASE seq {cases} END"  # noqa: S608
                f" WHERE seq IN ({marks})",
                [*(v for row in page for v in row), *(seq for seq, _ in page)],
            )


@dataclass(frozen=True, slots=True)
class Migration:
    """One forward step of the schema: SQL for both dialects (SQLite text, translated
    by :func:`to_postgres`), and an optional SQLite-only step run before it."""

    version: int
    name: str
    sql: str
    sqlite_before: Callable[[Conn], None] | None = None
    after: Callable[[Conn], None] | None = None
    """Run on both engines after the SQL, in the same transaction (a data backfill)."""

    def apply(self, c: Conn) -> None:
        """Run the step on ``c`` (inside the runner's transaction)."""
        if c.dialect is Dialect.SQLITE and self.sqlite_before is not None:
            self.sqlite_before(c)
        script = self.sql if c.dialect is Dialect.SQLITE else to_postgres(self.sql)
        for statement in _statements(script):
            c.execute(statement)
        if self.after is not None:
            self.after(c)


def _statements(script: str) -> list[str]:
    """The statements of ``script`` (split on ``;``; comment-only chunks dropped)."""
    out = []
    for chunk in script.split(";"):
        body = "\n".join(
            line for line in chunk.splitlines() if not line.strip().startswith("--")
        ).strip()
        if body:
            out.append(body)
    return out


def to_postgres(ddl: str) -> str:
    """SQLite DDL of this module in PostgreSQL types (frozen text in, deterministic out)."""
    ddl = re.sub(
        r"INTEGER PRIMARY KEY AUTOINCREMENT",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        ddl,
    )
    ddl = re.sub(r"\bINTEGER\b", "BIGINT", ddl)
    ddl = re.sub(r"\bREAL\b", "DOUBLE PRECISION", ddl)
    return re.sub(r"\bBLOB\b", "BYTEA", ddl)


def _v1_sqlite_legacy(c: Conn) -> None:
    """Bring a file written before the schema was versioned level with version 1."""
    columns = {row[1] for row in c.execute("PRAGMA table_info(transfers)").fetchall()}
    if not columns:
        return  # a new file
    rebuild = "source_ledger" not in columns
    if "origin" not in columns:
        rebuild = True  # ADD COLUMN leaves a table text that is not the canonical one
        # Added for event intake (issue 9): rows written before it were submitted ones
        # or adoptions, whose key is exactly "onchain:0x<their own transfer id>".
        # SECURITY: not merely the prefix (LIKE also ignores case): a brokerage could
        # submit under a victim lock's adoption key, and that row is a submitted one.
        c.execute("ALTER TABLE transfers ADD COLUMN origin TEXT NOT NULL DEFAULT 'submitted'")
        c.execute(
            "UPDATE transfers SET origin = 'adopted'"
            " WHERE idempotency_key = 'onchain:0x' || lower(hex(transfer_id))"
        )
    if rebuild:
        # Keys scoped per source ledger (issue 9 review): rebuild ``transfers`` without the
        # global UNIQUE on the key (SQLite cannot drop a constraint in place), keeping
        # every row, its ``seq`` and its origin. The rebuilt table is exactly version 1's,
        # so the store's schema check (ADR 0022) holds after the upgrade.
        source = (
            "source_ledger" if "source_ledger" in columns
            else "json_extract(request, '$.source_ledger')"
        )  # fmt: skip
        c.execute("ALTER TABLE transfers RENAME TO transfers_v1")
        c.execute("DROP INDEX IF EXISTS transfers_state")
        c.execute("DROP INDEX IF EXISTS transfers_lane")
        c.execute(_statements(_V1)[0])
        c.execute(
            "INSERT INTO transfers (seq, transfer_id, idempotency_key, request, terms,"  # noqa: S608 (source: one of two constants)
            " security, state, reason, created_at, updated_at, transactions, origin,"
            " source_ledger) SELECT seq, transfer_id, idempotency_key, request, terms,"
            " security, state, reason, created_at, updated_at, transactions, origin,"
            f" {source} FROM transfers_v1 ORDER BY seq"
        )
        c.execute("DROP TABLE transfers_v1")
        c.execute("CREATE INDEX IF NOT EXISTS transfers_state ON transfers(state)")
        c.execute(
            "CREATE INDEX IF NOT EXISTS transfers_lane ON transfers(security, source_ledger, state)"
        )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "baseline: transfers, supply feed, rotations, depository orders", _V1,
              _v1_sqlite_legacy),
    Migration(2, "supply feed outbox: gap-free positions in commit order", _V2),
    Migration(3, "coordinator leader lease with fencing token", _V3),
    Migration(4, "active/passive coordinators: addresses and heartbeats", _V4),
    Migration(5, "batch API: batches and their per-item results", _V5),
    Migration(6, "coordinator lease holder: one process (name and instance id)", _V6),
    Migration(7, "batch API: a batch id is reserved before its items run", _V7),
    Migration(8, "batch API: items and items refused on input per batch, for a daily quota", _V8),
    Migration(9, "decisions name a batch certificate stored once", _V9),
    Migration(10, "a transfer's terms in a compact form (older releases cannot read them)",
              _V10),
    Migration(11, "a transfer's target ledger in a column", _V11,
              after=_v11_target_ledgers),
)  # fmt: skip
"""Every migration, in version order (append-only)."""

LATEST = MIGRATIONS[-1].version
KIND = "coordinator"
MARKERS = ("transfers",)
"""Tables every coordinator release wrote: an unstamped file without one is not adopted."""


def current_version(c: Conn) -> int:
    """The highest applied version (0: none)."""
    return runner.current_version(c)


def _advisory_lock(c: Conn) -> None:
    if c.dialect is Dialect.POSTGRES:
        c.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))


def migrate(db: Database) -> int:
    """Apply every pending migration, each in one transaction; return the version reached.

    The shared runner (:mod:`bridge.storage.migrations`) refuses a database of another
    kind (WrongStore) or newer than this code knows (StoreTooNew: a downgrade)."""
    runner.migrate(
        KIND,
        [runner.Migration(m.version, m.name, m.apply) for m in MIGRATIONS],
        db.write_sync,
        before=_advisory_lock,
        # An unstamped SQLite file is adopted only if it has a coordinator table; every
        # PostgreSQL database was stamped by the release that created it.
        markers=MARKERS if db.dialect is Dialect.SQLITE else (),
    )
    return db.run_sync(current_version)


def canonical_sqlite(version: int) -> Schema:
    """The SQLite schema migrations 1..``version`` build on an empty file (ADR 0022): what
    a restored coordinator store must have, exactly (:mod:`bridge.storage.schema`)."""
    return _canonical(version)


@lru_cache(maxsize=8)
def _canonical(version: int) -> Schema:
    import sqlite3
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="kstb-canonical-") as tmp:
        path = Path(tmp) / "canonical.db"

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(path, isolation_level=None, check_same_thread=False)

        db = Database(Dialect.SQLITE, connect, str(path))
        try:
            steps = [
                runner.Migration(m.version, m.name, m.apply)
                for m in MIGRATIONS
                if m.version <= version
            ]
            if steps:
                runner.migrate(KIND, steps, db.write_sync, before=_advisory_lock)
        finally:
            db.close()
        raw = sqlite3.connect(path)
        try:
            return schema_of(raw)
        finally:
            raw.close()
