"""Negative tests of the HA attacker review (issue 13, review of the active/passive merge):
each fails on the merged code and passes with its fix (findings 1, 2, 4, 5, 8; ADR 0017)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.coordinator.db import (
    Conn,
    Database,
    DatabaseInUse,
    DatabaseUnavailable,
    open_database,
)
from bridge.coordinator.lease import Fenced, LeaderLost, Lease, LeaseKeeper, LeaseTiming

pytestmark = [pytest.mark.unit, pytest.mark.ha, pytest.mark.security]


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


def lease_row(db: Database) -> tuple[str, int]:
    row = db.run_sync(
        lambda c: c.execute("SELECT holder, token FROM coordinator_lease WHERE id = 1").fetchone()
    )
    return str(row[0]), int(row[1])


# ---- finding 1: a coordinator without [ha] never writes beside HA coordinators


@pytest.mark.postgres
async def test_a_coordinator_without_ha_and_ha_coordinators_exclude_each_other(
    fresh_pg_url: str,
) -> None:
    """The non-HA coordinator's exclusive advisory lock and the HA coordinators' shared one
    are the same lock: whichever runs first, the other is refused (DatabaseInUse, exit 4)
    with nothing written; several HA coordinators share it; an HA coordinator whose
    connection broke re-takes it on reconnect or is refused."""
    plain, ha1, ha2 = (open_database(fresh_pg_url) for _ in range(3))
    try:
        plain.claim_exclusive()
        with pytest.raises(DatabaseInUse, match=r"without \[ha\]"):
            ha1.claim_shared()
        assert lease_row(ha1) == ("", 0), "nothing of the lease touched"
        plain.close()

        # The server ends the closed session (and so its lock) a moment after the client
        # closed it: on a loaded host that moment failed a local run of the unit tier.
        for _ in range(100):
            try:
                ha1.claim_shared()
                break
            except DatabaseInUse:
                await asyncio.sleep(0.05)
        else:
            ha1.claim_shared()
        ha2.claim_shared()  # HA coordinators share the database
        plain = open_database(fresh_pg_url)
        with pytest.raises(DatabaseInUse, match="in use by another coordinator"):
            plain.claim_exclusive()
        ha2.close()

        # ha1's session dies; a non-HA coordinator takes the database meanwhile: ha1's
        # next call fails, the one after reconnects and is refused, nothing written.
        pid = ha1.run_sync(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
        plain.run_sync(lambda c: c.execute("SELECT pg_terminate_backend(?)", (pid,)))
        await asyncio.sleep(0.2)
        plain.claim_exclusive()
        with pytest.raises(DatabaseUnavailable):
            await ha1.write(mark("ha-1"))
        with pytest.raises(DatabaseInUse, match=r"without \[ha\]"):
            await ha1.write(mark("ha-1"))
        assert marks(plain) == []
    finally:
        for db in (plain, ha1, ha2):
            db.close()


# ---- finding 2: a renewal never waits for the leader's own store writes or a stuck poll


@pytest.mark.postgres
async def test_a_slow_fenced_store_write_never_delays_a_renewal(fresh_pg_url: str) -> None:
    """The leader's store write holds the lease row for 1.5 s (a slow statement, a lock
    wait): its renewal on the lease's own connection still completes at once, and a
    standby's poll neither waits nor takes over."""
    lease_db, stores, other_db = (open_database(fresh_pg_url) for _ in range(3))
    a = Lease(lease_db, "coord-a", ttl=5.0)
    b = Lease(other_db, "coord-b", ttl=5.0)
    try:
        assert await a.acquire() == 1
        stores.set_fence(a.check)
        loop = asyncio.get_running_loop()
        started = asyncio.Event()

        def slow(c: Conn) -> None:
            loop.call_soon_threadsafe(started.set)
            c.execute("SELECT pg_sleep(1.5)")
            c.execute("INSERT INTO ledger_progress VALUES ('slow', 1)")

        write = asyncio.create_task(stores.write(slow))
        await started.wait()
        await asyncio.sleep(0.1)
        t0 = loop.time()
        assert await asyncio.wait_for(a.acquire(), 1.0) == 1, "renewed while the write runs"
        assert await asyncio.wait_for(b.acquire(), 1.0) is None
        assert loop.time() - t0 < 1.0
        assert not write.done()
        await write
        assert marks(stores) == ["slow"] and lease_row(stores) == ("coord-a", 1)
    finally:
        for db in (lease_db, stores, other_db):
            db.close()


@pytest.mark.postgres
async def test_a_session_stuck_on_the_lease_row_blocks_no_poll_and_no_renewal_for_long(
    fresh_pg_url: str,
) -> None:
    """A session frozen while holding the lease row FOR UPDATE (a standby or a leader
    SIGSTOPped mid-transaction): a standby's poll reads without waiting, the leader's
    renewal gives up within its bound (retried by the keeper) instead of the session's
    10 s lock_timeout, and no term changes."""
    import psycopg

    from bridge.devnet.postgres import PostgresCluster  # noqa: F401 (fixture type)

    lease_db, other_db = open_database(fresh_pg_url), open_database(fresh_pg_url)
    a = Lease(lease_db, "coord-a", ttl=4.0)
    b = Lease(other_db, "coord-b", ttl=4.0)
    stuck = psycopg.connect(fresh_pg_url, autocommit=True)
    try:
        assert await a.acquire() == 1
        stuck.execute("BEGIN")
        stuck.execute("SELECT * FROM coordinator_lease WHERE id = 1 FOR UPDATE")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await asyncio.wait_for(b.acquire(), 3.0) is None
        assert b.leader == "coord-a"
        assert loop.time() - t0 < 0.5, "a poll of an unexpired lease takes no lock"
        t0 = loop.time()
        with pytest.raises(DatabaseUnavailable):
            await asyncio.wait_for(a.acquire(), 3.0)
        assert loop.time() - t0 < 2.0, "a renewal's lock wait is bounded (ttl / 4)"
        stuck.execute("ROLLBACK")
        assert await a.acquire() == 1 and lease_row(lease_db) == ("coord-a", 1)
    finally:
        stuck.close()
        lease_db.close()
        other_db.close()


@pytest.mark.postgres
async def test_a_leader_frozen_inside_a_store_transaction_holds_a_takeover_back_briefly(
    fresh_pg_url: str,
) -> None:
    """With ``write_timeout``, a fenced transaction left idle (the leader frozen between
    two statements) is ended by the server after that bound: the takeover then proceeds
    (not after the session's 60 s idle timeout) and nothing of the frozen write lands."""
    lease_db, stores, other_db = (open_database(fresh_pg_url) for _ in range(3))
    a = Lease(lease_db, "coord-a", ttl=0.6, write_timeout=0.5)
    b = Lease(other_db, "coord-b", ttl=0.6)
    try:
        assert await a.acquire() == 1
        stores.set_fence(a.check)
        loop = asyncio.get_running_loop()
        started = asyncio.Event()

        def frozen(c: Conn) -> None:
            loop.call_soon_threadsafe(started.set)
            time.sleep(2.0)  # idle in transaction, holding the lease row FOR KEY SHARE
            c.execute("INSERT INTO ledger_progress VALUES ('frozen', 1)")

        write = asyncio.create_task(stores.write(frozen))
        await started.wait()
        await asyncio.sleep(0.8)  # a's term expired; its session is ended after 0.5 s idle
        got = None
        for _ in range(10):
            got = await b.acquire()
            if got is not None:
                break
            await asyncio.sleep(0.1)
        assert got == 2, "the takeover proceeds while the frozen leader is still asleep"
        assert not write.done()
        with pytest.raises(DatabaseUnavailable):
            await write
        assert marks(other_db) == []
    finally:
        for db in (lease_db, stores, other_db):
            db.close()


# ---- finding 4: two processes configured with one name never steal each other's term


async def test_two_processes_with_one_name_do_not_steal_the_lease(
    open_db: Callable[[], Database],
) -> None:
    db1, db2 = open_db(), open_db()
    first = Lease(db1, "coord-a", ttl=0.5, address="10.0.0.1:50051")
    clone = Lease(db2, "coord-a", ttl=0.5, address="10.0.0.9:50051")
    try:
        assert await first.acquire() == 1
        assert await clone.acquire() is None, "same name, another process: it waits"
        assert clone.leader_address == "10.0.0.1:50051", "the running one's address stays"
        assert await first.acquire() == 1, "the first one's renewals still work"
        with pytest.raises(Fenced):
            await clone.fenced_write(mark("clone"))
        await first.fenced_write(mark("first"))
        await asyncio.sleep(0.7)  # the first process hangs past its term
        assert await clone.acquire() == 2
        with pytest.raises(Fenced):
            await first.fenced_write(mark("first-late"))
        assert await first.acquire() is None, "nor does the old one steal it back"
        assert marks(db1) == ["first"]
    finally:
        db1.close()
        db2.close()


# ---- finding 5: a deposed or stopping leader never overlaps a standby's takeover


async def test_the_keeper_stops_within_hold_for_and_releases_only_when_told(
    tmp_path: Path,
) -> None:
    """Renewals fail (the database is cut): hold() returns EXPIRED by ``hold_for`` after
    the last renewal, not up to a renew interval later. A clean stop (STOPPED) does not
    release the lease by itself: the caller stops the drivers first, then releases."""
    db_a, db_b = open_database(tmp_path / "c.sqlite"), open_database(tmp_path / "c.sqlite")
    timing = LeaseTiming(ttl=3.0, renew_interval=1.0)  # hold_for 2.4 s
    keeper = LeaseKeeper(Lease(db_a, "coord-a", 3.0), timing)
    other = Lease(db_b, "coord-b", 3.0)
    stop = asyncio.Event()
    try:
        assert await keeper.elect(stop) == 1
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def cut() -> int | None:
            raise DatabaseUnavailable("database cut")

        keeper.lease.acquire = cut  # type: ignore[method-assign]
        assert await asyncio.wait_for(keeper.hold(stop), 5) is LeaderLost.EXPIRED
        assert loop.time() - t0 < timing.hold_for + 0.3

        keeper = LeaseKeeper(Lease(db_a, "coord-a2", 3.0), timing)
        await asyncio.sleep(0.7)  # coord-a's term expires
        assert await keeper.elect(stop) == 2
        hold = asyncio.create_task(keeper.hold(stop))
        await asyncio.sleep(0.1)
        stop.set()
        assert await hold is LeaderLost.STOPPED
        assert await other.acquire() is None, "still held while the drivers stop"
        await keeper.release()
        assert await other.acquire() == 3
    finally:
        db_a.close()
        db_b.close()


# ---- finding 8: a lock held for life is never opened (and closed) a second time


def test_a_store_opened_under_a_state_lock_opens_no_second_lock_descriptor(
    tmp_path: Path,
) -> None:
    """Where flock is emulated with POSIX locks (Linux NFS), closing ANY descriptor of
    the lock file drops the lock: a store opened under the process's life-long state lock
    must not open that lock file again, so closing it cannot release the lock (the state
    lock is its own file, ``<store>.daemon.lock``; the store's connections share
    ``<store>.lock``)."""
    from bridge.standby import StateLock
    from bridge.storage.sqlite import daemon_lock_path, open_durable

    path = tmp_path / "votes.sqlite"
    lock = StateLock(path)
    assert lock.try_acquire()

    def descriptors() -> int:
        target = str(daemon_lock_path(path))
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                n += os.readlink(f"/proc/self/fd/{fd}") == target
        return n

    try:
        conn = open_durable(path)
        assert descriptors() == 1, "only the state lock's own descriptor"
        conn.close()
        with open(daemon_lock_path(path), "a+b") as probe, pytest.raises(BlockingIOError):
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # still held
    finally:
        lock.release()


# ---- finding 6: `bridge transfer watch` fails over however old the watch is


def test_a_watch_older_than_its_timeout_still_fails_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """The give-up delay of a stream counts from its last message, not from the watch's
    start: a watch that received updates for longer than ``give_up_after`` still moves to
    the next coordinator when its leader dies; a stream silent for that long gives up
    with the call's own UNAVAILABLE."""
    import grpc

    from bridge.rpc.failover import SyncFailover
    from tests.unit.test_ha_clients import _Call

    monkeypatch.setenv("KSTB_INSECURE_PLAINTEXT_FOR_DEVELOPMENT", "1")  # never dialled
    targets = ["127.0.0.1:1", "127.0.0.1:2"]
    failover = SyncFailover(targets, None, give_up_after=0.5)
    served: list[str] = []

    def watch(channel: object, progressed: Callable[[], None]) -> str:
        served.append(failover.ring.current)
        if len(served) == 1:
            for _ in range(4):  # updates for 0.8 s, longer than give_up_after
                time.sleep(0.2)
                progressed()
            raise _Call(grpc.StatusCode.UNAVAILABLE)  # the leader dies mid-watch
        return "terminal"

    try:
        assert failover.follow(watch) == "terminal"
        assert served == targets
    finally:
        failover.close()

    silent = SyncFailover(targets, None, give_up_after=0.3)
    tries: list[float] = []

    def down(channel: object, progressed: Callable[[], None]) -> str:
        tries.append(time.monotonic())
        raise _Call(grpc.StatusCode.UNAVAILABLE)

    try:
        with pytest.raises(grpc.RpcError) as exc:
            silent.follow(down)
        assert exc.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert len(tries) >= 2 and tries[-1] - tries[0] < 1.5
    finally:
        silent.close()


# ---- finding 7: operator status reads never queue before the lease's renewals


@pytest.mark.postgres
async def test_cluster_status_reads_never_use_the_lease_connection(fresh_pg_url: str) -> None:
    """GetClusterStatus is served from the stores' connection: while the lease's worker
    thread is busy (a renewal in flight), a status read still answers at once, so a
    monitoring poll can never push a renewal past ``hold_for``."""
    from bridge.config import HaConfig, ObservabilityConfig
    from bridge.coordinator.__main__ import _HaParts
    from bridge.obs.daemon import DaemonObservability

    stores = open_database(fresh_pg_url)
    obs = DaemonObservability("coordinator", ObservabilityConfig())
    ha = _HaParts(
        HaConfig("coord-a", "10.0.0.1:50051", 3.0, 1.0), fresh_pg_url, None, obs, stores, "9" * 16
    )
    try:
        assert await ha.keeper.elect(asyncio.Event()) == 1
        # The lease's session carries the instance's name (ADR 0017 rule 10: how a standby
        # finds a frozen term's sessions), the instance the lease row records.
        named = stores.run_sync(
            lambda c: c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = ?",
                ("kstb-coordinator/" + "9" * 16,),
            ).fetchone()
        )
        assert int(named[0]) >= 1 and ha.keeper.lease.instance == "9" * 16
        busy = asyncio.create_task(ha.db.read(lambda c: time.sleep(1.5)))
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        view = await asyncio.wait_for(ha.cluster_view(), 1.0)
        assert loop.time() - t0 < 0.5 and not busy.done()
        assert (view.leader, view.token, view.answered_by) == ("coord-a", 1, "coord-a")
        await busy
    finally:
        ha.close()
        stores.close()


@pytest.mark.postgres
@pytest.mark.parametrize("ha_first", [True, False], ids=["ha-running", "plain-running"])
def test_the_coordinator_process_exits_4_beside_the_other_kind(
    tmp_path: Path, fresh_pg_url: str, ha_first: bool
) -> None:
    """``bridge-coordinator`` itself: with an HA coordinator's shared lock held, one without
    ``[ha]`` exits 4; with a non-HA coordinator's exclusive lock held, one with ``[ha]``
    exits 4. Neither touches the lease nor registers as a member."""
    import subprocess
    import sys

    from tests.unit.test_config import network_data, write

    write(tmp_path / "network.toml", network_data())
    data: dict[str, object] = {
        "network": "network.toml",
        "listen": "127.0.0.1:0",
        "database": fresh_pg_url,
        "verifiers": ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"],
        "relayers": {"brokerage-a": "127.0.0.1:1", "brokerage-b": "127.0.0.1:2"},
    }
    if not ha_first:  # the process under test is the HA one
        data["ha"] = {"name": "coord-b", "advertise": "127.0.0.1:7000"}
    config = write(tmp_path / "c.toml", data)
    running = open_database(fresh_pg_url)
    try:
        if ha_first:
            running.claim_shared()
        else:
            running.claim_exclusive()
        env = {**os.environ, "KSTB_INSECURE_PLAINTEXT_FOR_DEVELOPMENT": "1"}
        done = subprocess.run(
            [sys.executable, "-m", "bridge.coordinator", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert done.returncode == 4, done.stderr[-2000:]
        assert "database in use" in done.stdout + done.stderr
        assert lease_row(running) == ("", 0)
        members = running.run_sync(
            lambda c: c.execute("SELECT count(*) FROM coordinator_members").fetchone()[0]
        )
        assert members == 0, "nothing registered"
    finally:
        running.close()
