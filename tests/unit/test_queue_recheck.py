"""How often a transfer waiting on flow limits reads its lane again (issue 14, ADR 0010
amendment "a deep queue sleeps toward its estimate").

Each QUEUED transfer used to read both ends of its lane and the store's backlog every
``max_backoff`` (10 s), so a lane's reads per second grew with its depth. Now a wait whose
own estimate is far sleeps half of it, at most ``queue_recheck_max``: the pure rule first,
then the driver with the in-memory relayers of tests/unit/test_coordinator_driver.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.coordinator.engine import Coordinator
from bridge.coordinator.flow_queue import QUEUE_RECHECK_MAX_S, recheck_in
from bridge.coordinator.records import TransferRecord
from bridge.coordinator.store import SqliteTransferStore
from bridge.core.reasons import ErrorReason
from bridge.domain.errors import LedgerRejected
from bridge.domain.flow import WaitReason
from bridge.domain.legs import Action
from bridge.domain.terms import TransferTerms
from bridge.domain.transfer import TransferState
from tests.unit.test_coordinator_driver import (
    FakeCommittee,
    FakeRelayer,
    count_calls,
    final,
    network_file,
)
from tests.unit.test_coordinator_flow_queue import state_of, submit, until

pytestmark = [pytest.mark.unit, pytest.mark.batch]

FAR = 10_000.0  # seconds to a deadline that does not bind


# --------------------------------------------------------------------------- the rule


def test_an_estimate_within_max_backoff_is_slept_as_before() -> None:
    assert recheck_in(3, 10.0, 60.0, FAR) == 3
    assert recheck_in(0, 10.0, 60.0, FAR) == 0.5  # "re-check soon", not a busy loop
    assert recheck_in(10, 10.0, 60.0, FAR) == 10
    assert recheck_in(5, 0.2, 0.2, FAR) == 0.2  # the fixtures: every max_backoff


def test_a_far_estimate_sleeps_half_of_it_between_bounds() -> None:
    assert recheck_in(30, 10.0, 60.0, FAR) == 15
    assert recheck_in(12, 10.0, 60.0, FAR) == 10, "never less than max_backoff"
    assert recheck_in(86_400, 10.0, 60.0, FAR) == 60, "never more than recheck_max"
    assert recheck_in(86_400, 10.0, 5.0, FAR) == 10, "a recheck_max below max_backoff"


def test_the_sleeps_close_in_on_the_estimate() -> None:
    """Refill alone: each wake's estimate is the last one less the time slept, and the
    transfer wakes no later than its estimate, with few reads on the way."""
    left, wakes, slept = 1_000.0, 0, 0.0
    while left > 0:
        delay = recheck_in(left, 10.0, 60.0, FAR)
        slept, left, wakes = slept + delay, left - delay, wakes + 1
    assert slept == 1_000.0
    assert wakes <= 1_000 / 60 + 4  # every 60 s, then 60 -> 30 -> 15 -> 10 s steps
    assert wakes < 1_000 / 10 / 4, "at least four times fewer than every max_backoff"


def test_the_deadline_bounds_every_sleep_before_the_lock() -> None:
    """A sleep that would cross the deadline ends LAST_LOOK_S (3 s) before it, a last read
    while a lock still lands in time; with less than 3.5 s left, one second after it (the
    gate then ends the transfer FAILED)."""
    assert recheck_in(86_400, 10.0, 60.0, 30.0) == 27.0
    assert recheck_in(86_400, 10.0, 60.0, 4.0) == 1.0
    assert recheck_in(8, 10.0, 60.0, 2.0) == 3.0
    assert recheck_in(86_400, 10.0, 60.0, 1.2) == 2.2
    assert recheck_in(86_400, 10.0, 60.0, 70.0) == 60, "a sleep short of it is kept"
    # Past it already (the gate's writes crossed it, review helper-122 M2): at once.
    assert recheck_in(86_400, 10.0, 60.0, -0.001) == 0.5
    assert recheck_in(86_400, 0.2, 0.2, -0.001) == 0.2


def test_a_held_locked_transfer_waits_past_its_deadline_without_a_busy_loop() -> None:
    """A large transfer's delay (``to_deadline`` None): the deadline does not bound it."""
    assert recheck_in(86_400, 10.0, 60.0, None) == 60
    assert recheck_in(3, 10.0, 60.0, None) == 3


# --------------------------------------------------------------------------- the driver


@pytest.fixture
async def deep(
    tmp_path: Path,
) -> AsyncIterator[tuple[Coordinator, dict[str, FakeRelayer], SqliteTransferStore]]:
    """A coordinator with the default ``queue_recheck_max`` and a short ``max_backoff``."""
    store = SqliteTransferStore(tmp_path / "c.sqlite")
    relayers = {"a": FakeRelayer("a"), "b": FakeRelayer("b")}
    c = Coordinator(network_file(tmp_path), store, relayers, FakeCommittee(), transfer_ttl=60,  # type: ignore[arg-type]
                    max_backoff=0.2, sweep_every=0.1)  # fmt: skip
    assert c._ctx.queue_recheck_max == QUEUE_RECHECK_MAX_S
    await c.start()
    yield c, relayers, store
    await c.stop()
    store.close()


async def test_a_deep_queue_does_not_read_its_lane_every_max_backoff(deep) -> None:
    """Three transfers queued 40 to 120 s from room: each reads the lane at its first
    gate, then sleeps toward its estimate. Every max_backoff (0.2 s) would have been about
    ten reads each over the two seconds."""
    c, relayers, store = deep
    a = relayers["a"]
    a.outbound_capacity, a.outbound_available = 10, 0  # refills 10 per 100 s
    reads = count_calls(relayers, "flow_status")
    tids = [await submit(c, f"k{i}", 4) for i in range(3)]
    for tid in tids:
        queued = await until(store, tid, TransferState.QUEUED)
        assert queued.not_before - time.time() > 30
    settled = dict(reads)
    await asyncio.sleep(2.0)
    assert reads == settled, "no transfer read its lane again while its estimate is far"
    assert reads["a"] <= 2 * len(tids) + 2  # admission's read and each first gate


async def test_a_transfer_ahead_that_fails_wakes_the_queue_behind_it(deep) -> None:
    """Review helper-122 M1: a brokerage queues a transfer that cannot go yet, with a near
    deadline, ahead of another's. The one behind counted it in its estimate (about 45 s
    of sleep); when it fails at its deadline, the lane's queue is woken and the one behind
    goes now, not at the end of its sleep."""
    c, relayers, store = deep
    a = relayers["a"]
    a.outbound_capacity, a.outbound_available = 10, 5
    head = await submit(c, "hostile", 10, deadline=int(time.time()) + 2)
    await until(store, head, TransferState.QUEUED)
    victim = await submit(c, "victim", 4)
    waiting = await until(store, victim, TransferState.QUEUED)
    assert waiting.wait_reason is WaitReason.BEHIND_EARLIER_TRANSFER
    assert waiting.not_before - time.time() > 30
    assert await final(store, head) is TransferState.FAILED
    failed_at = time.time()
    assert await final(store, victim) is TransferState.COMMITTED
    assert time.time() - failed_at < 5, "woken by the departure, not at its estimate"
    assert a.locked_ids == [victim]


async def test_a_gate_after_the_deadline_never_locks_even_with_room(deep) -> None:
    """Review helper-122 H1: the gate's read of the lane ends after the deadline, and the
    lane has room by then. The transfer ends FAILED with nothing locked (before
    2026-12-07, the Fabric chaincode would have taken such a lock)."""
    c, a, store, tid, deadline = await _queued_far(deep, seconds=3)
    original = a.flow_status

    async def slow(security: str, counterpart: str) -> object:
        await asyncio.sleep(max(0.0, deadline + 0.5 - time.time()))
        a.outbound_available = 10  # room, once it is too late
        return await original(security, counterpart)

    a.flow_status = slow  # type: ignore[method-assign]
    c.wake(tid)
    await _failed_in_queue(store, tid, a)


async def test_a_deep_queued_transfer_still_fails_at_its_deadline(deep) -> None:
    """Its estimate is 50 s away and its deadline 2 s: it fails within about a second of
    the deadline, not at its first sleep's end."""
    _, a, store, tid, deadline = await _queued_far(deep, seconds=2)
    await _failed_in_queue(store, tid, a)
    assert time.time() < deadline + 5


async def _queued_far(
    deep: tuple[Coordinator, dict[str, FakeRelayer], SqliteTransferStore], seconds: int
) -> tuple[Coordinator, FakeRelayer, SqliteTransferStore, bytes, int]:
    """A transfer of 5 QUEUED on an empty bucket (50 s from room), its deadline
    ``seconds`` away: the coordinator, the source relayer, the store, its id, deadline."""
    c, relayers, store = deep
    a = relayers["a"]
    a.outbound_capacity, a.outbound_available = 10, 0
    deadline = int(time.time()) + seconds
    tid = await submit(c, "late", 5, deadline=deadline)
    await until(store, tid, TransferState.QUEUED)
    return c, a, store, tid, deadline


async def _failed_in_queue(store: SqliteTransferStore, tid: bytes, a: FakeRelayer) -> None:
    """``tid`` ends FAILED as a transfer queued until its deadline: nothing locked."""
    assert await final(store, tid) is TransferState.FAILED
    record = await state_of(store, tid)
    assert record.reason.startswith("queued until its deadline passed, nothing moved")
    assert record.wait_reason is WaitReason.NONE
    assert a.submitted == [] and a.locked_ids == []


async def test_a_lock_refused_after_its_gate_wakes_the_queue_behind_it(deep) -> None:
    """Review helper-123 M-a: the gate lets a brokerage's large transfer go, and the
    source refuses its lock for good (its holder moved the units away meanwhile). It ends
    FAILED without taking the capacity the one behind it counted: that one is woken and
    goes within seconds, not at the end of its 20 s sleep."""
    c, relayers, store = deep
    a = relayers["a"]
    a.outbound_capacity, a.outbound_available = 10, 10
    release = asyncio.Event()
    original = a.submit

    async def held(
        action: Action, terms: TransferTerms, cert: object, instruction: bytes = b""
    ) -> object:
        if action is Action.LOCK and terms.amount == 10:
            await release.wait()
        return await original(action, terms, cert, instruction)  # type: ignore[arg-type]

    a.submit = held  # type: ignore[method-assign]
    head = await submit(c, "hostile", 10)
    victim = await submit(c, "victim", 4)
    waiting = await until(store, victim, TransferState.QUEUED)
    assert waiting.not_before - time.time() > 30
    a.lock_refusal = LedgerRejected(ErrorReason.INSUFFICIENT_BALANCE, "balance=0")
    release.set()
    assert await final(store, head) is TransferState.FAILED
    failed_at = time.time()
    a.lock_refusal = None
    a.outbound_available = 10  # the fake took the refused lock's units; a ledger does not
    assert await final(store, victim) is TransferState.COMMITTED
    assert time.time() - failed_at < 5, "woken by the departure, not at its estimate"


async def test_no_lock_is_sent_after_the_deadline_on_an_open_lane(deep) -> None:
    """Review helper-123 L-c: whatever delays the lock step past the deadline (here the
    gate of an open lane, as a slow store would), the lock is not sent: FAILED, nothing
    moved. (Every ledger kind refuses it since 2026-12-07; Fabric did not before.)"""
    c, relayers, store = deep
    a = relayers["a"]
    deadline = int(time.time()) + 2
    original = c._flow.gate

    async def slow(record: TransferRecord) -> bool:
        await asyncio.sleep(max(0.0, deadline + 0.5 - time.time()))
        return await original(record)

    c._flow.gate = slow  # type: ignore[method-assign]
    tid = await submit(c, "late", 5, deadline=deadline)
    assert await final(store, tid) is TransferState.FAILED
    record = await state_of(store, tid)
    assert record.reason == "not locked: its deadline passed before the lock, nothing moved"
    assert a.submitted == [] and a.locked_ids == []
