"""Active/passive coordinators (ADR 0017), end to end: three coordinators on one real
PostgreSQL, EVM and Fabric lanes, and the leader lost again and again while transfers run.

Faults, one at a time: SIGKILL of the leader (twice), SIGSTOP of the leader (it wakes up
deposed: it must not write and exits), and the leader cut from the database (its own TCP
path cut: it cannot renew, steps down and exits). A supervisor's restart follows each, as
a standby. Proven at the end: every transfer terminal and committed, balances and supply
exact, one transfer per idempotency key, and the depository's feed (streamed across every
failover by a client that knows the three addresses) without a gap or a duplicate; a
WatchTransfer that fails over resumes from its last sequence.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridge.coordinator.__main__ import EXIT_DEPOSED
from bridge.devnet.postgres import start_cluster
from bridge.devnet.processes import wait_until
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.domain.errors import BridgeReason
from bridge.rpc.errors import received_error
from bridge.rpc.failover import SyncFailover
from bridge.supply_client import FeedVerifier, watch
from bridge.v1 import operator_pb2, operator_pb2_grpc, transfer_pb2, transfer_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.ha, pytest.mark.fabric]

A, B, F = "brokerage-a", "brokerage-b", "brokerage-f"
TERMINAL = {transfer_pb2.TRANSFER_STATE_COMMITTED, transfer_pb2.TRANSFER_STATE_ABORTED}


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """Two anvil ledgers and one Fabric ledger; three coordinators on one PostgreSQL, each
    behind its own cuttable TCP path to the database."""
    cluster = start_cluster(tmp_path_factory.mktemp("pg"))
    try:
        with LocalSystem(
            Path(tmp_path_factory.mktemp("ha")),
            ledger_names=((A, 31001), (B, 31002)),
            fabric_ledger_names=(F,),
            block_time=0.5,
            transfer_ttl=180,
            supply_heartbeat=2.0,
            store="postgres",
            postgres_server=cluster.url("postgres"),
            coordinators=3,
            lease_ttl=3.0,
            renew_interval=0.5,
            database_proxies=True,
        ) as s:
            yield s
    finally:
        cluster.stop()


def _restart_when_dead(system: LocalSystem, name: str, timeout: float = 30.0) -> int | None:
    """Wait for ``name`` to exit, then restart it (as a supervisor would); its exit code."""
    proc = system.processes[name]
    wait_until(lambda: not proc.alive(), timeout, f"{name} exits")
    code = proc.proc.returncode if proc.proc is not None else None
    system.start_process(name)
    return code


def _new_leader(system: LocalSystem, old: str, timeout: float = 30.0) -> str:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        now = system.leader(timeout)
        if now != old:
            return now
        time.sleep(0.2)
    raise TimeoutError(f"no coordinator took over from {old}")


class FeedFollower(threading.Thread):
    """The depository: one ``watch`` over the three addresses for the whole test."""

    def __init__(self, system: LocalSystem) -> None:
        super().__init__(daemon=True)
        self.system = system
        self.positions: list[int] = []
        self.failures: list[str] = []
        self.stop_at: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        async def follow() -> None:
            assert self.system.committee is not None
            verifier = FeedVerifier(self.system.committee)
            async for v in watch(
                self.system.coordinator_targets,
                verifier,
                1,
                retry_delay=0.2,
                identity=self.system.identity("depository"),
            ):
                if not v.ok:
                    self.failures.append(f"{v.attestation.feed_sequence}: {v.failures}")
                self.positions.append(v.attestation.feed_sequence)
                if self.stop_at is not None and v.attestation.feed_sequence >= self.stop_at:
                    return

        try:
            asyncio.run(follow())
        except BaseException as exc:  # reported by the test
            self.error = exc


class Submitter(threading.Thread):
    """Brokerages submitting transfers over every lane while the faults run."""

    def __init__(self, system: LocalSystem, plan: list[tuple[str, str, str, str, int]]) -> None:
        super().__init__(daemon=True)
        self.system, self.plan = system, plan
        self.keys: dict[str, str] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for sender, recipient, src, dst, amount in self.plan:
                key = str(uuid.uuid4())
                request = transfer_pb2.SubmitTransferRequest(
                    idempotency_key=key,
                    security_id=DEMO_ISIN,
                    source_ledger=src,
                    target_ledger=dst,
                    sender=sender,
                    recipient=recipient,
                    amount=str(amount),
                )
                self.keys[key] = self.system.submit(request, limit_s=90)
                time.sleep(0.5)
        except BaseException as exc:
            self.error = exc


def _watch_across_failover(system: LocalSystem, tid: str) -> list[int]:
    """WatchTransfer through SyncFailover, resuming after the last sequence seen."""
    failover = SyncFailover(
        system.coordinator_targets, system.identity("depository"), give_up_after=150
    )
    seen: list[int] = []

    def follow(channel: grpc.Channel) -> None:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        after = seen[-1] if seen else 0
        for u in stub.WatchTransfer(
            transfer_pb2.WatchTransferRequest(transfer_id=tid, after_sequence=after), timeout=150
        ):
            seen.append(u.sequence)

    try:
        failover.call(follow)
    finally:
        failover.close()
    return seen


def test_standby_refuses_with_the_leaders_address_and_status_names_everyone(
    ha: LocalSystem,
) -> None:
    leader = ha.leader()
    standby = next(n for n in ha.coordinator_names if n != leader)
    leader_target = f"127.0.0.1:{ha.ports[leader]}"
    channel = grpc.secure_channel(
        f"127.0.0.1:{ha.ports[standby]}",
        ha.identity("depository").credentials(),
        options=ha.identity("depository").options(),
    )
    try:
        with pytest.raises(grpc.RpcError) as exc:
            transfer_pb2_grpc.TransferServiceStub(channel).ListTransfers(
                transfer_pb2.ListTransfersRequest(page_size=1), timeout=10
            )
        call: Any = exc.value
        assert call.code() == grpc.StatusCode.UNAVAILABLE
        got = received_error(call.trailing_metadata())
        assert (got.reason, got.leader, got.retryable) == (
            BridgeReason.NOT_LEADER,
            leader_target,
            True,
        )
    finally:
        channel.close()
    # SECURITY: authorisation runs before the standby gate: a caller whose role may not
    # make the call is refused PERMISSION_DENIED and learns nothing about the leader.
    brokerage = "brokerage:" + A
    other = grpc.secure_channel(
        f"127.0.0.1:{ha.ports[standby]}",
        ha.identity(brokerage).credentials(),
        options=ha.identity(brokerage).options(),
    )
    try:
        with pytest.raises(grpc.RpcError) as denied:
            operator_pb2_grpc.OperatorServiceStub(other).GetClusterStatus(
                operator_pb2.GetClusterStatusRequest(), timeout=10
            )
        call = denied.value
        assert call.code() == grpc.StatusCode.PERMISSION_DENIED
        assert received_error(call.trailing_metadata()).leader == ""
        assert leader_target not in (call.details() or "")
    finally:
        other.close()
    # The operator's view, from a standby: the leader and both standbys.
    op_channel = grpc.secure_channel(
        f"127.0.0.1:{ha.ports[standby]}",
        ha.identity("bridge-operator").credentials(),
        options=ha.identity("bridge-operator").options(),
    )
    try:
        status = operator_pb2_grpc.OperatorServiceStub(op_channel).GetClusterStatus(
            operator_pb2.GetClusterStatusRequest(), timeout=10
        )
    finally:
        op_channel.close()
    assert (status.leader, status.leader_address, status.answered_by) == (
        leader,
        leader_target,
        standby,
    )
    assert not status.answered_by_leader and status.token >= 1
    assert sorted(m.name for m in status.members) == sorted(ha.coordinator_names)
    assert [m.name for m in status.members if m.leader] == [leader]
    # The same through the CLI, given every address (it finds the serving one).
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge.cli.main",
            "--coordinator",
            ",".join(ha.coordinator_targets),
            *ha.cli_tls_args("bridge-operator"),
            "operator",
            "status",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert f"leader: {leader} at {leader_target}" in out.stdout
    assert out.stdout.count("standby") >= 2


def test_transfers_and_feed_survive_kill_hang_and_partition_of_the_leader(
    ha: LocalSystem,
) -> None:
    a, b, f = ha.handle(A), ha.handle(B), ha.fabric[F]
    plan: list[tuple[str, str, str, str, int]] = []
    holders: list[str] = []
    for i in range(6):
        h = a.make_holder(DEMO_ISIN, 40)
        b.set_eligible(DEMO_ISIN, h.address)
        f.set_eligible(DEMO_ISIN, h.address)
        holders.append(h.address)
        plan.append((h.address, h.address, A, B if i % 2 else F, 5 + i))
        plan.append((h.address, h.address, A, B, 3))
    fabric_holders: list[str] = []
    for _ in range(2):  # Fabric -> EVM too
        fh = f.make_holder(DEMO_ISIN, 20)
        a.set_eligible(DEMO_ISIN, fh.address)
        fabric_holders.append(fh.address)
        plan.append((fh.address.lower(), fh.address, F, A, 8))
    supply_before = sum(ha.handle(n).total_supply(DEMO_ISIN) for n in (A, B, F))
    feed = FeedFollower(ha)
    feed.start()
    submitter = Submitter(ha, plan)
    submitter.start()
    time.sleep(2.0)
    watched_key_tid: list[str] = []
    wait_until(lambda: bool(submitter.keys), 60, "a first transfer")
    watched_key_tid.append(next(iter(submitter.keys.values())))
    watched: list[list[int]] = []
    watcher = threading.Thread(
        target=lambda: watched.append(_watch_across_failover(ha, watched_key_tid[0])),
        daemon=True,
    )
    watcher.start()

    exits: dict[str, int | None] = {}
    # 1-2. SIGKILL the leader, twice.
    for _ in range(2):
        old = ha.leader()
        ha.processes[old].kill9()
        _new_leader(ha, old)
        ha.start_process(old)
        time.sleep(1.0)
    # 3. SIGSTOP the leader past its lease; it wakes up deposed, writes nothing, exits.
    old = ha.leader()
    ha.processes[old].pause()
    _new_leader(ha, old)
    time.sleep(1.0)
    ha.processes[old].resume()
    exits["paused"] = _restart_when_dead(ha, old)
    # 4. Cut the leader from the database: it cannot renew, steps down and exits.
    old = ha.leader()
    ha.db_proxies[old].cut()
    _new_leader(ha, old)
    wait_until(lambda: not ha.processes[old].alive(), 30, f"{old} steps down")
    ha.db_proxies[old].restore()  # its term is over: the database path back cannot revive it
    exits["cut"] = _restart_when_dead(ha, old)
    assert exits == {"paused": EXIT_DEPOSED, "cut": EXIT_DEPOSED}, exits

    submitter.join(timeout=180)
    assert submitter.error is None, repr(submitter.error)
    assert len(submitter.keys) == len(plan)
    tids = list(submitter.keys.values())

    failover = SyncFailover(ha.coordinator_targets, ha.identity("depository"))

    def state(tid: str) -> int:
        def get(ch: grpc.Channel) -> transfer_pb2.Transfer:
            return transfer_pb2_grpc.TransferServiceStub(ch).GetTransfer(
                transfer_pb2.GetTransferRequest(transfer_id=tid), timeout=10
            )

        return int(failover.call(get).state)

    def states() -> dict[str, int]:
        return {t: state(t) for t in tids}

    wait_until(lambda: set(states().values()) <= TERMINAL, 150, "every transfer terminal")
    final = states()
    failover.close()
    assert set(final.values()) == {transfer_pb2.TRANSFER_STATE_COMMITTED}, final

    # Balances and supply exact.
    for i, addr in enumerate(holders):
        to_f = 0 if i % 2 else 5 + i
        to_b = 3 + (5 + i if i % 2 else 0)
        assert a.balance(DEMO_ISIN, addr) == 40 - to_f - to_b
        assert b.balance(DEMO_ISIN, addr) == to_b
        assert f.balance(DEMO_ISIN, addr) == to_f
    for faddr in fabric_holders:
        assert (f.balance(DEMO_ISIN, faddr), a.balance(DEMO_ISIN, faddr)) == (12, 8)
    supply_after = sum(ha.handle(n).total_supply(DEMO_ISIN) for n in (A, B, F))
    assert supply_after == supply_before
    assert a.escrowed(DEMO_ISIN) == b.escrowed(DEMO_ISIN) == f.escrowed(DEMO_ISIN) == 0

    # One transfer per idempotency key: exactly the submitted ones, none doubled.
    rows = ha.query_coordinator(
        "SELECT idempotency_key, COUNT(*) FROM transfers WHERE origin = 'submitted'"
        " GROUP BY idempotency_key"
    )
    counts = {str(k): int(n) for k, n in rows}
    assert {k: counts.get(k) for k in submitter.keys} == dict.fromkeys(submitter.keys, 1)
    assert all(n == 1 for n in counts.values())

    # The watch that failed over saw every update once, in order.
    watcher.join(timeout=150)
    assert watched and watched[0] == list(range(1, len(watched[0]) + 1)), watched

    # The depository's feed: every position once, in order, every record verified.
    end = int(ha.query_coordinator("SELECT last FROM supply_feed_head")[0][0])
    feed.stop_at = end
    feed.join(timeout=60)
    assert feed.error is None, repr(feed.error)
    assert not feed.failures, feed.failures
    assert feed.positions[:end] == list(range(1, end + 1)), "no gap, no duplicate"


def test_a_standby_elected_after_a_newer_release_upgraded_the_database_steps_down(
    ha: LocalSystem,
) -> None:
    """Review helper-114 M2: the database is stamped with a newer schema version while the
    coordinators run (a newer release migrated it), then the leader dies. Each standby that
    wins the lease reads the version again, gives the lease up and exits
    EXIT_STORE_TOO_NEW, writing nothing as leader. Runs last in the module: the stamp is
    then removed and every coordinator restarted."""
    import psycopg

    from bridge.coordinator import schema
    from bridge.coordinator.__main__ import EXIT_STORE_TOO_NEW

    newer = schema.LATEST + 1
    with psycopg.connect(ha.coordinator_database, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version VALUES (%s, 'from a newer release', 0)", (newer,))
    try:
        old = ha.leader()
        before = int(ha.query_coordinator("SELECT MAX(token) FROM coordinator_lease")[0][0])
        ha.processes[old].kill9()
        standbys = [n for n in ha.coordinator_names if n != old]
        wait_until(
            lambda: not any(ha.processes[n].alive() for n in standbys),
            60,
            "every standby elected after the upgrade steps down",
        )
        codes = {n: ha.processes[n].proc.returncode for n in standbys}  # type: ignore[union-attr]
        assert set(codes.values()) == {EXIT_STORE_TOO_NEW}, codes
        after = int(ha.query_coordinator("SELECT MAX(token) FROM coordinator_lease")[0][0])
        assert after > before, "each was elected (a new term), then stepped down"
    finally:
        with psycopg.connect(ha.coordinator_database, autocommit=True) as conn:
            conn.execute("DELETE FROM schema_version WHERE version = %s", (newer,))
        for name in ha.coordinator_names:
            if not ha.processes[name].alive():
                ha.start_process(name)
    ha.leader(timeout=60)
