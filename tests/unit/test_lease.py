"""Leader lease and fencing token for active/passive coordinators (issue 13 item 2; the
mechanism only, not yet wired into the coordinator: ADR 0013 "Next")."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.coordinator.db import Conn, Database, open_database
from bridge.coordinator.lease import Fenced, Lease

pytestmark = [pytest.mark.unit, pytest.mark.ha]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Database]:
    """A new connection on one shared database per call (one per coordinator)."""
    if request.param == "sqlite":
        return lambda: open_database(tmp_path / "c.sqlite")
    url = request.getfixturevalue("fresh_pg_url")
    return lambda: open_database(url)


def mark(value: str) -> Callable[[Conn], None]:
    def run(c: Conn) -> None:
        c.execute("INSERT INTO ledger_progress VALUES (?, 1)", (value,))

    return run


def marks(db: Database) -> list[str]:
    rows = db.run_sync(lambda c: c.execute("SELECT ledger FROM ledger_progress").fetchall())
    return sorted(str(r[0]) for r in rows)


async def test_one_leader_and_a_deposed_leader_cannot_write(
    open_db: Callable[[], Database],
) -> None:
    db_a, db_b = open_db(), open_db()
    a, b = Lease(db_a, "coord-a", ttl=0.4), Lease(db_b, "coord-b", ttl=0.4)
    try:
        assert await a.acquire() == 1
        assert await b.acquire() is None, "the lease is held and not expired"
        await a.fenced_write(mark("a-1"))
        with pytest.raises(Fenced):
            await b.fenced_write(mark("b-never"))  # never granted: token 0
        assert await a.acquire() == 1, "renewal keeps the term"
        await asyncio.sleep(0.6)  # a hangs past its lease (SIGSTOP, partition)
        assert await b.acquire() == 2, "a new term, a larger token"
        await b.fenced_write(mark("b-2"))
        with pytest.raises(Fenced) as exc:
            await a.fenced_write(mark("a-late"))  # a wakes up: refused, nothing written
        assert (exc.value.token, exc.value.current_token) == (1, 2)
        assert marks(db_a) == ["a-1", "b-2"]
        assert await a.acquire() is None, "the deposed leader waits for b's lease to expire"
        await b.release()
        assert await a.acquire() == 3
        with pytest.raises(Fenced):
            await b.fenced_write(mark("b-after-release"))
        assert marks(db_a) == ["a-1", "b-2"]
    finally:
        db_a.close()
        db_b.close()


@pytest.mark.postgres
async def test_a_takeover_waits_for_the_old_leaders_write_in_flight(fresh_pg_url: str) -> None:
    """PostgreSQL: the old leader's fenced write holds the lease row FOR SHARE, so the new
    term starts only after it ends; no write of the old term lands after the takeover."""
    db_a, db_b = open_database(fresh_pg_url), open_database(fresh_pg_url)
    a, b = Lease(db_a, "coord-a", ttl=0.2), Lease(db_b, "coord-b", ttl=0.2)
    started = asyncio.Event()
    try:
        assert await a.acquire() == 1
        loop = asyncio.get_running_loop()

        def slow(c: Conn) -> None:
            loop.call_soon_threadsafe(started.set)
            c.execute("SELECT pg_sleep(0.8)")
            c.execute("INSERT INTO ledger_progress VALUES ('a-slow', 1)")

        write = asyncio.create_task(a.fenced_write(slow))
        await started.wait()
        await asyncio.sleep(0.3)  # a's lease has expired while its write runs
        takeover = asyncio.create_task(b.acquire())
        await asyncio.sleep(0.2)
        assert not takeover.done(), "the takeover waits for the in-flight fenced write"
        await write
        assert await takeover == 2
        with pytest.raises(Fenced):
            await a.fenced_write(mark("a-after"))
        assert marks(db_a) == ["a-slow"]
    finally:
        db_a.close()
        db_b.close()
