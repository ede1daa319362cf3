"""Leader lease and fencing token for active/passive coordinators (ADR 0017): the lease, the
fencing check wired into the stores' own database, and the keeper's election loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.coordinator.db import Conn, Database, open_database
from bridge.coordinator.lease import Fenced, Lease
from bridge.domain.errors import InvalidInput, Unavailable

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


async def test_a_release_frees_a_term_whose_answer_this_process_never_saw(
    open_db: Callable[[], Database],
) -> None:
    """Review helper-124: elect() cancelled in the loop iteration in which acquire's write
    answered leaves the row held by this process under a token it never recorded; a release
    matched on the token freed nothing and a standby waited out the whole ttl."""
    db_a, db_b = open_db(), open_db()
    a, b = Lease(db_a, "coord-a", ttl=30), Lease(db_b, "coord-b", ttl=30)
    try:
        assert await a.acquire() == 1
        a.token = 0  # the answer of that acquire was lost to a cancellation
        await a.release()
        assert await b.acquire() == 2, "freed at once, not after the 30 s ttl"
        await a.release()  # another process's term is never released by this one
        assert await a.acquire() is None
    finally:
        db_a.close()
        db_b.close()


@pytest.mark.postgres
async def test_a_takeover_waits_for_the_old_leaders_write_in_flight(fresh_pg_url: str) -> None:
    """PostgreSQL: the old leader's fenced write holds the lease row FOR KEY SHARE, so the
    new term starts only after it ends; no write of the old term lands after the takeover."""
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
        # The takeover's FOR UPDATE meets the write's FOR KEY SHARE: not acquired (bounded
        # wait, retried at the next poll), never a new term while the old write runs.
        assert await b.acquire() is None, "no takeover while the old term's write runs"
        assert not write.done()
        await write
        assert await b.acquire() == 2
        with pytest.raises(Fenced):
            await a.fenced_write(mark("a-after"))
        assert marks(db_a) == ["a-slow"]
    finally:
        db_a.close()
        db_b.close()


@pytest.mark.postgres
async def test_a_term_frozen_holding_the_lease_row_is_ended_by_the_takeover(
    fresh_pg_url: str,
) -> None:
    """PostgreSQL cannot time out every session: one frozen mid-message, or while the server
    writes it a large answer, held the lease row's FOR KEY SHARE until its process died
    (review helper-94 of d8022c2). Once the term has been expired for longer than ``ttl``
    the takeover ends that term's process's sessions, and only those, then takes over; before
    that it waits, as for any write in flight."""
    import psycopg

    from bridge.coordinator.db import coordinator_session_name

    a_id, b_id = "a" * 16, "b" * 16
    db_a = open_database(fresh_pg_url, session_name=coordinator_session_name(a_id))
    db_b = open_database(fresh_pg_url, session_name=coordinator_session_name(b_id))
    a = Lease(db_a, "coord-a", ttl=0.4, instance=a_id)
    b = Lease(db_b, "coord-b", ttl=0.4, instance=b_id)

    def session(name: str) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(fresh_pg_url, application_name=name, autocommit=True)

    bystander = session("kstb-coordinator/" + "c" * 16)  # a third process: never ended
    frozen = session(coordinator_session_name(a_id))
    # Review helper-95: a session of ANOTHER role carrying a's name (anyone with a login
    # can read the names) must neither be ended nor make the ending fail.
    admin = session("test-admin")
    admin.execute("DROP ROLE IF EXISTS kstb_outsider")
    admin.execute("CREATE ROLE kstb_outsider LOGIN")
    outsider = psycopg.connect(
        fresh_pg_url, user="kstb_outsider", application_name=coordinator_session_name(a_id),
        autocommit=True,
    )  # fmt: skip
    try:
        assert await a.acquire() == 1
        # A session of a's process the server will not time out (timeouts off), holding the
        # row as a fenced write does.
        frozen.execute("SET statement_timeout = 0")
        frozen.execute("SET idle_in_transaction_session_timeout = 0")
        frozen.execute("BEGIN")
        frozen.execute("SELECT 1 FROM coordinator_lease WHERE id = 1 FOR KEY SHARE")
        await asyncio.sleep(0.5)  # a's term expired 0.1 s ago: within ttl, nothing ended
        assert await b.acquire() is None
        assert await b.end_stale_term() == 0
        frozen.execute("SELECT 1")  # still alive
        await asyncio.sleep(0.5)  # now expired for longer than ttl
        assert await b.acquire() is None  # met the lock, ended a's sessions
        for _ in range(20):
            got = await b.acquire()
            if got is not None:
                break
            await asyncio.sleep(0.05)
        assert got == 2
        with pytest.raises(psycopg.OperationalError):
            frozen.execute("SELECT 1")
        bystander.execute("SELECT 1")  # another process's session is untouched
        outsider.execute("SELECT 1")  # another role's session with a's name: untouched
        assert await b.end_stale_term() == 0  # b's own term: nothing to end
        with pytest.raises((Fenced, Unavailable)):  # a's store session was ended too
            await a.fenced_write(mark("a-late"))
        with pytest.raises(Fenced):  # reconnected: refused by the token
            await a.fenced_write(mark("a-late"))
        assert marks(db_b) == []
    finally:
        frozen.close()
        bystander.close()
        outsider.close()
        admin.execute("DROP ROLE IF EXISTS kstb_outsider")
        admin.close()
        db_a.close()
        db_b.close()


# ---- wired fencing (ADR 0017): the stores' own database refuses a deposed leader's writes


@pytest.mark.postgres
async def test_a_deposed_leaders_store_write_is_refused_by_the_database(
    fresh_pg_url: str,
) -> None:
    """Two coordinators, each with its stores' connection fenced by its own lease (a second
    connection, as ``bridge-coordinator`` runs it). After b takes over, a's next store
    write, any store, is refused inside its transaction with Fenced (NOT_LEADER) and
    nothing of it lands; b's writes go through."""
    from bridge.coordinator.store import SqlTransferStore
    from bridge.domain.errors import BridgeReason

    stores_a, lease_a_db = open_database(fresh_pg_url), open_database(fresh_pg_url)
    stores_b, lease_b_db = open_database(fresh_pg_url), open_database(fresh_pg_url)
    a = Lease(lease_a_db, "coord-a", ttl=0.4, address="10.0.0.1:50051")
    b = Lease(lease_b_db, "coord-b", ttl=0.4, address="10.0.0.2:50051")
    store_a, store_b = SqlTransferStore(stores_a), SqlTransferStore(stores_b)
    try:
        assert await a.acquire() == 1
        stores_a.set_fence(a.check)
        await store_a.record_events("evm-a", [], 5)
        assert await b.acquire() is None and b.leader_address == "10.0.0.1:50051"
        await asyncio.sleep(0.6)  # a hangs past its term
        assert await b.acquire() == 2
        stores_b.set_fence(b.check)
        with pytest.raises(Fenced) as exc:
            await store_a.record_events("evm-a", [], 9)  # a wakes up: refused
        assert exc.value.kind is BridgeReason.NOT_LEADER
        assert (exc.value.token, exc.value.current_token) == (1, 2) and a.fenced
        assert await store_a.scanned_height("evm-a") == 5, "nothing of the refused write"
        await store_b.record_events("evm-a", [], 7)
        assert await store_a.scanned_height("evm-a") == 7
        assert not b.fenced
    finally:
        store_a.close()
        store_b.close()
        for db in (lease_a_db, lease_b_db):
            db.close()


async def test_the_keeper_steps_down_when_its_renewals_stop(
    open_db: Callable[[], Database],
) -> None:
    """LeaseKeeper: elected, then deposed (another holder took the expired term) -> TAKEN;
    a fenced write -> FENCED; each transition reported to the metrics hook."""
    from bridge.coordinator.lease import LeaderLost, LeaseKeeper, LeaseTiming

    db_a, db_b = open_db(), open_db()
    seen: list[tuple[bool, int]] = []
    timing = LeaseTiming(ttl=0.6, renew_interval=0.1)
    keeper = LeaseKeeper(Lease(db_a, "coord-a", 0.6), timing, lambda *x: seen.append(x))
    other = Lease(db_b, "coord-b", 0.6)
    stop = asyncio.Event()
    try:
        assert await keeper.elect(stop) == 1 and keeper.leading
        hold = asyncio.create_task(keeper.hold(stop))
        await asyncio.sleep(0.3)
        assert not hold.done(), "renewals keep the term"
        assert await other.acquire() is None
        keeper.lease.fenced = True  # as Lease.check sets it when a write is refused
        assert await asyncio.wait_for(hold, 2) is LeaderLost.FENCED
        assert not keeper.leading and seen == [(True, 1), (False, 1)]
        with pytest.raises(InvalidInput):
            LeaseTiming(ttl=1.0, renew_interval=0.5)  # renewals too sparse for the term
    finally:
        db_a.close()
        db_b.close()


async def test_a_cancelled_keeper_steps_down(open_db: Callable[[], Database]) -> None:
    """Review helper-124: hold() cancelled (not stopped through its event) still steps down:
    ``leading`` False, the metrics hook told, ``holds_now`` False; the term is not released
    (the caller decides), so another process still cannot take it before it expires."""
    from bridge.coordinator.lease import LeaseKeeper, LeaseTiming

    db_a, db_b = open_db(), open_db()
    seen: list[tuple[bool, int]] = []
    timing = LeaseTiming(ttl=30, renew_interval=0.05)
    keeper = LeaseKeeper(Lease(db_a, "coord-a", 30), timing, lambda *x: seen.append(x))
    stop = asyncio.Event()
    try:
        assert await keeper.elect(stop) == 1
        hold = asyncio.create_task(keeper.hold(stop))
        await asyncio.sleep(0.2)  # a few renewals, and cancels landing in either wait
        hold.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hold
        assert not keeper.leading and not keeper.holds_now()
        assert seen == [(True, 1), (False, 1)]
        assert await Lease(db_b, "coord-b", 30).acquire() is None, "still held, not released"
    finally:
        db_a.close()
        db_b.close()


async def test_holds_now_only_within_hold_for_of_the_last_renewal(
    open_db: Callable[[], Database],
) -> None:
    """``LeaseKeeper.holds_now`` (what may act on state learnt while leading, e.g. the halt
    book's kept orders): False before election, True while renewals keep the term, False
    as soon as ``hold_for`` has passed since the last renewal began, even while the keeper
    has not yet noticed (a process stalled past its term), and False once it stepped down."""
    import time

    from bridge.coordinator.lease import LeaseKeeper, LeaseTiming

    db = open_db()
    timing = LeaseTiming(ttl=1.5, renew_interval=0.1)  # hold_for 1.2 s
    keeper = LeaseKeeper(Lease(db, "coord-a", 1.5), timing)
    stop = asyncio.Event()
    try:
        assert not keeper.holds_now(), "not elected yet"
        assert await keeper.elect(stop) == 1
        assert keeper.holds_now()
        time.sleep(timing.hold_for + 0.05)  # noqa: ASYNC251 - the loop stalls, as a stopped process
        assert keeper.leading, "the keeper has not noticed yet"
        assert not keeper.holds_now(), "but the window has passed"
        hold = asyncio.create_task(keeper.hold(stop))
        await asyncio.sleep(0.25)  # hold() renews (the term is still ours: no one took it)
        assert keeper.holds_now(), "a successful renewal opens the window again"
        stop.set()
        await asyncio.wait_for(hold, 2)
        assert not keeper.holds_now(), "stepped down (clean stop)"
    finally:
        db.close()
