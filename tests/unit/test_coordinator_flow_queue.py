"""The coordinator's flow-limit queue (ADR 0010): pure admission rules, then the driver with
in-memory relayers whose ledgers report and enforce a lane's buckets (tests/unit/
test_coordinator_driver.py's fakes). Real ledgers: tests/e2e/test_flow_limits.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bridge.coordinator.engine import Coordinator
from bridge.coordinator.flow_queue import admit, never_fits
from bridge.coordinator.records import TransferRecord, TransferRequest
from bridge.coordinator.store import SqliteTransferStore
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import PreconditionFailed
from bridge.domain.flow import Bucket, FlowStatus, WaitReason
from bridge.domain.legs import Action
from bridge.domain.transfer import TransferState
from tests.support import eventually
from tests.unit.test_coordinator_driver import (
    HOLDER,
    ISIN,
    FakeCommittee,
    FakeRelayer,
    coordinator,
    count_calls,
    final,
    instructed,
)

pytestmark = [pytest.mark.unit, pytest.mark.governance]

__all__ = ["coordinator"]  # the fixture, re-exported for this module's tests


def status(out: tuple[int, int] = (0, 0), inn: tuple[int, int] = (0, 0)) -> FlowStatus:
    return FlowStatus("a", "b", ISIN, 0, Bucket(*out, 100), Bucket(*inn, 100), 0, 0, 0, 0, 0)


# --------------------------------------------------------------------------- pure rules


def test_an_unlimited_lane_always_admits() -> None:
    assert admit(10**30, 10**30, 10**30, status(), status()).go


def test_a_transfer_goes_only_after_everything_ahead_of_it() -> None:
    src = status(out=(100, 30))
    assert admit(30, 0, 0, src, status()).go
    behind = admit(10, 25, 0, src, status())  # alone it fits; 25 units were first
    assert (behind.go, behind.reason) == (False, WaitReason.BEHIND_EARLIER_TRANSFER)
    assert behind.retry_in == 5  # 5 units short, refilled 100 per 100 s
    short = admit(40, 0, 0, src, status())
    assert (short.go, short.reason) == (False, WaitReason.SOURCE_OUTBOUND_CAPACITY)
    assert "30 of 100 available, needs 40" in short.detail


def test_the_target_inbound_bucket_binds_after_the_source() -> None:
    dst = status(inn=(50, 10))
    verdict = admit(20, 0, 0, status(), dst)
    assert (verdict.go, verdict.reason) == (False, WaitReason.TARGET_INBOUND_CAPACITY)
    assert verdict.retry_in == 20
    assert admit(10, 0, 0, status(), dst).go
    assert admit(10, 0, 1, status(), dst).reason is WaitReason.BEHIND_EARLIER_TRANSFER


def test_more_than_a_capacity_can_never_go() -> None:
    assert never_fits(100, status(out=(100, 0)), status(inn=(100, 0))) is None
    why = never_fits(101, status(out=(100, 100)), status())
    assert why is not None and "outbound capacity 100" in why
    why = never_fits(60, status(), status(inn=(50, 50)))
    assert why is not None and "inbound capacity 50" in why


def req(key: str, amount: int) -> TransferRequest:
    return TransferRequest(key, ISIN, "a", "b", HOLDER, HOLDER, amount)


async def submit(c: Coordinator, key: str, amount: int, deadline: int | None = None) -> bytes:
    r = req(key, amount)
    record, _ = await c.submit(r, instructed(c._network, r, deadline=deadline))
    return record.transfer_id


async def state_of(store: SqliteTransferStore, tid: bytes) -> TransferRecord:
    record = await store.get(tid)
    assert record is not None
    return record


async def until(store: SqliteTransferStore, tid: bytes, state: TransferState) -> TransferRecord:
    async def probe() -> TransferRecord | None:
        r = await store.get(tid)
        return r if r is not None and r.state is state else None

    return await eventually(probe, 10, f"{state.name}", interval=0.02)


async def test_a_burst_queues_in_order_and_drains_as_capacity_returns(coordinator) -> None:
    c, relayers, store = coordinator
    a: FakeRelayer = relayers["a"]
    a.outbound_capacity, a.outbound_available = 10, 10
    first = await submit(c, "k1", 6)
    assert await final(store, first) is TransferState.COMMITTED
    second = await submit(c, "k2", 6)  # 4 left: waits for the source's outbound capacity
    queued = await until(store, second, TransferState.QUEUED)
    assert queued.wait_reason is WaitReason.SOURCE_OUTBOUND_CAPACITY
    assert queued.not_before > time.time()
    assert "outbound on a: 4 of 10 available, needs 6" in queued.reason
    third = await submit(c, "k3", 3)  # 3 would fit, but "k2" was first
    waiting = await until(store, third, TransferState.QUEUED)
    assert waiting.wait_reason is WaitReason.BEHIND_EARLIER_TRANSFER
    assert a.locked_ids == [first]

    a.outbound_available = 6  # the lane refilled by 2: k2 goes, k3 still waits behind nothing
    assert await final(store, second) is TransferState.COMMITTED
    assert (await state_of(store, third)).state is TransferState.QUEUED
    a.outbound_available = 3
    assert await final(store, third) is TransferState.COMMITTED
    assert a.locked_ids == [first, second, third]  # submission order
    done = await state_of(store, third)
    assert (done.wait_reason, done.not_before) == (WaitReason.NONE, 0.0)
    history = [u.state for u in await store.history(third, 0)]
    assert history[:3] == [TransferState.SUBMITTED, TransferState.QUEUED, TransferState.SUBMITTED]


async def test_no_reader_ever_sees_a_queued_transfer_without_its_wait(coordinator) -> None:
    # After every store write, the transfer as a reader would see it: QUEUED always has its
    # wait reason and not_before (leaving the queue ends the wait with the next state, in
    # one transaction, instead of clearing it first).
    c, relayers, store = coordinator
    a: FakeRelayer = relayers["a"]
    a.outbound_capacity, a.outbound_available = 10, 4
    seen: list[tuple[TransferState, WaitReason, float]] = []
    for name in ("set_wait", "set_state"):
        write = getattr(store, name)

        async def observed(tid: bytes, *args: object, _write=write) -> object:  # type: ignore[no-untyped-def]
            out = await _write(tid, *args)
            r = await store.get(tid)
            assert r is not None
            seen.append((r.state, r.wait_reason, r.not_before))
            return out

        setattr(store, name, observed)
    tid = await submit(c, "k1", 6)
    await until(store, tid, TransferState.QUEUED)
    a.outbound_available = 10
    assert await final(store, tid) is TransferState.COMMITTED
    queued = [s for s in seen if s[0] is TransferState.QUEUED]
    assert queued, "the transfer was never queued"
    assert all(w is not WaitReason.NONE and nb > 0 for _, w, nb in queued), queued


async def test_the_target_inbound_limit_queues_before_the_lock(coordinator) -> None:
    c, relayers, store = coordinator
    b: FakeRelayer = relayers["b"]
    b.inbound_capacity, b.inbound_available = 10, 2
    tid = await submit(c, "k1", 5)
    queued = await until(store, tid, TransferState.QUEUED)
    assert queued.wait_reason is WaitReason.TARGET_INBOUND_CAPACITY
    assert relayers["a"].submitted == []  # nothing locked while it waits
    b.inbound_available = 5
    assert await final(store, tid) is TransferState.COMMITTED


async def test_an_amount_above_a_capacity_is_refused_at_submit(coordinator) -> None:
    c, relayers, store = coordinator
    relayers["b"].inbound_capacity, relayers["b"].inbound_available = 4, 4
    with pytest.raises(PreconditionFailed, match="exceeds the inbound capacity 4 of"):
        await submit(c, "k1", 5)
    assert (await store.list_transfers(None, None, 10, 0))[0] == []  # nothing recorded


async def test_a_queued_transfer_fails_at_its_deadline_with_nothing_moved(coordinator) -> None:
    c, relayers, store = coordinator
    a: FakeRelayer = relayers["a"]
    a.outbound_capacity, a.outbound_available = 10, 1
    tid = await submit(c, "k1", 5, deadline=int(time.time()) + 2)
    await until(store, tid, TransferState.QUEUED)
    assert await final(store, tid) is TransferState.FAILED
    record = await state_of(store, tid)
    assert record.reason.startswith("queued until its deadline passed, nothing moved")
    assert record.wait_reason is WaitReason.NONE
    assert a.submitted == []


async def test_the_queue_survives_a_restart(coordinator, tmp_path: Path) -> None:
    c, relayers, store = coordinator
    a: FakeRelayer = relayers["a"]
    a.outbound_capacity, a.outbound_available = 10, 0
    tids = [await submit(c, f"k{i}", 4) for i in range(3)]
    for tid in tids:
        await until(store, tid, TransferState.QUEUED)
    await c.stop()  # the queue is only in the store
    again = Coordinator(
        c._network, store, relayers, FakeCommittee(), transfer_ttl=60, max_backoff=0.2,  # type: ignore[arg-type]
        sweep_every=0.1, queue_recheck_max=0.2,
    )  # fmt: skip
    assert await again.start() == 3
    try:
        a.outbound_available = 12
        for tid in tids:
            assert await final(store, tid) is TransferState.COMMITTED
        assert a.locked_ids == tids
        assert a.submitted.count(Action.LOCK) == 3
    finally:
        await again.stop()


async def test_lane_flows_report_capacity_and_queue(coordinator) -> None:
    c, relayers, store = coordinator
    a: FakeRelayer = relayers["a"]
    a.outbound_capacity, a.outbound_available = 10, 3
    tid = await submit(c, "k1", 5)
    await until(store, tid, TransferState.QUEUED)
    lanes = {(lane.source_ledger, lane.target_ledger): lane for lane in await c.lane_flows(ISIN)}
    ab = lanes[("a", "b")]
    assert (ab.queued, ab.queued_units) == (1, 5)
    assert ab.source is not None and ab.source.outbound.available == 3
    assert lanes[("b", "a")].queued == 0
    a.outbound_available = 5
    assert await final(store, tid) is TransferState.COMMITTED


async def test_a_large_transfer_is_held_until_its_delay_ends(coordinator) -> None:
    c, relayers, store = coordinator
    committee: FakeCommittee = c._committee  # type: ignore[assignment]
    held = int(time.time()) + 2
    relayers["b"].not_before = held  # the target's inbound delay on this transfer
    tid = await submit(c, "k1", 5)
    waiting = await until(store, tid, TransferState.TARGET_PREPARED)
    record = await eventually(
        lambda: _with_wait(store, tid, WaitReason.LARGE_TRANSFER_DELAY), 5, "the delay"
    )
    assert record.not_before == held
    assert "held by the ledgers' delay until" in record.reason
    assert ClaimKind.COMMIT not in committee.kinds  # nobody was asked to sign early
    assert waiting.state is TransferState.TARGET_PREPARED
    assert await final(store, tid) is TransferState.COMMITTED
    assert time.time() >= held
    done = await state_of(store, tid)
    assert done.wait_reason is WaitReason.NONE


async def _with_wait(
    store: SqliteTransferStore, tid: bytes, reason: WaitReason
) -> TransferRecord | None:
    r = await store.get(tid)
    return r if r is not None and r.wait_reason is reason else None


# ------------------------------------------------- an open lane known without a read (issue 14)


@pytest.mark.batch  # issue 14: legs and lanes known without a read
async def test_an_open_lane_is_read_once_per_new_transfer(coordinator) -> None:
    """Admission reads both ends of the lane; when neither limits its rate, the new
    transfer's first gate takes that as known instead of reading both ends again."""
    c, relayers, store = coordinator
    reads = count_calls(relayers, "flow_status")
    tid = await submit(c, "open", 5)
    assert await final(store, tid) is TransferState.COMMITTED
    assert reads == {"a": 1, "b": 1}
    assert c._flow._open == {}, "the entry is used by the transfer's first gate"


@pytest.mark.batch  # issue 14: legs and lanes known without a read
async def test_a_lane_limited_after_admission_is_still_enforced_then_queued(coordinator) -> None:
    """SECURITY: the lane read open at admission is limited before the lock. The source
    ledger refuses the lock itself (FLOW_LIMIT_EXCEEDED); the driver's next gate reads the
    lane, queues the transfer with the reason, and it goes once capacity returns. Nothing
    moved meanwhile; the transfer commits once."""
    c, relayers, store = coordinator
    a = relayers["a"]
    original = a.flow_status

    async def open_then_limited(security: str, counterpart: str) -> FlowStatus:
        answer = await original(security, counterpart)
        a.outbound_capacity, a.outbound_available = 10, 0  # the admin acts right after
        return answer

    a.flow_status = open_then_limited  # type: ignore[method-assign]
    tid = await submit(c, "limited-later", 5)
    a.flow_status = original  # type: ignore[method-assign]
    queued = await until(store, tid, TransferState.QUEUED)
    assert queued.wait_reason is WaitReason.SOURCE_OUTBOUND_CAPACITY
    assert a.submitted == [Action.LOCK], "one lock, refused by the ledger's own bucket"
    assert a.locked_ids == [] and not relayers["b"].submitted  # nothing locked or prepared
    a.outbound_available = 10  # capacity returns
    assert await final(store, tid) is TransferState.COMMITTED
    assert a.submitted == [Action.LOCK, Action.LOCK, Action.COMMIT]
    assert a.locked_ids == [tid]


@pytest.mark.batch  # issue 14: legs and lanes known without a read
async def test_an_open_lane_read_too_long_ago_is_read_again_at_the_gate(
    coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open lane stands in for the gate's read only until ADMISSION_FRESH_S after
    admission's read, judged at the gate: a first step held up (here its start, slow once)
    reads the lane, so a queue formed meanwhile keeps its order."""
    import asyncio

    import bridge.coordinator.admission as admission

    c, relayers, store = coordinator
    monkeypatch.setattr(admission, "ADMISSION_FRESH_S", 0.2)
    reads = count_calls(relayers, "flow_status")
    original = c._drivers._read
    slow = {"once": True}

    async def read(tid: bytes):  # type: ignore[no-untyped-def]
        # the driver's first read of its record (kept by admission): the first step
        # starts late
        if slow.pop("once", False):
            await asyncio.sleep(0.4)
        return await original(tid)

    monkeypatch.setattr(c._drivers, "_read", read)
    tid = await submit(c, "slow-first-step", 5)
    assert await final(store, tid) is TransferState.COMMITTED
    assert reads == {"a": 2, "b": 2}, "admission, then the gate again"


@pytest.mark.batch  # issue 14: legs and lanes known without a read
async def test_a_target_inbound_limit_set_after_admission_holds_the_prepare(coordinator) -> None:
    """SECURITY: the target's inbound limit, set between admission (lane open) and the lock,
    is enforced by the target on the prepare: the transfer waits locked, nothing is minted
    beyond the bucket, and it commits once the bucket refills."""
    c, relayers, store = coordinator
    b = relayers["b"]
    original = b.flow_status

    async def open_then_limited(security: str, counterpart: str) -> FlowStatus:
        answer = await original(security, counterpart)
        b.inbound_capacity, b.inbound_available = 10, 0  # the target's admin acts
        return answer

    b.flow_status = open_then_limited  # type: ignore[method-assign]
    tid = await submit(c, "inbound-later", 5)
    b.flow_status = original  # type: ignore[method-assign]

    async def refused_prepare() -> bool | None:
        return True if b.submitted.count(Action.PREPARE) >= 1 else None

    await eventually(refused_prepare, 10, "a prepare refused by the target's bucket")
    record = await state_of(store, tid)
    assert record.state is TransferState.SOURCE_LOCKED
    assert Action.COMMIT not in b.submitted
    b.inbound_available = 10  # the bucket refills
    assert await final(store, tid) is TransferState.COMMITTED
    assert b.submitted.count(Action.COMMIT) == 1
