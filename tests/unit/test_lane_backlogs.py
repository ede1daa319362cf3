"""A flow-limited lane's backlog is read once per change of the lane (review helper-117 #2).

Before, every gate of every QUEUED transfer read every earlier row of its lane: N queued
transfers cost N reads of up to N rows per round on the database thread every institution
shares. Now ``lane_backlog`` answers from the lane's prefix sums, read again only when a
transfer of the lane was created or changed state (or after ``MAX_AGE_S``), and its answers
stay exactly those of a read of the lane (checked against a brute-force read after every
step of a random history, both engines).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from bridge.coordinator.lane_backlogs import LaneBacklogs
from bridge.coordinator.store import SqlTransferStore
from bridge.domain.transfer import TransferState
from tests.unit.test_store import db_path, make_record, make_store, store

pytestmark = [pytest.mark.unit, pytest.mark.security]

__all__ = ["db_path", "make_store", "store"]  # fixtures

AHEAD = (TransferState.QUEUED, TransferState.SUBMITTED, TransferState.SOURCE_LOCKED)
LANE = ("KR7005930003", "brokerage-a", "brokerage-b")


async def brute_force(store: SqlTransferStore, tid: bytes, states: Any) -> int:
    """The backlog as the previous code read it: every earlier row of the lane, now."""

    def run(db: Any) -> int:
        me = db.execute(
            "SELECT seq, security, source_ledger, target_ledger FROM transfers"
            " WHERE transfer_id = ?",
            (tid,),
        ).fetchone()
        marks = ",".join("?" * len(states))
        rows = db.execute(
            "SELECT request FROM transfers WHERE seq < ? AND security = ?"
            f" AND source_ledger = ? AND target_ledger = ? AND state IN ({marks})",
            [*me, *(int(s) for s in states)],
        ).fetchall()
        return sum(int(json.loads(r[0])["amount"]) for r in rows)

    return int(await store._db.read(run))


def count_lane_reads(store: SqlTransferStore) -> list[int]:
    """Count the store's reads of a whole lane (not the point reads of a position)."""
    reads: list[int] = []
    read = store._db.read

    async def counted(fn: Any) -> Any:
        if getattr(fn, "__name__", "") == "lane_rows":
            reads.append(1)
        return await read(fn)

    store._db.read = counted  # type: ignore[method-assign]
    return reads


def clocked(store: SqlTransferStore) -> list[float]:
    """Give ``store`` a lane cache on a clock the test moves."""
    now = [1000.0]
    store._backlogs = LaneBacklogs(clock=lambda: now[0])
    return now


async def test_many_queued_transfers_read_their_lane_once_a_second(
    store: SqlTransferStore,
) -> None:
    now = clocked(store)
    queued = [make_record(n, state=TransferState.QUEUED, amount=n) for n in range(1, 201)]
    await store.create_many(queued)
    reads = count_lane_reads(store)
    for r in queued:  # a round of every queued transfer's gate
        ahead = await store.lane_backlog(r.transfer_id, AHEAD[:2])
        assert ahead == sum(range(1, int(r.request.amount)))
    assert len(reads) == 1, "one read of the lane for 200 questions (was 200 reads)"
    # Transfers created since are counted without a read, exactly.
    late = [make_record(n, state=TransferState.QUEUED, amount=1) for n in range(300, 305)]
    await store.create_many(late)
    assert await store.lane_backlog(late[3].transfer_id, AHEAD[:2]) == sum(range(1, 201)) + 3
    # One that left the states (locked) is still counted until the next read: never less.
    await store.set_state(queued[0].transfer_id, TransferState.SOURCE_LOCKED, "locked", "x")
    assert await store.lane_backlog(queued[5].transfer_id, AHEAD[:2]) == 1 + 2 + 3 + 4 + 5
    assert len(reads) == 1
    now[0] += 1.5  # MAX_AGE_S later: read again, exact
    assert await store.lane_backlog(queued[5].transfer_id, AHEAD[:2]) == 2 + 3 + 4 + 5
    assert len(reads) == 2
    # A resume from FAILED (a transfer entering the states from outside): read again.
    await store.set_state(queued[1].transfer_id, TransferState.FAILED, "failed", "x")
    await store.lane_backlog(queued[5].transfer_id, AHEAD)
    assert await store.resume_failed(
        queued[1].transfer_id, TransferState.SOURCE_LOCKED, "resumed", "x"
    )
    assert await store.lane_backlog(queued[5].transfer_id, AHEAD) == 1 + 2 + 3 + 4 + 5
    assert len(reads) == 4


@pytest.mark.parametrize("seed", [14, 15, 16])
async def test_answers_are_never_less_than_a_read_of_the_lane_and_equal_after_a_second(
    store: SqlTransferStore, seed: int
) -> None:
    """Creations, state changes (into, within and out of the states asked), reasons, a
    resume from FAILED and another lane, in random order: after each, every transfer's
    backlog for both sets of states is at least a brute-force read of the lane (no
    transfer overtakes an earlier one), and equal to it once the kept reads are older
    than MAX_AGE_S."""
    now = clocked(store)
    rng = random.Random(seed)
    records = []
    states = list(TransferState)
    n = 0
    for step in range(80):
        op = rng.random()
        if op < 0.35 or not records:
            n += 1
            source = "brokerage-a" if rng.random() < 0.8 else "brokerage-c"
            r = make_record(n, state=rng.choice(AHEAD), amount=rng.randint(1, 50),
                            source_ledger=source)  # fmt: skip
            await store.create(r)
            records.append(r)
        elif op < 0.85:
            r = rng.choice(records)
            await store.set_state(r.transfer_id, rng.choice(states), f"step {step}", "x")
        elif op < 0.95:
            r = rng.choice(records)
            await store.set_state(r.transfer_id, TransferState.FAILED, "failed", "x")
            assert await store.resume_failed(
                r.transfer_id, TransferState.SOURCE_LOCKED, "resumed", "x"
            )
        else:
            now[0] += 1.5
        for r in records:
            for asked in (AHEAD[:2], AHEAD):
                got = await store.lane_backlog(r.transfer_id, asked)
                exact = await brute_force(store, r.transfer_id, asked)
                assert got >= exact, (step, r.request.idempotency_key, got, exact)
        if step % 10 == 9:
            now[0] += 1.5
            for r in records:
                for asked in (AHEAD[:2], AHEAD):
                    got = await store.lane_backlog(r.transfer_id, asked)
                    assert got == await brute_force(store, r.transfer_id, asked), step


def test_kept_reads_answer_only_while_current_and_young() -> None:
    now = [100.0]
    lanes = LaneBacklogs(clock=lambda: now[0])
    states = (1, 2)
    epoch = lanes.begin(LANE, states)
    lanes.created(LANE, 11, 7, 1)  # committed after the read's snapshot
    lanes.keep(LANE, states, epoch, 10, [(3, 10), (7, 5), (9, 1)])
    assert [lanes.ahead(LANE, states, s) for s in (1, 3, 4, 9, 10)] == [0, 0, 10, 15, 16]
    assert lanes.ahead(LANE, states, 11) == 16, "the creation counted"
    assert lanes.ahead(LANE, states, 12) is None, "created after, not recorded: read again"
    lanes.created(LANE, 12, 4, 3)  # a state not asked (an adoption, SOURCE_LOCKED)
    lanes.created(LANE, 13, 2, 2)
    assert lanes.ahead(LANE, states, 13) == 16 + 7
    assert lanes.ahead(LANE, states, 14) is None
    lanes.created(LANE, 14, 1, 1)
    assert lanes.ahead(LANE, states, 14) == 16 + 7 + 2
    assert lanes.ahead(LANE, (1,), 9) is None, "other states: not kept"
    lanes.created(("X", "a", "b"), 15, 1, 1)
    assert lanes.ahead(LANE, states, 9) == 15, "another lane's creation"
    now[0] += 1.5
    assert lanes.ahead(LANE, states, 9) is None, "older than MAX_AGE_S"
    epoch = lanes.begin(LANE, states)
    lanes.changed_all()  # a resume while the read ran
    lanes.keep(LANE, states, epoch, 15, [(3, 10)])
    assert lanes.ahead(LANE, states, 9) is None, "a read begun before a resume is not kept"
    epoch = lanes.begin(LANE, states)
    lanes.abandon(LANE, states)
    lanes.keep(LANE, states, lanes.begin(LANE, states), 15, [(3, 10)])
    assert lanes.ahead(LANE, states, 9) == 10
    lanes.moved(LANE, 1, 5)  # leaves the states: still counted (never less)
    assert lanes.ahead(LANE, states, 9) == 10
    lanes.moved(LANE, 5, 2)  # enters them from outside: read again
    assert lanes.ahead(LANE, states, 9) is None


async def test_a_creation_whose_caller_was_cancelled_after_the_commit_is_not_missed(
    store: SqlTransferStore,
) -> None:
    """A create_many cancelled while its write commits cannot record the creation: every
    kept lane read is dropped, so a later transfer is not answered without it."""
    import asyncio

    clocked(store)
    first = make_record(1, state=TransferState.QUEUED, amount=5)
    await store.create(first)
    assert await store.lane_backlog(first.transfer_id, AHEAD[:2]) == 0  # a read kept
    write = store._db.write

    async def commits_then_cancelled(fn: Any) -> Any:
        await write(fn)
        raise asyncio.CancelledError

    store._db.write = commits_then_cancelled  # type: ignore[method-assign]
    lost = make_record(2, state=TransferState.QUEUED, amount=7)
    with pytest.raises(asyncio.CancelledError):
        await store.create(lost)
    store._db.write = write  # type: ignore[method-assign]
    later = make_record(3, state=TransferState.QUEUED, amount=1)
    await store.create(later)
    assert await store.lane_backlog(later.transfer_id, AHEAD[:2]) == 5 + 7


def test_a_full_cache_keeps_the_creations_of_the_read_it_keeps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review helper-118 #1: keeping a read when MAX_KEPT reads are kept clears them; it
    dropped the creations of the lane being kept too (no longer among those being read),
    so a later transfer was answered without an earlier one created during the read."""
    import bridge.coordinator.lane_backlogs as module

    monkeypatch.setattr(module, "MAX_KEPT", 2)
    lanes = LaneBacklogs(clock=lambda: 100.0)
    states = (1, 2)
    for other in ("X", "Y"):
        lane = (other, "a", "b")
        lanes.keep(lane, states, lanes.begin(lane, states), 5, [(1, 1)])
    epoch = lanes.begin(LANE, states)
    lanes.created(LANE, 20, 100, 1)  # A: after the read's snapshot
    lanes.keep(LANE, states, epoch, 10, [(3, 7)])  # the cache is full: cleared first
    lanes.created(LANE, 21, 1, 1)  # B
    assert lanes.ahead(LANE, states, 21) == 7 + 100


def test_an_unrecorded_write_of_a_lane_makes_only_that_lanes_reads_stale() -> None:
    """Review helper-118 #3: a cancelled or failed create drops the reads of its records'
    lanes (kept or running), not every lane's."""
    lanes = LaneBacklogs(clock=lambda: 100.0)
    states = (1, 2)
    other = ("X", "a", "b")
    lanes.keep(other, states, lanes.begin(other, states), 5, [(1, 1)])
    lanes.keep(LANE, states, lanes.begin(LANE, states), 5, [(2, 3)])
    running = lanes.begin(LANE, (1,))
    assert lanes.ahead(LANE, states, 4) == 3
    lanes.changed([LANE])
    assert lanes.ahead(LANE, states, 4) is None
    assert lanes.ahead(other, states, 4) == 1, "another lane's read stays"
    lanes.keep(LANE, (1,), running, 5, [(2, 3)])
    assert lanes.ahead(LANE, (1,), 4) is None, "a read running across it is not kept"
