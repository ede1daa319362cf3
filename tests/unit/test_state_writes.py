"""EngineContext.set_state judges a change by the state the store held at the write, not by
the caller's copy of the record (review helper-119 L3): a stale copy made a second writer
of one change count, release and announce it again (an unfinished count one below the truth
until the next sweep, against UnfinishedCounts' guarantee; a second wake of the lane; a
second log line and metric). The stepper is such a writer: it ends a transfer FAILED with
the record it read when its step began."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from bridge.coordinator.changes import Changes
from bridge.coordinator.context import EngineContext
from bridge.coordinator.records import TransferRecord
from bridge.coordinator.state_writes import StateWrites
from bridge.coordinator.store import SqliteTransferStore
from bridge.domain.transfer import TransferState
from tests.unit.test_store import make_record

pytestmark = [pytest.mark.unit, pytest.mark.batch]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteTransferStore]:
    s = SqliteTransferStore(tmp_path / "coordinator.sqlite")
    yield s
    s.close()


async def _stale_copy(
    store: SqliteTransferStore, n: int, stored: TransferState | None = None
) -> TransferRecord:
    """A new transfer's record as created (SUBMITTED); the store then moves it to
    ``stored`` (if given), so the copy returned is stale."""
    record = make_record(n)
    await store.create(record)
    if stored is not None:
        await store.set_state(record.transfer_id, stored, "", "moved on")
    return record


@pytest.fixture(params=[False, True], ids=["alone", "coalesced"])
def coalesced(request: pytest.FixtureRequest) -> bool:
    """Whether the context's state writes go through :class:`StateWrites` (with batching)."""
    return bool(request.param)


def _context(
    store: SqliteTransferStore, released: list[TransferRecord], coalesced: bool = False
) -> EngineContext:
    none: Any = None  # the layers set_state does not touch
    ctx = EngineContext(
        network=none, store=store, relayers={}, committee=none, ttl=60, max_backoff=1.0,
        queue_recheck_max=1.0, supply=None, sweep_every=1.0, halts=None, epochs=None,
        domains={}, ledger_by_word={}, log=structlog.get_logger("test"),
        released=released.append,
    )  # fmt: skip
    if coalesced:
        ctx.state_writes = StateWrites(store, max_in_flight=2)
    return ctx


async def test_two_writers_of_one_change_count_release_and_announce_it_once(
    store: SqliteTransferStore, coalesced: bool
) -> None:
    stale = await _stale_copy(store, 1)  # SUBMITTED: ahead at its source, unfinished
    released: list[TransferRecord] = []
    ctx = _context(store, released, coalesced)
    ledger = stale.request.source_ledger
    ctx.unfinished.recount({ledger: 2})
    changes = Changes()
    ctx.watchers[stale.transfer_id] = {changes}
    with capture_logs() as logs:
        first = await ctx.set_state(stale, TransferState.FAILED, "deadline passed")
        assert changes.take() == {stale.transfer_id}
        # The other writer still holds the SUBMITTED copy and records the same state.
        second = await ctx.set_state(stale, TransferState.FAILED, "not locked: deadline")
    assert (first.state, second.state) == (TransferState.FAILED, TransferState.FAILED)
    assert second.reason == "not locked: deadline"  # the reason is still recorded
    assert ctx.unfinished.of(ledger) == 1  # ended once (it was 0 with the stale copy)
    assert [r.transfer_id for r in released] == [stale.transfer_id]
    assert changes.take() == set()  # announced once
    said = [e for e in logs if e["event"] == "transfer state"]
    assert len(said) == 1
    history = await store.history(stale.transfer_id, 0)
    assert [h.state for h in history].count(TransferState.FAILED) == 1


async def test_a_stale_copy_still_announces_a_change_the_store_had_not_seen(
    store: SqliteTransferStore, coalesced: bool
) -> None:
    """The other way round: the store moved on (TARGET_PREPARED) while the caller's copy
    says SUBMITTED; a write of FAILED is a change from TARGET_PREPARED, not from SUBMITTED,
    so the lane behind it is not woken (the transfer took its capacity at both ledgers)."""
    stale = await _stale_copy(store, 2, TransferState.TARGET_PREPARED)
    released: list[TransferRecord] = []
    ctx = _context(store, released, coalesced)
    ctx.unfinished.recount({stale.request.source_ledger: 1})
    with capture_logs() as logs:
        await ctx.set_state(stale, TransferState.FAILED, "refused")
    assert released == []
    assert ctx.unfinished.of(stale.request.source_ledger) == 0
    assert [e["state"] for e in logs if e["event"] == "transfer state"] == ["FAILED"]


async def test_a_transfer_failed_before_its_prepare_wakes_its_lane(
    store: SqliteTransferStore, coalesced: bool
) -> None:
    """Review helper-128: an adoption whose source shows no lock fails from SOURCE_LOCKED;
    the transfers queued behind it counted it ahead at the target (it had not prepared),
    so its lane is woken, as for one failed before its lock. One failed later is not."""
    locked = await _stale_copy(store, 6, TransferState.SOURCE_LOCKED)
    prepared = await _stale_copy(store, 7, TransferState.TARGET_PREPARED)
    released: list[TransferRecord] = []
    ctx = _context(store, released, coalesced)
    await ctx.set_state(locked, TransferState.FAILED, "no lock past its deadline")
    await ctx.set_state(prepared, TransferState.FAILED, "failed")
    assert [r.transfer_id for r in released] == [locked.transfer_id]


async def test_a_stale_copy_of_a_finished_transfer_does_not_end_it_twice(
    store: SqliteTransferStore, coalesced: bool
) -> None:
    """The store already holds a terminal state (FAILED) and a copy still showing SUBMITTED
    writes another (ABORTED): a terminal-to-terminal change, not one more transfer ended
    (review helper-125: the test above passed with only this condition on the copy)."""
    stale = await _stale_copy(store, 3, TransferState.FAILED)
    released: list[TransferRecord] = []
    ctx = _context(store, released, coalesced)
    ctx.unfinished.recount({stale.request.source_ledger: 1})  # another transfer's
    await ctx.set_state(stale, TransferState.ABORTED, "aborted")
    assert ctx.unfinished.of(stale.request.source_ledger) == 1
    assert released == []


async def test_a_write_whose_outcome_is_unknown_still_marks_the_transfer(
    store: SqliteTransferStore, coalesced: bool
) -> None:
    """A state write that raises may have committed: the transfer's watchers are marked so
    they read it again (review helper-125), and the error reaches the caller."""
    rec = await _stale_copy(store, 4)
    ctx = _context(store, [], coalesced)
    changes = Changes()
    ctx.watchers[rec.transfer_id] = {changes}
    store.close()  # every write now fails
    with pytest.raises(Exception):  # noqa: B017, PT011 - the store's own error type
        await ctx.set_state(rec, TransferState.FAILED, "deadline passed")
    assert changes.take() == {rec.transfer_id}


async def test_two_writers_of_one_change_in_one_turn_count_it_once(
    store: SqliteTransferStore,
) -> None:
    """Coalesced, the two writers' changes of one transfer are one store write: its second
    round sees the first's state, so the change is counted, released and announced once."""
    stale = await _stale_copy(store, 5)
    released: list[TransferRecord] = []
    ctx = _context(store, released, coalesced=True)
    ledger = stale.request.source_ledger
    ctx.unfinished.recount({ledger: 2})
    with capture_logs() as logs:
        first, second = await asyncio.gather(
            ctx.set_state(stale, TransferState.FAILED, "deadline passed"),
            ctx.set_state(stale, TransferState.FAILED, "not locked: deadline"),
        )
    assert (first.reason, second.reason) == ("deadline passed", "not locked: deadline")
    assert ctx.unfinished.of(ledger) == 1
    assert [r.transfer_id for r in released] == [stale.transfer_id]
    assert len([e for e in logs if e["event"] == "transfer state"]) == 1
    history = await store.history(stale.transfer_id, 0)
    assert [h.state for h in history] == [TransferState.SUBMITTED, TransferState.FAILED]
