"""The supply feed's positions are gap-free in commit order (ADR 0013, issue 13's trap).

A subscriber resumes "after N". With a database sequence, position N+1 can commit (and be
read) before N, and the resuming subscriber then never sees N. The store takes positions
from one counter row locked until commit, so that cannot happen. The first two tests pin
the mechanism deterministically (and show the plain sequence losing a record in the same
harness); the last one runs many concurrent writers against a repeatedly resuming
subscriber on both engines.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from bridge.coordinator.db import open_database
from bridge.coordinator.supply_store import SqliteSupplyStore, SqlSupplyStore
from bridge.domain.supply import Assessment
from tests.unit.test_supply_store import record

pytestmark = [pytest.mark.unit, pytest.mark.supply]

CLEAN = Assessment((), (), {})
SIG = b"\x5a" * 65


def signed(security: str, sequence: int):  # type: ignore[no-untyped-def]
    from bridge.domain.supply import SignedRecord

    return SignedRecord(record(sequence, {"a": 10}, security=security), (SIG,))


def hold_position_open(url: str, security: str) -> psycopg.Connection:  # type: ignore[type-arg]
    """A writer that took the next position and inserted its record, not yet committed."""
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("BEGIN")
    (pos,) = conn.execute(
        "UPDATE supply_feed_head SET last = last + 1 WHERE id = 1 RETURNING last"
    ).fetchone()  # type: ignore[misc]
    s = signed(security, 1)
    conn.execute(
        "INSERT INTO supply_records (feed_seq, security, sequence, digest, body, signatures,"
        " alerts, clean, held, hold_reason, at) VALUES (%s,%s,1,%s,%s,%s,'[]',1,0,'',0)",
        (pos, security, s.record.digest, s.record.canonical(), json.dumps([SIG.hex()])),
    )
    return conn


@pytest.mark.postgres
async def test_a_later_writer_waits_for_the_earlier_position(fresh_pg_url: str) -> None:
    subscriber = SqlSupplyStore(open_database(fresh_pg_url))
    writer = SqlSupplyStore(open_database(fresh_pg_url))
    slow = hold_position_open(fresh_pg_url, "SLOW00000001")
    try:
        later = asyncio.create_task(writer.append(signed("FAST00000001", 1), CLEAN, 1.0))
        await asyncio.sleep(0.5)
        assert not later.done(), "the second writer must wait for the first to commit"
        assert await subscriber.feed(0, 100) == [], "nothing visible out of commit order"
        slow.execute("COMMIT")
        got = await asyncio.wait_for(later, 10)
        assert got.feed_sequence == 2
        assert [a.feed_sequence for a in await subscriber.feed(0, 100)] == [1, 2]
    finally:
        slow.close()
        writer.close()
        subscriber.close()


@pytest.mark.postgres
async def test_a_rolled_back_position_is_reused_not_skipped(fresh_pg_url: str) -> None:
    store = SqlSupplyStore(open_database(fresh_pg_url))
    slow = hold_position_open(fresh_pg_url, "SLOW00000001")
    try:
        later = asyncio.create_task(store.append(signed("FAST00000001", 1), CLEAN, 1.0))
        await asyncio.sleep(0.3)
        slow.execute("ROLLBACK")
        assert (await asyncio.wait_for(later, 10)).feed_sequence == 1
    finally:
        slow.close()
        store.close()


@pytest.mark.postgres
def test_control_a_plain_sequence_loses_a_record(fresh_pg_url: str) -> None:
    """The trap itself, in the same harness: with nextval, N+1 commits first and a
    subscriber resuming after it never reads N. (Documents why the outbox exists.)"""
    a = psycopg.connect(fresh_pg_url, autocommit=True)
    b = psycopg.connect(fresh_pg_url, autocommit=True)
    try:
        a.execute("CREATE TABLE naive (pos BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)")
        a.execute("BEGIN")
        a.execute("INSERT INTO naive (body) VALUES ('first')")
        b.execute("INSERT INTO naive (body) VALUES ('second')")  # commits at once: pos 2
        seen = [int(r[0]) for r in b.execute("SELECT pos FROM naive WHERE pos > 0 ORDER BY pos")]
        assert seen == [2]
        a.execute("COMMIT")
        resumed = b.execute("SELECT pos FROM naive WHERE pos > %s ORDER BY pos", (seen[-1],))
        assert [int(r[0]) for r in resumed] == [], "position 1 is never delivered"
    finally:
        a.close()
        b.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], SqlSupplyStore]:
    """A new connection (its own store) on one shared database per call."""
    if request.param == "sqlite":
        return lambda: SqliteSupplyStore(tmp_path / "feed.sqlite")
    url = request.getfixturevalue("fresh_pg_url")
    return lambda: SqlSupplyStore(open_database(url))


async def test_concurrent_writers_and_a_resuming_subscriber(
    open_store: Callable[[], SqlSupplyStore],
) -> None:
    writers, per_writer = 6, 12
    stores = [open_store() for _ in range(writers)]
    subscriber = open_store()
    rng = random.Random(13)
    done = asyncio.Event()
    seen: list[int] = []
    records: list[tuple[str, int]] = []

    async def write(i: int) -> None:
        security = f"SEC{i:09d}"
        for n in range(1, per_writer + 1):
            await stores[i].append(signed(security, n), CLEAN, float(n))
            await asyncio.sleep(rng.random() * 0.003)

    async def subscribe() -> None:
        after = 0
        while True:
            finished = done.is_set()
            page = await subscriber.feed(after, rng.randint(1, 5))
            for a in page:
                seen.append(a.feed_sequence)
                records.append((a.signed.record.security, a.signed.record.sequence))
            if page:
                after = page[-1].feed_sequence  # resume after the last one read
            elif finished:
                return
            else:
                await asyncio.sleep(0)

    try:
        reader = asyncio.create_task(subscribe())
        await asyncio.gather(*(write(i) for i in range(writers)))
        done.set()
        await asyncio.wait_for(reader, 30)
    finally:
        for s in [*stores, subscriber]:
            s.close()
    total = writers * per_writer
    assert seen == list(range(1, total + 1)), "every position once, in order, none skipped"
    for i in range(writers):
        mine = [n for sec, n in records if sec == f"SEC{i:09d}"]
        assert mine == list(range(1, per_writer + 1))
