"""The coordinator database's versioned schema and its I/O off the event loop (ADR 0013)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bridge.coordinator import schema
from bridge.coordinator.db import (
    SESSION_TIMEOUTS,
    Conn,
    DatabaseInUse,
    DatabaseSettingRefused,
    open_database,
    open_sqlite,
)
from bridge.coordinator.store import SqliteTransferStore, SqlTransferStore
from bridge.coordinator.supply_store import SqliteSupplyStore, SqlSupplyStore
from bridge.domain.supply import Assessment, SignedRecord
from bridge.storage.migrations import StoreTooNew
from tests.unit.test_store import make_record
from tests.unit.test_supply_store import record

pytestmark = pytest.mark.unit

CLEAN = Assessment((), (), {})


def signed(security: str, sequence: int) -> SignedRecord:
    return SignedRecord(record(sequence, {"a": 10}, security=security), (b"\x5a" * 65,))


def versions(path: Path) -> list[int]:
    raw = sqlite3.connect(path)
    try:
        return [int(r[0]) for r in raw.execute("SELECT version FROM schema_version ORDER BY 1")]
    finally:
        raw.close()


async def test_a_file_of_the_unversioned_schema_is_upgraded(tmp_path: Path) -> None:
    """A database written by the coordinator before versioning (main's schema: the frozen
    version-1 text, no schema_version, feed positions from AUTOINCREMENT) is migrated
    forward, keeps every row, and the feed continues after its last position."""
    path = tmp_path / "coordinator.sqlite"
    # Written the way the previous coordinator did it: its DDL, its own first appends.
    raw = sqlite3.connect(path, isolation_level=None)
    raw.executescript(schema._V1)
    for n in (1, 2, 3):
        s = signed("OLD000000001", n)
        raw.execute(
            "INSERT INTO supply_records (security, sequence, digest, body, signatures, alerts,"
            " clean, held, hold_reason, at) VALUES (?, ?, ?, ?, '[]', '[]', 1, 0, '', 0)",
            ("OLD000000001", n, s.record.digest, s.record.canonical()),
        )
    raw.close()
    rec = make_record(1)
    old = SqliteTransferStore(path)  # the store opens (and migrates) the file
    try:
        assert versions(path) == [m.version for m in schema.MIGRATIONS]
        await old.create(rec)
    finally:
        old.close()

    supply = SqliteSupplyStore(path)
    try:
        assert [a.feed_sequence for a in await supply.feed(0, 10)] == [1, 2, 3]
        got = await supply.append(signed("NEW000000001", 1), CLEAN, 1.0)
        assert got.feed_sequence == 4, "the counter starts after the AUTOINCREMENT rows"
        assert [a.feed_sequence for a in await supply.feed(3, 10)] == [4]
    finally:
        supply.close()
    again = SqliteTransferStore(path)  # reopening applies nothing twice
    try:
        assert versions(path) == [m.version for m in schema.MIGRATIONS]
        assert await again.get(rec.transfer_id) == rec
    finally:
        again.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    open_sqlite(path).close()
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("INSERT INTO schema_version VALUES (?, 'from the future', 0)", (schema.LATEST + 1,))
    raw.close()
    with pytest.raises(StoreTooNew, match="newer than this release"):
        open_sqlite(path)


@pytest.mark.postgres
async def test_postgres_is_migrated_once_and_versions_recorded(fresh_pg_url: str) -> None:
    first = open_database(fresh_pg_url)
    second = open_database(fresh_pg_url)  # a second coordinator starting: nothing twice
    try:
        rows = first.run_sync(
            lambda c: c.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()
        )
        assert [int(r[0]) for r in rows] == [m.version for m in schema.MIGRATIONS]
        store = SqlSupplyStore(second)
        assert (await store.append(signed("PG0000000001", 1), CLEAN, 1.0)).feed_sequence == 1
    finally:
        first.close()
        second.close()


def test_a_password_in_the_url_is_refused() -> None:
    with pytest.raises(DatabaseSettingRefused, match="must not contain a password"):
        open_database("postgresql://bridge:secret@127.0.0.1:1/db")


async def test_a_blocked_write_does_not_block_the_event_loop(tmp_path: Path) -> None:
    """Another process holds the SQLite write lock: the store's write waits (busy
    timeout) in its worker thread while the event loop keeps running."""
    path = tmp_path / "c.sqlite"
    store = SqliteTransferStore(path)
    rec = make_record(1)
    await store.create(rec)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    tick = asyncio.create_task(ticker())
    try:
        write = asyncio.create_task(store.set_reason(rec.transfer_id, "waiting"))
        await asyncio.sleep(0.5)
        assert not write.done()
        assert ticks >= 20, f"the loop ran only {ticks} times while the write waited"
        other.execute("COMMIT")
        await asyncio.wait_for(write, 10)
        got = await store.get(rec.transfer_id)
        assert got is not None and got.reason == "waiting"
    finally:
        tick.cancel()
        other.close()
        store.close()


@pytest.mark.postgres
async def test_a_broken_postgres_connection_is_replaced(fresh_pg_url: str) -> None:
    """The server ends the coordinator's session (restart, failover, idle kill): the call
    that was on it fails (typed: DatabaseUnavailable, UNAVAILABLE, so clients retry or fail
    over) and changed nothing; the next call runs on a new connection."""
    import psycopg

    from bridge.coordinator.db import DatabaseUnavailable

    db = open_database(fresh_pg_url)
    store = SqlTransferStore(db)
    rec = make_record(1)
    await store.create(rec)
    pid = db.run_sync(lambda c: c.execute("SELECT pg_backend_pid()").fetchone())[0]
    with psycopg.connect(fresh_pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(DatabaseUnavailable) as exc:
        await store.set_reason(rec.transfer_id, "lost")
    assert isinstance(exc.value.__cause__, psycopg.OperationalError)
    await store.set_reason(rec.transfer_id, "kept")
    got = await store.get(rec.transfer_id)
    assert got is not None and got.reason == "kept"
    store.close()


@pytest.mark.postgres
def test_postgres_sessions_have_bounded_timeouts(fresh_pg_url: str) -> None:
    """Review 2 finding 3: one hung statement or lock wait cannot freeze the coordinator's
    single database worker forever (server-side timeouts and TCP keepalives are set)."""
    import psycopg

    db = open_database(fresh_pg_url)
    try:
        shown = {
            name: db.run_sync(lambda c, n=name: c.execute(f"SHOW {n}").fetchone()[0])  # type: ignore[misc]
            for name in SESSION_TIMEOUTS
        }
        assert shown == {
            "statement_timeout": "30s",
            "lock_timeout": "10s",
            "idle_in_transaction_session_timeout": "1min",
        }
        dsn = db.run_sync(lambda c: c._raw.info.dsn)
        assert "keepalives=1" in dsn and "tcp_user_timeout=60000" in dsn

        def hung(c: Conn) -> None:
            c.execute("SET statement_timeout = '100ms'")
            c.execute("SELECT pg_sleep(5)")

        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            db.run_sync(hung)
    finally:
        db.close()


@pytest.mark.postgres
@pytest.mark.security
def test_a_second_coordinator_on_one_postgres_database_is_refused(fresh_pg_url: str) -> None:
    """Review 2 finding 4: while one coordinator holds the database, a second one starting
    on it is refused (DatabaseInUse); once the first closes, it may start."""
    first = open_database(fresh_pg_url)
    first.claim_exclusive()
    second = open_database(fresh_pg_url)
    try:
        with pytest.raises(DatabaseInUse, match="in use by another coordinator"):
            second.claim_exclusive()
        first.close()
        second.claim_exclusive()
    finally:
        first.close()
        second.close()


@pytest.mark.security
def test_a_second_coordinator_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    first = open_sqlite(tmp_path / "c.sqlite")
    first.claim_exclusive()
    second = open_sqlite(tmp_path / "c.sqlite")
    try:
        with pytest.raises(DatabaseInUse, match="in use by another coordinator"):
            second.claim_exclusive()
        first.close()
        second.claim_exclusive()
    finally:
        first.close()
        second.close()
