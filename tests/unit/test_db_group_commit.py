"""The coordinator's writes are committed in groups (issue 14), on a real SQLite file and a
real PostgreSQL cluster.

Each test checks what a transaction per write guaranteed still holds when writes share a
group: a write's own exception rolls back that write alone, a failure of the group (the
fence, a busy file) reaches every write of it and applies none, a cancelled write that had
not started never runs, a later read sees every earlier write, and each caller returns only
after the COMMIT that made its write durable.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.coordinator.db import (
    PG_GROUP_MAX_WRITES,
    Conn,
    Database,
    DatabaseUnavailable,
    open_database,
    open_sqlite,
    postgres_params,
)

pytestmark = pytest.mark.batch


def _insert(name: str, value: int = 1) -> Any:
    def run(c: Conn) -> str:
        c.execute("INSERT INTO ledger_progress VALUES (?, ?)", (name, value))
        return name

    return run


def _names(path: Path) -> list[str]:
    """The rows as another connection reads them from the file (what is durable)."""
    other = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in other.execute("SELECT ledger FROM ledger_progress"))
    finally:
        other.close()


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[tuple[Database, Path]]:
    """A coordinator store on a real SQLite file, and its path; closed after the test."""
    path = tmp_path / "coordinator.sqlite"
    db = open_sqlite(path)
    yield db, path
    db.close()


def _hold_worker(db: Database) -> threading.Event:
    """Occupy the worker thread until the returned event is set (writes queue up meanwhile)."""
    release = threading.Event()
    started = threading.Event()

    def block() -> None:
        started.set()
        release.wait(10)

    db._pool.submit(block)
    assert started.wait(5)
    return release


async def _queue_then_release(db: Database, *fns: Any) -> list[Any]:
    """Queue ``fns`` as writes while the worker is busy, so they form one group."""
    release = _hold_worker(db)
    tasks = [asyncio.ensure_future(db.write(fn)) for fn in fns]
    await asyncio.sleep(0.05)  # every write is queued behind the blocked worker
    release.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_queued_writes_share_one_commit_and_are_durable_when_they_return(
    opened: tuple[Database, Path],
) -> None:
    db, path = opened
    before = db.commits
    results = await _queue_then_release(db, *(_insert(f"l{n:03}") for n in range(50)))
    assert results == [f"l{n:03}" for n in range(50)]
    assert db.commits == before + 1
    assert _names(path) == [f"l{n:03}" for n in range(50)]


async def test_a_groups_callers_are_answered_in_one_hand_off_to_their_loop(
    opened: tuple[Database, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14: the worker thread wakes the callers' event loop once per group (one
    ``call_soon_threadsafe`` for all of its writes, results and errors alike), not once
    per write; each caller still gets its own answer."""
    db, _ = opened
    loop = asyncio.get_running_loop()
    handoffs: list[int] = []
    original = loop.call_soon_threadsafe

    def counted(callback: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread() and not str(
            getattr(callback, "__module__", "")
        ).startswith("asyncio"):  # the database thread's answers (not to_thread's)
            handoffs.append(len(args[0]) if args and isinstance(args[0], list) else 1)
        return original(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counted)

    def refused(c: Conn) -> None:
        raise ValueError("refused")

    results = await _queue_then_release(db, *(_insert(f"h{n}") for n in range(20)), refused)
    assert results[:20] == [f"h{n}" for n in range(20)]
    assert isinstance(results[20], ValueError)
    assert handoffs == [21]


async def test_an_error_a_future_cannot_carry_leaves_no_caller_of_its_group_waiting(
    opened: tuple[Database, Path],
) -> None:
    """A write raising StopIteration (which an asyncio future refuses to carry) gets it as a
    RuntimeError, and the writes answered in the same hand-off after it get theirs."""
    db, path = opened

    def stops(c: Conn) -> None:
        raise StopIteration("no more")

    results = await asyncio.wait_for(
        _queue_then_release(db, _insert("s1"), stops, _insert("s2"), _insert("s3")), 5
    )
    assert results[0] == "s1" and results[2:] == ["s2", "s3"]
    assert isinstance(results[1], RuntimeError) and "StopIteration" in str(results[1])
    assert _names(path) == ["s1", "s2", "s3"]


async def test_a_write_that_raises_rolls_back_alone_and_gets_its_own_error(
    opened: tuple[Database, Path],
) -> None:
    db, path = opened

    class Refused(Exception):
        pass

    def half_then_raise(c: Conn) -> None:
        c.execute("INSERT INTO ledger_progress VALUES ('half', 1)")
        raise Refused("no")

    results = await _queue_then_release(
        db, _insert("a"), half_then_raise, _insert("b"), _insert("a"), _insert("c")
    )
    assert results[0] == "a" and results[2] == "b" and results[4] == "c"
    assert isinstance(results[1], Refused)
    # A constraint violation is that write's own error too (the duplicate "a").
    assert isinstance(results[3], sqlite3.IntegrityError)
    assert _names(path) == ["a", "b", "c"]


async def test_a_fence_refusal_reaches_every_write_of_the_group_and_applies_none(
    opened: tuple[Database, Path],
) -> None:
    db, path = opened

    class Fenced(Exception):
        pass

    def fence(c: Conn) -> None:
        raise Fenced("not the leader")

    db.set_fence(fence)
    results = await _queue_then_release(db, *(_insert(f"f{n}") for n in range(5)))
    assert all(isinstance(r, Fenced) for r in results), results
    single = await asyncio.gather(db.write(_insert("alone")), return_exceptions=True)
    assert isinstance(single[0], Fenced)
    db.set_fence(None)
    assert _names(path) == []
    assert await db.write(_insert("after")) == "after"


async def test_a_busy_file_makes_the_whole_group_unavailable_and_applies_none(
    opened: tuple[Database, Path],
) -> None:
    db, path = opened
    db.run_sync(lambda c: c.execute("PRAGMA busy_timeout=50"))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    results = await _queue_then_release(db, *(_insert(f"b{n}") for n in range(4)))
    assert all(isinstance(r, DatabaseUnavailable) for r in results), results
    other.execute("ROLLBACK")
    other.close()
    assert _names(path) == []
    results = await _queue_then_release(db, *(_insert(f"b{n}") for n in range(4)))
    assert results == ["b0", "b1", "b2", "b3"]


async def test_a_write_cancelled_before_it_started_never_runs(
    opened: tuple[Database, Path],
) -> None:
    db, path = opened
    release = _hold_worker(db)
    keep = asyncio.ensure_future(db.write(_insert("kept")))
    dropped = asyncio.ensure_future(db.write(_insert("dropped")))
    await asyncio.sleep(0.05)
    dropped.cancel()
    await asyncio.sleep(0.01)  # the task takes its cancellation (its future's too)
    release.set()
    assert await keep == "kept"
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert _names(path) == ["kept"]


async def test_a_read_queued_after_writes_sees_every_one_of_them(
    opened: tuple[Database, Path],
) -> None:
    db, _ = opened
    release = _hold_worker(db)
    writes = [asyncio.ensure_future(db.write(_insert(f"w{n:02}"))) for n in range(20)]
    await asyncio.sleep(0)  # the writes are queued before the read below
    read = asyncio.ensure_future(
        db.read(lambda c: c.execute("SELECT COUNT(*) FROM ledger_progress").fetchone()[0])
    )
    await asyncio.sleep(0.05)
    release.set()
    assert await read == 20
    await asyncio.gather(*writes)


async def test_concurrent_writers_each_get_their_own_result_in_every_grouping(
    opened: tuple[Database, Path],
) -> None:
    """Writers that do not wait for each other: every write applied once, each caller
    answered with its own value, in however many groups the timing gives."""
    db, path = opened

    async def writer(k: int) -> list[str]:
        return [await db.write(_insert(f"k{k}-{n}")) for n in range(25)]

    before = db.commits
    results = await asyncio.gather(*(writer(k) for k in range(8)))
    assert results == [[f"k{k}-{n}" for n in range(25)] for k in range(8)]
    assert len(_names(path)) == 200
    assert db.commits - before < 200  # some writes shared a COMMIT


async def test_a_write_after_close_is_refused_not_left_waiting(tmp_path: Path) -> None:
    db = open_sqlite(tmp_path / "coordinator.sqlite")
    db.close()
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(db.write(_insert("late")), 5)


async def test_a_write_filling_the_disk_fails_its_group_with_the_real_error(
    opened: tuple[Database, Path],
) -> None:
    """Review M1: SQLite rolls the whole transaction back on a full disk; every write of the
    group then gets that error (not a missing savepoint) and none is applied."""
    db, path = opened

    def big(c: Conn) -> None:
        c.execute("INSERT INTO ledger_progress VALUES (?, ?)", ("x" * 400_000, 1))

    pages = db.run_sync(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    db.run_sync(lambda c: c.execute(f"PRAGMA max_page_count={pages + 2}"))
    results = await _queue_then_release(db, _insert("p"), big, _insert("q"))
    assert all(isinstance(r, sqlite3.OperationalError) for r in results), results
    assert all("full" in str(r) for r in results), results
    assert _names(path) == []
    db.run_sync(lambda c: c.execute("PRAGMA max_page_count=1073741823"))
    assert await db.write(_insert("after")) == "after"


async def test_a_caller_cancelled_while_earlier_writes_of_its_group_run_is_never_applied(
    opened: tuple[Database, Path],
) -> None:
    """Review L1: the write is marked started only when its own turn in the group comes."""
    db, path = opened
    slow_started = threading.Event()
    go_on = threading.Event()

    def slow(c: Conn) -> str:
        slow_started.set()
        go_on.wait(5)
        c.execute("INSERT INTO ledger_progress VALUES ('slow', 1)")
        return "slow"

    release = _hold_worker(db)
    first = asyncio.ensure_future(db.write(slow))
    victim = asyncio.ensure_future(db.write(_insert("victim")))
    await asyncio.sleep(0.05)
    release.set()
    assert await asyncio.to_thread(slow_started.wait, 5)
    victim.cancel()
    await asyncio.sleep(0.01)
    go_on.set()
    assert await first == "slow"
    with pytest.raises(asyncio.CancelledError):
        await victim
    assert _names(path) == ["slow"]


async def test_a_flush_that_cannot_be_queued_leaves_no_write_waiting(
    opened: tuple[Database, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review M2: any error queueing the flush fails the writes behind it; later writes
    still run."""
    db, path = opened
    real_submit = db._pool.submit
    calls = {"n": 0}

    def failing_once(fn: Any, *args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise MemoryError("no memory for the flush")
        return real_submit(fn, *args)

    monkeypatch.setattr(db._pool, "submit", failing_once)
    with pytest.raises(MemoryError):
        await asyncio.wait_for(db.write(_insert("lost")), 5)
    assert await asyncio.wait_for(db.write(_insert("next")), 5) == "next"
    assert _names(path) == ["next"]


# ---- PostgreSQL (issue 14): the same groups, at most PG_GROUP_MAX_WRITES each -----------------
@pytest.fixture
def pg_opened(fresh_pg_url: str) -> Iterator[tuple[Database, str]]:
    """A coordinator store on a real PostgreSQL schema, and its URL; closed after the test."""
    db = open_database(fresh_pg_url)
    yield db, fresh_pg_url
    db.close()


def _pg_names(url: str) -> list[str]:
    """The rows as another connection reads them (what is committed)."""
    import psycopg

    with psycopg.connect(**postgres_params(url)) as other:
        return sorted(r[0] for r in other.execute("SELECT ledger FROM ledger_progress"))


@pytest.mark.postgres
async def test_postgres_writes_share_one_commit_per_bounded_group(
    pg_opened: tuple[Database, str],
) -> None:
    """Queued writes commit together, at most PG_GROUP_MAX_WRITES a transaction (the
    server's cache of subtransaction ids), each durable when its caller returns."""
    db, url = pg_opened
    before = db.commits
    n = PG_GROUP_MAX_WRITES + 6
    results = await _queue_then_release(db, *(_insert(f"l{i:03}") for i in range(n)))
    assert results == [f"l{i:03}" for i in range(n)]
    assert db.commits == before + 2, "one commit per group of at most 64"
    assert _pg_names(url) == [f"l{i:03}" for i in range(n)]


@pytest.mark.postgres
async def test_postgres_a_write_that_raises_rolls_back_alone(
    pg_opened: tuple[Database, str],
) -> None:
    """Its own exception and a constraint violation each undo that write alone (its
    savepoint); the group's other writes commit."""
    import psycopg

    db, url = pg_opened

    class Refused(Exception):
        pass

    def half_then_raise(c: Conn) -> None:
        c.execute("INSERT INTO ledger_progress VALUES ('half', 1)")
        raise Refused("no")

    results = await _queue_then_release(
        db, _insert("a"), half_then_raise, _insert("b"), _insert("a"), _insert("c")
    )
    assert results[0] == "a" and results[2] == "b" and results[4] == "c"
    assert isinstance(results[1], Refused)
    assert isinstance(results[3], psycopg.errors.UniqueViolation)
    assert _pg_names(url) == ["a", "b", "c"]


@pytest.mark.postgres
async def test_postgres_a_write_the_server_cancels_is_unavailable_alone(
    pg_opened: tuple[Database, str],
) -> None:
    """A statement timeout in one write (an OperationalError the transaction survives once
    rolled back to the write's savepoint) is that write's own DatabaseUnavailable, as with
    a transaction per write; the group's other writes commit."""
    db, url = pg_opened

    def times_out(c: Conn) -> None:
        c.execute("INSERT INTO ledger_progress VALUES ('half', 1)")
        c.execute("SET LOCAL statement_timeout = 10")
        c.execute("SELECT pg_sleep(1)")

    results = await _queue_then_release(db, _insert("a"), times_out, _insert("b"))
    assert results[0] == "a" and results[2] == "b"
    assert isinstance(results[1], DatabaseUnavailable), results
    assert _pg_names(url) == ["a", "b"]


@pytest.mark.postgres
async def test_postgres_a_fence_refusal_reaches_every_write_of_the_group(
    pg_opened: tuple[Database, str],
) -> None:
    db, url = pg_opened

    class Fenced(Exception):
        pass

    checks: list[int] = []

    def fence(c: Conn) -> None:
        checks.append(1)
        raise Fenced("not the leader")

    db.set_fence(fence)
    results = await _queue_then_release(db, *(_insert(f"f{n}") for n in range(5)))
    assert all(isinstance(r, Fenced) for r in results), results
    assert len(checks) == 1, "one check for the group"
    db.set_fence(None)
    assert _pg_names(url) == []
    assert await db.write(_insert("after")) == "after"


@pytest.mark.postgres
async def test_postgres_a_lost_connection_fails_the_group_and_the_next_one_reconnects(
    pg_opened: tuple[Database, str],
) -> None:
    """The server ends the session between groups: the next group fails as
    DatabaseUnavailable with nothing applied; the one after reconnects and commits."""
    import psycopg

    db, url = pg_opened
    pid = db.run_sync(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
    with psycopg.connect(**postgres_params(url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    results = await _queue_then_release(db, _insert("x"), _insert("y"))
    assert all(isinstance(r, DatabaseUnavailable) for r in results), results
    assert await _queue_then_release(db, _insert("x"), _insert("y")) == ["x", "y"]
    assert _pg_names(url) == ["x", "y"]
