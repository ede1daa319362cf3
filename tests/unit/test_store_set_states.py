"""Coalesced state writes (issue 14): ``TransferStore.set_states`` answers and records each
change exactly as ``set_state`` one after the other would have (previous state, record,
history entry, flow wait), in one write; an unknown transfer or an unreadable row fails
its own changes only. :class:`StateWrites` carries the changes made in one loop turn in
one such write, and answers each caller its own outcome. SQLite and a real PostgreSQL
cluster (the store tests' fixture)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from bridge.coordinator.db import DatabaseUnavailable, Dialect, open_database
from bridge.coordinator.records import StateChange, StateWrite, TransferRecord
from bridge.coordinator.state_writes import StateWrites
from bridge.coordinator.store import SqlTransferStore, UnreadableRecord
from bridge.domain.flow import WaitReason
from bridge.domain.transfer import TransferState
from tests.unit.test_store import db_path, make_record, make_store, store

__all__ = ["db_path", "make_store", "store"]

pytestmark = [pytest.mark.unit, pytest.mark.batch]

S = TransferState


@dataclass(frozen=True)
class _Seen:
    """What a change left, with the transfer's identity and clock readings taken out."""

    previous: S
    state: S
    reason: str
    wait: WaitReason
    history: tuple[tuple[int, S, str], ...]


async def _created(store: SqlTransferStore, first: int, count: int) -> list[TransferRecord]:
    records = [make_record(n) for n in range(first, first + count)]
    await store.create_many(records)
    for r in records:  # every transfer waits on a flow limit: a change ends it (not QUEUED)
        await store.set_wait(r.transfer_id, WaitReason.SOURCE_OUTBOUND_CAPACITY, 5.0)
    return records


def _script(ids: Sequence[bytes]) -> list[tuple[bytes, S, str]]:
    """Changes over four transfers: two of one transfer in a row, one to the state it
    holds (reason only), one to QUEUED (its wait stays), one to a terminal state."""
    a, b, c, d = ids
    return [
        (a, S.SOURCE_LOCKED, "locked"),
        (b, S.QUEUED, "queued: source flow"),
        (a, S.TARGET_PREPARED, "prepared"),
        (c, S.SUBMITTED, "still submitted"),
        (d, S.FAILED, "deadline passed"),
        (a, S.TARGET_PREPARED, "prepared again"),
        (b, S.SOURCE_LOCKED, "locked"),
    ]


async def _seen(store: SqlTransferStore, write: StateWrite) -> _Seen:
    history = await store.history(write.record.transfer_id, 0)
    return _Seen(
        write.previous,
        write.record.state,
        write.record.reason,
        write.record.wait_reason,
        tuple((h.sequence, h.state, h.detail) for h in history),
    )


async def test_set_states_answers_and_records_as_one_set_state_after_another(
    store: SqlTransferStore,
) -> None:
    alone = [r.transfer_id for r in await _created(store, 1, 4)]
    together = [r.transfer_id for r in await _created(store, 11, 4)]
    one_by_one = [await store.set_state(t, s, why, why) for t, s, why in _script(alone)]
    at_once = await store.set_states(
        [StateChange(t, s, why, why) for t, s, why in _script(together)]
    )
    assert all(isinstance(w, StateWrite) for w in at_once)
    # Each answer is the one its change got alone, and each transfer ends the same: the
    # answers are read after all of a round's changes, so compare the final histories.
    expected = [await _seen(store, w) for w in one_by_one]
    got = [await _seen(store, w) for w in at_once if isinstance(w, StateWrite)]
    assert [(e.previous, e.state, e.reason, e.wait) for e in expected] == [
        (g.previous, g.state, g.reason, g.wait) for g in got
    ]
    assert [e.history for e in expected] == [g.history for g in got]
    # The two changes of one transfer in one call: the second saw the first.
    assert [w.previous for w in at_once if isinstance(w, StateWrite)][:3] == [
        S.SUBMITTED,
        S.SUBMITTED,
        S.SOURCE_LOCKED,
    ]
    # QUEUED kept its wait, the others ended it; a change to the held state added no entry.
    assert got[1].wait is WaitReason.SOURCE_OUTBOUND_CAPACITY and got[6].wait is WaitReason.NONE
    assert got[3].history == ((1, S.SUBMITTED, "accepted"),)
    # The answer to a transfer's last change is its stored record, field for field, and
    # each first change saw the row as created (its updated_at).
    last = {w.record.transfer_id: w for w in at_once if isinstance(w, StateWrite)}
    for tid in together:
        assert await store.get(tid) == last[tid].record
    first_of_a, second_of_a = at_once[0], at_once[2]
    assert isinstance(first_of_a, StateWrite) and isinstance(second_of_a, StateWrite)
    assert first_of_a.previous_at == make_record(11).updated_at
    assert second_of_a.previous_at == first_of_a.record.updated_at


async def test_an_unknown_transfer_fails_its_own_change_only(store: SqlTransferStore) -> None:
    (known,) = await _created(store, 21, 1)
    ghost = make_record(22).transfer_id  # never created
    answers = await store.set_states(
        [
            StateChange(ghost, S.SOURCE_LOCKED, "locked", "locked"),
            StateChange(known.transfer_id, S.SOURCE_LOCKED, "locked", "locked"),
        ]
    )
    assert isinstance(answers[0], KeyError) and answers[0].args == (ghost.hex(),)
    assert isinstance(answers[1], StateWrite) and answers[1].record.state is S.SOURCE_LOCKED
    assert await store.get(ghost) is None
    assert [h.state for h in await store.history(ghost, 0)] == []


async def test_an_unreadable_row_fails_its_own_changes_only(store: SqlTransferStore) -> None:
    damaged, sound = await _created(store, 31, 2)

    def damage(db):  # type: ignore[no-untyped-def]
        db.execute(
            "UPDATE transfers SET request = ? WHERE transfer_id = ?",
            ("{not json", damaged.transfer_id),
        )

    await store._db.write(damage)
    answers = await store.set_states(
        [
            StateChange(damaged.transfer_id, S.SOURCE_LOCKED, "locked", "locked"),
            StateChange(sound.transfer_id, S.SOURCE_LOCKED, "locked", "locked"),
            StateChange(damaged.transfer_id, S.TARGET_PREPARED, "prepared", "prepared"),
        ]
    )
    assert isinstance(answers[0], UnreadableRecord) and isinstance(answers[2], UnreadableRecord)
    assert isinstance(answers[1], StateWrite) and answers[1].previous is S.SUBMITTED
    # Nothing of the damaged transfer's changes was recorded.
    assert [h.state for h in await store.history(damaged.transfer_id, 0)] == [S.SUBMITTED]
    sound_now = await store.get(sound.transfer_id)
    assert sound_now is not None and sound_now.state is S.SOURCE_LOCKED


class _Counted(SqlTransferStore):
    """The real store, counting its ``set_states`` calls and able to fail them."""

    calls: list[int]
    fail: BaseException | None
    gate: asyncio.Event | None

    async def set_states(self, changes: Sequence[StateChange]) -> list[StateWrite | Exception]:
        self.calls.append(len(changes))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return await super().set_states(changes)


def _counted(store: SqlTransferStore) -> _Counted:
    counted = _Counted(store._db)
    counted.calls, counted.fail, counted.gate = [], None, None
    return counted


async def test_changes_made_in_one_turn_are_one_write_answered_each_its_own(
    store: SqlTransferStore,
) -> None:
    counted = _counted(store)
    writes = StateWrites(counted, max_in_flight=1)
    records = await _created(store, 41, 6)
    ghost = make_record(47).transfer_id
    lone = await writes.set_state(records[0].transfer_id, S.SOURCE_LOCKED, "locked", "locked")
    assert lone.previous is S.SUBMITTED and counted.calls == [1]  # out at once
    answers = await asyncio.gather(
        *(writes.set_state(r.transfer_id, S.SOURCE_LOCKED, "l", "l") for r in records[1:]),
        writes.set_state(ghost, S.SOURCE_LOCKED, "l", "l"),
        return_exceptions=True,
    )
    assert counted.calls == [1, 6]  # the six changes of one turn: one write
    assert all(isinstance(a, StateWrite) and a.previous is S.SUBMITTED for a in answers[:5])
    assert [a.record.transfer_id for a in answers[:5] if isinstance(a, StateWrite)] == [
        r.transfer_id for r in records[1:]
    ]
    assert isinstance(answers[5], KeyError)
    await writes.close()


async def test_a_failed_write_fails_every_change_it_carried(store: SqlTransferStore) -> None:
    counted = _counted(store)
    writes = StateWrites(counted, max_in_flight=1)
    records = await _created(store, 51, 3)
    counted.fail = DatabaseUnavailable("database test unavailable: gone")
    answers = await asyncio.gather(
        *(writes.set_state(r.transfer_id, S.SOURCE_LOCKED, "l", "l") for r in records),
        return_exceptions=True,
    )
    assert all(a is counted.fail for a in answers)
    for r in records:  # nothing written
        assert [h.state for h in await store.history(r.transfer_id, 0)] == [S.SUBMITTED]
    await writes.close()


async def test_a_change_cancelled_before_its_write_is_never_made(
    store: SqlTransferStore,
) -> None:
    counted = _counted(store)
    writes = StateWrites(counted, max_in_flight=1)
    first, second = await _created(store, 61, 2)
    counted.gate = asyncio.Event()  # the first write stays in flight until it is set
    going = asyncio.ensure_future(writes.set_state(first.transfer_id, S.SOURCE_LOCKED, "l", "l"))
    for _ in range(3):  # the call, then its write, run
        await asyncio.sleep(0)
    assert counted.calls == [1]
    waiting = asyncio.ensure_future(writes.set_state(second.transfer_id, S.SOURCE_LOCKED, "l", "l"))
    await asyncio.sleep(0)  # queued behind the write in flight
    waiting.cancel()
    counted.gate.set()
    await asyncio.gather(going, waiting, return_exceptions=True)
    assert waiting.cancelled() and going.result().record.state is S.SOURCE_LOCKED
    for _ in range(5):  # room for a next write, were one to start
        await asyncio.sleep(0)
    assert counted.calls == [1]  # the cancelled change left before the write took it
    held = await store.get(second.transfer_id)
    assert held is not None and held.state is S.SUBMITTED
    assert [h.state for h in await store.history(second.transfer_id, 0)] == [S.SUBMITTED]
    await writes.close()


async def test_a_call_of_more_changes_than_a_page_writes_each_in_order(
    store: SqlTransferStore,
) -> None:
    """More distinct transfers than one statement's page (500), some changed twice: every
    change is made, in order, and each answer's lane bookkeeping is the one ``set_state``
    makes (``LaneBacklogs.moved`` with the state held before and the new one)."""
    records = [make_record(n) for n in range(1000, 1620)]
    for start in range(0, len(records), 500):
        await store.create_many(records[start : start + 500])
    changes = [StateChange(r.transfer_id, S.SOURCE_LOCKED, "l", "l") for r in records]
    changes += [StateChange(r.transfer_id, S.TARGET_PREPARED, "p", "p") for r in records[:30]]
    moved: list[tuple[int, int]] = []
    real_moved = store._backlogs.moved
    store._backlogs.moved = lambda lane, old, new: (
        moved.append((old, new))
        or real_moved(  # type: ignore[method-assign]
            lane, old, new
        )
    )
    answers = await store.set_states(changes)
    assert all(isinstance(a, StateWrite) for a in answers)
    assert [a.previous for a in answers if isinstance(a, StateWrite)] == [S.SUBMITTED] * 620 + [
        S.SOURCE_LOCKED
    ] * 30
    assert (
        moved
        == [(int(S.SUBMITTED), int(S.SOURCE_LOCKED))] * 620
        + [(int(S.SOURCE_LOCKED), int(S.TARGET_PREPARED))] * 30
    )
    for r, want in ((records[0], S.TARGET_PREPARED), (records[-1], S.SOURCE_LOCKED)):
        got = await store.get(r.transfer_id)
        assert got is not None and got.state is want
    assert [h.sequence for h in await store.history(records[0].transfer_id, 0)] == [1, 2, 3]


async def _refused_alone(
    store: SqlTransferStore, damaged: TransferRecord, sound: TransferRecord
) -> None:
    """``damaged``'s change is refused UnreadableRecord and ``sound``'s made, in one
    ``set_states``; ``set_state`` alone refuses ``damaged`` the same way."""
    answers = await store.set_states(
        [
            StateChange(damaged.transfer_id, S.FAILED, "f", "f"),
            StateChange(sound.transfer_id, S.FAILED, "f", "f"),
        ]
    )
    assert isinstance(answers[0], UnreadableRecord) and isinstance(answers[1], StateWrite)
    with pytest.raises(UnreadableRecord):
        await store.set_state(damaged.transfer_id, S.FAILED, "f", "f")


async def test_a_row_holding_a_state_this_release_does_not_know_fails_its_change_only(
    store: SqlTransferStore,
) -> None:
    """A row whose state a newer release wrote: its change is refused UnreadableRecord and
    nothing of it is written (before, the row was updated and the answer failed after the
    commit); the other changes of the call are made."""
    newer, sound = await _created(store, 71, 2)

    def newer_state(db):  # type: ignore[no-untyped-def]
        db.execute("UPDATE transfers SET state = 99 WHERE transfer_id = ?", (newer.transfer_id,))

    await store._db.write(newer_state)
    await _refused_alone(store, newer, sound)

    def state_of(db):  # type: ignore[no-untyped-def]
        return db.execute(
            "SELECT state FROM transfers WHERE transfer_id = ?", (newer.transfer_id,)
        ).fetchone()[0]

    assert await store._db.read(state_of) == 99


async def _damage_time(store: SqlTransferStore, transfer_id: bytes) -> None:
    """Make the row's ``updated_at`` text that is not a number (SQLite keeps it in a REAL
    column); skips on PostgreSQL, which types the column."""

    def damage(db):  # type: ignore[no-untyped-def]
        db.execute("UPDATE transfers SET updated_at = 'x' WHERE transfer_id = ?", (transfer_id,))

    if store._db.dialect is Dialect.POSTGRES:
        pytest.skip("PostgreSQL types the column: a time is always a number there")
    await store._db.write(damage)


async def test_a_damaged_time_fails_its_own_change_only(store: SqlTransferStore) -> None:
    """Review helper-131 M2: a row whose ``updated_at`` is not a number (SQLite keeps text
    in a REAL column) failed the whole coalesced write with a ValueError, every change of
    it; it is that change's UnreadableRecord now, here and in ``set_state``."""
    damaged, sound = await _created(store, 81, 2)
    await _damage_time(store, damaged.transfer_id)
    await _refused_alone(store, damaged, sound)
    assert [h.state for h in await store.history(damaged.transfer_id, 0)] == [S.SUBMITTED]


async def test_a_resume_from_failed_answers_what_it_wrote_and_ends_the_wait(
    store: SqlTransferStore,
) -> None:
    """``resume_failed`` answers the record it wrote and FAILED since its time; like a
    state change it appends one history entry and ends a flow wait (one a stale driver
    wrote after FAILED; review helper-133 L4). A transfer no longer FAILED is not moved,
    and nothing is appended."""
    (rec,) = await _created(store, 91, 1)
    failed = (await store.set_state(rec.transfer_id, S.FAILED, "deadline", "failed")).record
    await store.set_wait(rec.transfer_id, WaitReason.SOURCE_OUTBOUND_CAPACITY, 9.0)
    write = await store.resume_failed(rec.transfer_id, S.SOURCE_LOCKED, "lock found", "resumed")
    assert write is not None
    assert (write.previous, write.previous_at) == (S.FAILED, failed.updated_at)
    assert write.record == await store.get(rec.transfer_id)
    assert (write.record.state, write.record.reason) == (S.SOURCE_LOCKED, "lock found")
    assert (write.record.wait_reason, write.record.not_before) == (WaitReason.NONE, 0.0)
    history = [(h.state, h.detail) for h in await store.history(rec.transfer_id, 0)]
    assert history == [(S.SUBMITTED, "accepted"), (S.FAILED, "failed"),
                       (S.SOURCE_LOCKED, "resumed")]  # fmt: skip
    assert await store.resume_failed(rec.transfer_id, S.SOURCE_LOCKED, "again", "again") is None
    assert len(await store.history(rec.transfer_id, 0)) == 3


async def test_a_resume_of_a_row_with_a_damaged_time_is_refused_and_changes_nothing(
    store: SqlTransferStore,
) -> None:
    (rec,) = await _created(store, 95, 1)
    await store.set_state(rec.transfer_id, S.FAILED, "deadline", "failed")
    await _damage_time(store, rec.transfer_id)
    with pytest.raises(UnreadableRecord):
        await store.resume_failed(rec.transfer_id, S.SOURCE_LOCKED, "lock found", "resumed")

    def state_of(db):  # type: ignore[no-untyped-def]
        return db.execute(
            "SELECT state FROM transfers WHERE transfer_id = ?", (rec.transfer_id,)
        ).fetchone()[0]

    assert await store._db.read(state_of) == int(S.FAILED)
    assert [h.state for h in await store.history(rec.transfer_id, 0)] == [S.SUBMITTED, S.FAILED]


@pytest.mark.postgres
@pytest.mark.security
async def test_a_resume_waits_for_a_concurrent_writer_and_never_moves_what_it_finished(
    request: pytest.FixtureRequest,
) -> None:
    """PostgreSQL, READ COMMITTED: another session that moved the FAILED row on (an operator,
    another coordinator's term before fencing) and has not committed holds the row; the
    resume waits for it, then finds the row no longer FAILED and moves nothing."""
    import psycopg

    url = request.getfixturevalue("fresh_pg_url")
    store = SqlTransferStore(open_database(url))
    try:
        (rec,) = await _created(store, 97, 1)
        await store.set_state(rec.transfer_id, S.FAILED, "deadline", "failed")
        with psycopg.connect(url) as other:
            other.execute(
                "UPDATE transfers SET state = %s WHERE transfer_id = %s",
                (int(S.COMMITTED), rec.transfer_id),
            )
            resume = asyncio.ensure_future(
                store.resume_failed(rec.transfer_id, S.SOURCE_LOCKED, "lock found", "resumed")
            )
            await asyncio.sleep(0.5)
            assert not resume.done(), "the resume waits for the row"
            other.commit()
            assert await asyncio.wait_for(resume, 10) is None
        got = await store.get(rec.transfer_id)
        assert got is not None and got.state is S.COMMITTED
        assert [h.state for h in await store.history(rec.transfer_id, 0)] == [S.SUBMITTED, S.FAILED]
    finally:
        store.close()
