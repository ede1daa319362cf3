"""The coordinator's reads are handed to the database thread together (issue 14), on a real
SQLite file and a real PostgreSQL cluster (where the reads of one turn share one snapshot): each caller gets its own answer or its own typed error, reads run in call order
after every earlier write, a cancelled reader neither breaks nor leaks anything, a busy file
is DatabaseUnavailable, and a read after close is refused, not left waiting."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.coordinator.db import (
    Conn,
    Database,
    DatabaseUnavailable,
    open_database,
    open_sqlite,
    postgres_params,
)
from tests.unit.test_db_group_commit import _hold_worker, _insert

pytestmark = pytest.mark.batch


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Database]:
    db = open_sqlite(tmp_path / "coordinator.sqlite")
    yield db
    db.close()


def _value_of(name: str) -> Any:
    def run(c: Conn) -> int | None:
        row = c.execute("SELECT scanned FROM ledger_progress WHERE ledger = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    return run


async def test_queued_reads_go_in_one_hand_off_each_answered_with_its_own_row(
    opened: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = opened
    for n in range(30):
        await db.write(_insert(f"r{n:02}", n))
    order: list[int] = []
    handoffs = 0
    run_reads = db._run_reads

    def counted() -> None:
        nonlocal handoffs
        handoffs += 1
        run_reads()

    monkeypatch.setattr(db, "_run_reads", counted)

    def read(n: int) -> Any:
        def run(c: Conn) -> int | None:
            order.append(n)
            return _value_of(f"r{n:02}")(c)

        return run

    release = _hold_worker(db)
    tasks = [asyncio.ensure_future(db.read(read(n))) for n in range(30)]
    await asyncio.sleep(0.05)  # every read is queued behind the blocked worker
    release.set()
    assert await asyncio.gather(*tasks) == list(range(30))
    assert handoffs == 1 and order == list(range(30))


async def test_a_read_that_raises_gets_its_own_error_and_the_others_their_rows(
    opened: Database,
) -> None:
    db = opened
    await db.write(_insert("a", 7))

    def broken(c: Conn) -> None:
        c.execute("SELECT nope FROM ledger_progress")

    release = _hold_worker(db)
    tasks = [
        asyncio.ensure_future(db.read(_value_of("a"))),
        asyncio.ensure_future(db.read(broken)),
        asyncio.ensure_future(db.read(_value_of("missing"))),
    ]
    await asyncio.sleep(0.05)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == 7 and results[2] is None
    assert isinstance(results[1], sqlite3.OperationalError) and "nope" in str(results[1])


async def test_a_read_sees_every_write_called_before_it_and_none_after(
    opened: Database,
) -> None:
    db = opened
    release = _hold_worker(db)
    before = asyncio.ensure_future(db.write(_insert("x", 1)))
    await asyncio.sleep(0)  # the write is queued first
    read = asyncio.ensure_future(db.read(_value_of("x")))
    await asyncio.sleep(0)
    after = asyncio.ensure_future(db.write(_insert("y", 2)))
    await asyncio.sleep(0.05)
    release.set()
    assert await read == 1
    await asyncio.gather(before, after)
    assert await db.read(_value_of("y")) == 2


async def test_a_cancelled_reader_leaves_the_others_answered(
    opened: Database, caplog: pytest.LogCaptureFixture
) -> None:
    db = opened
    await db.write(_insert("c", 3))
    release = _hold_worker(db)
    kept = asyncio.ensure_future(db.read(_value_of("c")))
    dropped = asyncio.ensure_future(db.read(_value_of("c")))
    await asyncio.sleep(0.05)
    dropped.cancel()
    await asyncio.sleep(0.01)
    release.set()
    assert await kept == 3
    with pytest.raises(asyncio.CancelledError):
        await dropped
    await db.read(_value_of("c"))  # the dropped answer has been delivered and ignored
    assert "exception was never retrieved" not in caplog.text
    assert "InvalidStateError" not in caplog.text  # the dropped answer was not forced on it


async def test_a_busy_file_reaches_a_reader_as_unavailable(tmp_path: Path) -> None:
    """A read function the file's write lock blocks beyond busy_timeout gets
    DatabaseUnavailable (the typed, retryable error), as on the one-read path before; the
    next read is served."""
    path = tmp_path / "coordinator.sqlite"
    db = open_sqlite(path)
    try:
        db.run_sync(lambda c: c.execute("PRAGMA busy_timeout=50"))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(DatabaseUnavailable):
                await db.read(lambda c: c.execute("BEGIN IMMEDIATE"))
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await db.read(_value_of("none")) is None
    finally:
        db.close()


async def test_a_read_after_close_is_refused_not_left_waiting(tmp_path: Path) -> None:
    db = open_sqlite(tmp_path / "coordinator.sqlite")
    db.close()
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(db.read(_value_of("late")), 5)


# ---- PostgreSQL (issue 14): the reads of one turn share one snapshot ------------------------
def _now() -> Any:
    """A read answering its transaction's start time (the same for every statement of one
    transaction) and a row of ``ledger_progress``."""

    def run(c: Conn) -> tuple[Any, int | None]:
        (started,) = c.execute("SELECT transaction_timestamp()").fetchone()
        row = c.execute("SELECT scanned FROM ledger_progress WHERE ledger = 'x'").fetchone()
        return started, None if row is None else int(row[0])

    return run


async def _turn(db: Database, *fns: Any) -> list[Any]:
    """Hand ``fns`` to the worker as reads in one turn (queued while it is busy)."""
    release = _hold_worker(db)
    tasks = [asyncio.ensure_future(db.read(fn)) for fn in fns]
    await asyncio.sleep(0.05)
    release.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def pg_db(fresh_pg_url: str) -> Iterator[tuple[Database, str]]:
    db = open_database(fresh_pg_url)
    yield db, fresh_pg_url
    db.close()


@pytest.mark.postgres
async def test_postgres_reads_of_one_turn_share_one_snapshot_that_sees_earlier_writes(
    pg_db: tuple[Database, str],
) -> None:
    """One BEGIN for the turn (every read answers the same transaction start), taken after
    every write called before the reads; the next turn is a new snapshot."""
    db, _ = pg_db
    await db.write(_insert("x", 7))
    first = await _turn(db, *(_now() for _ in range(5)))
    assert len({started for started, _ in first}) == 1, "one snapshot for the turn"
    assert {value for _, value in first} == {7}
    await db.write(lambda c: c.execute("UPDATE ledger_progress SET scanned = 8"))
    second = await _turn(db, _now(), _now())
    assert {value for _, value in second} == {8}, "a write before the turn is seen"
    assert second[0][0] > first[0][0], "a new snapshot"


@pytest.mark.postgres
async def test_postgres_a_read_that_raises_ends_the_snapshot_and_the_next_begins_one(
    pg_db: tuple[Database, str],
) -> None:
    """A failing statement aborts PostgreSQL's transaction: that read gets its own error,
    the reads after it in the turn run in a new snapshot and get their rows."""
    import psycopg

    db, _ = pg_db
    await db.write(_insert("x", 3))

    def divides_by_zero(c: Conn) -> None:
        c.execute("SELECT 1 / 0")

    got = await _turn(db, _now(), divides_by_zero, _now(), _now())
    assert isinstance(got[1], psycopg.errors.DivisionByZero)
    assert [g[1] for g in (got[0], got[2], got[3])] == [3, 3, 3]
    assert got[2][0] == got[3][0] > got[0][0], "a new snapshot after the error"


@pytest.mark.postgres
async def test_postgres_a_lost_connection_fails_one_read_and_the_next_reconnects(
    pg_db: tuple[Database, str],
) -> None:
    import psycopg

    db, url = pg_db
    await db.write(_insert("x", 5))
    pid = db.run_sync(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
    with psycopg.connect(**postgres_params(url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    got = await _turn(db, _now(), _now(), _now())
    assert isinstance(got[0], DatabaseUnavailable), got
    assert [g[1] for g in got[1:]] == [5, 5]


@pytest.mark.postgres
async def test_postgres_a_statement_s_rows_stay_readable_after_the_next_statement(
    pg_db: tuple[Database, str],
) -> None:
    """Every statement runs on the connection's one cursor; its rows are taken when it runs,
    so a result fetched after later statements still has its own rows (and a statement
    without rows has none)."""
    db, _ = pg_db
    await db.write(_insert("x", 1))
    await db.write(_insert("y", 2))

    def run(c: Conn) -> tuple[Any, ...]:
        both = c.execute("SELECT ledger, scanned FROM ledger_progress ORDER BY ledger")
        one = c.execute("SELECT scanned FROM ledger_progress WHERE ledger = 'y'")
        none = c.execute("SELECT scanned FROM ledger_progress WHERE ledger = 'z'")
        first = both.fetchone()
        return first, both.fetchall(), both.fetchone(), one.fetchall(), none.fetchone()

    assert await db.read(run) == (("x", 1), [("y", 2)], None, [(2,)], None)
    written = await db.write(lambda c: c.execute("UPDATE ledger_progress SET scanned = 5"))
    assert (written.rowcount, written.fetchone(), written.fetchall()) == (2, None, [])
