"""The batch API's logic (ADR 0023): per-item results, refusals confined to their item, the
recorded batch (SQLite store) and its replay, and the authorisation rules."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridge.coordinator import batches as batches_module
from bridge.coordinator.batch_retention import prune_batches
from bridge.coordinator.batches import (
    YIELD_EVERY,
    BatchQuota,
    BatchRecord,
    BatchRunner,
    Claim,
    ItemError,
    ItemOutcome,
    ItemResult,
    SqlBatchStore,
    fingerprint,
    is_retryable,
    merge_results,
    run_items,
    same_batch,
)
from bridge.coordinator.db import Database, DatabaseUnavailable, open_database, open_sqlite
from bridge.coordinator.ha import StandbyGate
from bridge.coordinator.lease import Fenced
from bridge.coordinator.service import _item_error
from bridge.coordinator.wording import generic_refusal
from bridge.core.reasons import ErrorReason
from bridge.domain.errors import (
    BridgeError,
    BridgeReason,
    Conflict,
    InvalidInput,
    LedgerRejected,
    NotLeader,
    PermissionDenied,
    PreconditionFailed,
    ResourceExhausted,
    Unavailable,
    refused_on_input,
)
from bridge.rpc.roles import Principal
from bridge.rpc.rules import RULES, role_allowed
from bridge.v1 import transfer_pb2

pytestmark = [pytest.mark.unit, pytest.mark.batch]

A, B = "brokerage-a", "brokerage-b"


@dataclass(frozen=True)
class Item:
    idempotency_key: str
    source_ledger: str = A
    refuse: BridgeError | None = None


def _error_of(exc: BridgeError) -> ItemError:
    return ItemError(type(exc).__name__, exc.kind.value, str(exc), {})


class Submitter:
    """Records what was submitted; refuses an item carrying an error."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    async def __call__(self, item: Item) -> tuple[bytes, bool]:
        if item.refuse is not None:
            raise item.refuse
        self.submitted.append(item.idempotency_key)
        return item.idempotency_key.encode().ljust(32, b"\0"), item.idempotency_key != "old"


async def test_each_item_gets_its_own_result_and_a_refusal_stays_in_its_item() -> None:
    submit = Submitter()
    items = [
        Item("k1"),
        Item("k2", refuse=PreconditionFailed("frozen", ErrorReason.HOLDER_FROZEN, A)),
        Item("old"),
        Item("k3", source_ledger=B),  # another brokerage's ledger
        Item("dup"),
        Item("dup"),
        Item("k4", refuse=InvalidInput("amount must be at least 1")),
        Item("k5"),
    ]
    results = await run_items(A, items, submit, _error_of)
    assert [r.outcome for r in results] == [
        ItemOutcome.CREATED,
        ItemOutcome.REFUSED,
        ItemOutcome.EXISTING,
        ItemOutcome.REFUSED,
        ItemOutcome.REFUSED,
        ItemOutcome.REFUSED,
        ItemOutcome.REFUSED,
        ItemOutcome.CREATED,
    ]
    assert [r.index for r in results] == list(range(8))
    # Refused items were never submitted (nothing recorded for them); the rest were, in order.
    assert submit.submitted == ["k1", "old", "k5"]
    kinds = {r.index: r.error.code for r in results if r.error is not None}
    assert kinds == {
        1: "PreconditionFailed",
        3: "PermissionDenied",
        4: "InvalidInput",
        5: "InvalidInput",
        6: "InvalidInput",
    }
    assert all((r.error is None) == (r.transfer_id is not None) for r in results)


async def test_only_refusals_of_the_callers_own_input_are_marked() -> None:
    """The batch quota counts items refused on their own input: the batch's own rules (a
    repeated key, another ledger) and refusals marked ``on_input`` where the coordinator
    raises them (a malformed field, a bad signature, a deadline, a key or transfer id
    already used). A refusal from a ledger, a relayer or an outage, whatever its code, is
    not marked (review helper-110 H1)."""
    bad_signature = PermissionDenied("instruction signature is not the instructor's")
    items = [
        Item("k1"),
        Item("k2", refuse=refused_on_input(bad_signature)),
        Item("k3", source_ledger=B),
        Item("dup"),
        Item("dup"),
        Item("k4", refuse=PermissionDenied("a relayer's PERMISSION_DENIED")),
        Item("k5", refuse=PreconditionFailed("frozen", ErrorReason.HOLDER_FROZEN, A)),
        Item("k6", refuse=Unavailable("brokerage-b could not be read now; retry")),
    ]
    results = await run_items(A, items, Submitter(), _item_error)
    assert [r.on_input for r in results] == [False, True, True, True, True] + [False] * 3
    assert results[1].error is not None and results[1].error.code == "PERMISSION_DENIED"
    assert results[1].outcome is ItemOutcome.REFUSED
    assert results[7].outcome is ItemOutcome.RETRYABLE


async def test_items_refused_by_the_batchs_own_rules_let_the_event_loop_run() -> None:
    """Review helper-106 L1: 2,500 items naming another ledger are refused without an
    await; the loop still runs other tasks while they are settled (before: not once)."""
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    items = [Item(f"k{i}", source_ledger=B) for i in range(2500)]
    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)  # the ticker starts
    started = turns
    results = await run_items(A, items, Submitter(), _error_of)
    during = turns - started
    task.cancel()
    assert [r.outcome for r in results] == [ItemOutcome.REFUSED] * 2500
    assert during >= 2500 // YIELD_EVERY - 1, during


async def test_a_transient_refusal_is_retryable_and_a_replay_runs_only_those() -> None:
    """batchfix defect 2: an error whose ``retryable`` metadata is true (UNAVAILABLE, a
    halt, a full flow limit) is RETRYABLE, not REFUSED; ``indexes`` re-runs only those."""
    submit = Submitter()
    items = [
        Item("k1"),
        Item("k2", refuse=Unavailable("ledger a: read timed out")),
        Item("k3", refuse=PreconditionFailed("frozen", ErrorReason.HOLDER_FROZEN, A)),
    ]
    first = await run_items(A, items, submit, _item_error)
    assert [r.outcome for r in first] == [
        ItemOutcome.CREATED,
        ItemOutcome.RETRYABLE,
        ItemOutcome.REFUSED,
    ]
    assert first[1].error is not None and is_retryable(first[1].error)
    assert first[2].error is not None and not is_retryable(first[2].error)
    record = BatchRecord(A, "b", b"\xaa" * 32, first, 1.0)
    assert record.to_retry == (1,)
    items[1] = Item("k2")  # the ledger answers now
    again = await run_items(A, items, submit, _item_error, set(record.to_retry))
    assert [(r.index, r.outcome) for r in again] == [(1, ItemOutcome.CREATED)]
    assert submit.submitted == ["k1", "k2"]
    merged = merge_results(first, again)
    assert [r.outcome for r in merged] == [
        ItemOutcome.CREATED,
        ItemOutcome.CREATED,
        ItemOutcome.REFUSED,
    ]
    assert merged[2] is first[2]


async def test_a_read_the_ledger_refused_is_retryable_only_for_a_retryable_reason() -> None:
    """Review helper-137 L: a holder or lane read refused at admission carries the ledger's
    typed reason (``generic_refusal``), so its item is RETRYABLE when that reason is (a paused
    token on the recipient's ledger) and REFUSED when it is not (a security not issued
    there); neither is the caller's own input, so neither counts against the batch quota."""
    items = [
        Item(
            "paused",
            refuse=generic_refusal(LedgerRejected(ErrorReason.TOKEN_PAUSED, "peer0 said"), B),
        ),
        Item("unknown", refuse=generic_refusal(LedgerRejected(ErrorReason.UNKNOWN_SECURITY), B)),
    ]
    paused, unknown = await run_items(A, items, Submitter(), _item_error)
    assert paused.outcome is ItemOutcome.RETRYABLE and unknown.outcome is ItemOutcome.REFUSED
    for r in (paused, unknown):
        assert r.error is not None and r.error.metadata["ledger"] == B, r
        assert not r.on_input
    assert paused.error is not None and paused.error.reason == "TOKEN_PAUSED"
    assert unknown.error is not None and unknown.error.reason == "UNKNOWN_SECURITY"
    assert "peer0" not in paused.error.message


async def test_not_leader_fails_the_whole_batch() -> None:
    items = [Item("k1"), Item("k2", refuse=NotLeader("standby", "10.0.0.2:50051"))]
    with pytest.raises(NotLeader):
        await run_items(A, items, Submitter(), _error_of)


def test_item_errors_are_what_submit_transfer_would_answer() -> None:
    e = _item_error(PreconditionFailed("sender is frozen", ErrorReason.HOLDER_FROZEN, A))
    assert (e.code, e.reason, e.message) == (
        "FAILED_PRECONDITION",
        "HOLDER_FROZEN",
        "sender is frozen",
    )
    assert e.metadata["ledger"] == A and e.metadata["retryable"] == "false"
    e = _item_error(PermissionDenied("not yours"))
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "PERMISSION_DENIED")
    e = _item_error(InvalidInput("bad"))
    assert (e.code, e.reason) == ("INVALID_ARGUMENT", "INVALID_REQUEST")


def test_the_fingerprint_covers_every_item() -> None:
    one = transfer_pb2.SubmitTransferRequest(idempotency_key="k", amount="1")
    req = transfer_pb2.SubmitTransfersRequest(batch_id="b", source_ledger=A, items=[one])
    other = transfer_pb2.SubmitTransfersRequest()
    other.CopyFrom(req)
    other.items[0].amount = "2"
    fp = fingerprint(req.SerializeToString(deterministic=True))
    assert fp == fingerprint(req.SerializeToString(deterministic=True))
    assert fp != fingerprint(other.SerializeToString(deterministic=True))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """The coordinator's database, migrated: a SQLite file or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        db = open_sqlite(tmp_path / "coordinator.sqlite")
    else:
        db = open_database(request.getfixturevalue("fresh_pg_url"))
    yield db
    db.close()


async def test_a_recorded_batch_is_kept_and_replayed(database: Database) -> None:
    store = SqlBatchStore(database)
    try:
        results = (
            ItemResult(0, "k1", ItemOutcome.CREATED, transfer_id=b"\x01" * 32),
            ItemResult(
                1,
                "k2",
                ItemOutcome.REFUSED,
                error=ItemError("FAILED_PRECONDITION", "HOLDER_FROZEN", "frozen", {"ledger": A}),
            ),
        )
        fp = b"\xaa" * 32
        claim = await store.claim(A, "b1", fp, "owner-1", 1.0, items=1)
        assert claim == Claim(None, True)
        # While reserved: pending, no results; the same batch id with other items is kept.
        pending = await store.get(A, "b1")
        assert pending is not None and pending.pending and pending.results == ()
        first = BatchRecord(A, "b1", fp, results, 1.0)
        stored, written = await store.finish(first, "owner-1")
        assert written and stored.results == results and not stored.pending
        # A second claim (a replay) of a finished batch with nothing to retry runs nothing.
        again = await store.claim(A, "b1", fp, "owner-2", 2.0, items=1)
        assert not again.claimed and again.record == stored
        other = await store.claim(A, "b1", b"\xbb" * 32, "owner-3", 2.0, items=1)
        assert not other.claimed and other.record is not None
        with pytest.raises(Conflict):
            same_batch(other.record, b"\xbb" * 32)
        assert same_batch(stored, fp) is stored
        # A finish by an owner that no longer holds the batch writes nothing.
        late = BatchRecord(A, "b1", fp, results[:1], 3.0)
        kept, written = await store.finish(late, "owner-1")
        assert not written and kept.results == results
        # Batch ids are scoped per source ledger.
        assert await store.get(B, "b1") is None
        assert (await store.claim(B, "b1", b"\xcc" * 32, "owner-4", 3.0, items=1)).claimed
    finally:
        store.close()


async def test_a_conflicting_request_is_answered_from_the_fingerprint_alone(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review helper-106 M1: another request under a recorded batch's id is answered Conflict
    without parsing the stored results and without a write transaction (a brokerage
    replaying small conflicting requests under its large batches' ids held the database
    thread's write lock while each parse ran)."""
    store = SqlBatchStore(database)
    try:
        fp = b"\xaa" * 32
        assert (await store.claim(A, "big", fp, "o", 1.0, items=1)).claimed
        results = tuple(
            ItemResult(i, f"k{i}", ItemOutcome.CREATED, transfer_id=i.to_bytes(32, "big"))
            for i in range(1000)
        )
        await store.finish(BatchRecord(A, "big", fp, results, 1.0), "o")
        parsed: list[int] = []
        real_parse = batches_module._results_from_json
        monkeypatch.setattr(
            batches_module, "_results_from_json", lambda text: parsed.append(1) or real_parse(text)
        )
        writes: list[int] = []
        real_write = database.write
        monkeypatch.setattr(database, "write", lambda fn: writes.append(1) or real_write(fn))
        other = await store.claim(A, "big", b"\xbb" * 32, "o2", 2.0, items=1)
        assert not other.claimed and other.record is not None
        with pytest.raises(Conflict):
            same_batch(other.record, b"\xbb" * 32)
        assert parsed == [] and writes == []
        # The same request (a replay) still gets its stored results.
        again = await store.claim(A, "big", fp, "o3", 2.0, items=1)
        assert not again.claimed and again.record is not None and again.record.results == results
    finally:
        store.close()


async def test_a_replay_beside_a_conflicting_request_gets_its_results(database: Database) -> None:
    """Review helper-108 M1: a conflicting request under a recorded batch's id is running
    when the batch's own replay arrives; the replay does not share its answer (the stored
    batch without results): it gets the recorded results, the other request Conflict."""
    store = SqlBatchStore(database)
    try:
        fp, other = b"\xaa" * 32, b"\xbb" * 32
        assert (await store.claim(A, "big", fp, "o", 1.0, items=1)).claimed
        results = tuple(
            ItemResult(i, f"k{i}", ItemOutcome.CREATED, transfer_id=i.to_bytes(32, "big"))
            for i in range(3)
        )
        await store.finish(BatchRecord(A, "big", fp, results, 1.0), "o")
        runner = BatchRunner(store)

        async def never(indexes: Any) -> tuple[ItemResult, ...]:
            raise AssertionError("a finished batch ran again")

        conflicting = asyncio.ensure_future(runner.submit(A, "big", other, never, 2.0, items=1))
        await asyncio.sleep(0)  # its task is running
        replay = asyncio.ensure_future(runner.submit(A, "big", fp, never, 2.0, items=1))
        with pytest.raises(Conflict):
            await conflicting
        record, created = await replay
        assert record.results == results and not created
    finally:
        store.close()


async def test_an_orphaned_reservation_is_taken_over_once(database: Database) -> None:
    """A call that died (or lost its lease) mid-batch leaves its reservation pending; the
    next call takes it over by compare-and-set on the owner, and only one of two does."""
    store = SqlBatchStore(database)
    try:
        fp = b"\xaa" * 32
        assert (await store.claim(A, "b", fp, "dead", 1.0, items=1)).claimed
        taken = await store.claim(A, "b", fp, "second", 2.0, items=1)
        assert taken.claimed and taken.record is not None and taken.record.owner == "dead"
        # The dead owner's late finish is refused; the new owner's is recorded.
        result = (ItemResult(0, "k", ItemOutcome.CREATED, transfer_id=b"\x01" * 32),)
        _, written = await store.finish(BatchRecord(A, "b", fp, result, 1.0), "dead")
        assert not written
        stored, written = await store.finish(BatchRecord(A, "b", fp, result, 2.0), "second")
        assert written and stored.results == result and stored.created_at == 1.0
        # A reservation under another request's fingerprint is never taken over.
        assert (await store.claim(A, "c", fp, "x", 1.0, items=1)).claimed
        other = await store.claim(A, "c", b"\xbb" * 32, "y", 2.0, items=1)
        assert not other.claimed and other.record is not None and other.record.owner == "x"
    finally:
        store.close()


async def test_expired_finished_batches_are_pruned_and_running_ones_kept(
    database: Database,
) -> None:
    """``prune`` deletes finished records older than the cut-off, a bounded number per
    statement, never a reserved (running) one nor a newer one; the id is then free."""
    store = SqlBatchStore(database)
    try:
        fp = b"\xaa" * 32
        result = (ItemResult(0, "k", ItemOutcome.CREATED, transfer_id=b"\x01" * 32),)
        for i in range(5):  # finished at t = 10..14
            assert (await store.claim(A, f"old-{i}", fp, "o", 10.0 + i, items=1)).claimed
            await store.finish(BatchRecord(A, f"old-{i}", fp, result, 10.0 + i), "o")
        assert (await store.claim(A, "running", fp, "o", 1.0, items=1)).claimed  # reserved, old
        assert (await store.claim(B, "new", fp, "o", 100.0, items=1)).claimed
        await store.finish(BatchRecord(B, "new", fp, result, 100.0), "o")
        assert await store.prune(50.0, limit=3) == 3
        assert await store.prune(50.0, limit=3) == 2
        assert await store.prune(50.0, limit=3) == 0
        assert [await store.get(A, f"old-{i}") for i in range(5)] == [None] * 5
        running = await store.get(A, "running")
        assert running is not None and running.pending
        assert await store.get(B, "new") is not None
        # A pruned id runs again as a new batch (its items' keys answer their transfers).
        assert (await store.claim(A, "old-0", b"\xbb" * 32, "o2", 200.0, items=1)) == Claim(
            None, True
        )
    finally:
        store.close()


async def test_abandoned_reservations_are_pruned_and_those_running_here_kept(
    database: Database,
) -> None:
    """A reservation left pending by an attempt that died (a crash, a lost lease) and was
    never replayed is deleted once older than the cut-off, when the caller names the owners
    of the attempts it runs (``live``); one under a live owner, or newer, is kept; without
    ``live`` nothing pending is deleted."""
    store = SqlBatchStore(database)
    try:
        fp = b"\xaa" * 32
        for owner in ("dead-1", "dead-2", "running"):
            assert (await store.claim(A, owner, fp, owner, 1.0, items=1)).claimed
        assert (await store.claim(A, "young", fp, "dead-3", 100.0, items=1)).claimed
        assert await store.prune(50.0) == 0  # no owners named: every reservation kept
        assert await store.prune(50.0, limit=1, live={"running"}) == 1
        assert await store.prune(50.0, live={"running"}) == 1
        assert await store.get(A, "dead-1") is None and await store.get(A, "dead-2") is None
        for kept in ("running", "young"):
            record = await store.get(A, kept)
            assert record is not None and record.pending
        assert await store.prune(50.0, live=set()) == 1  # "running" ended: abandoned now
        assert await store.get(A, "running") is None
        # The id is free again: a replay reserves it afresh.
        assert await store.claim(A, "dead-1", fp, "o", 200.0, items=1) == Claim(None, True)
    finally:
        store.close()


async def test_a_replay_taking_over_an_old_reservation_is_never_pruned_mid_run(
    database: Database,
) -> None:
    """Review helper-126: a replay that takes over an old reservation keeps its
    ``created_at``, so pruning by age alone would delete the row under a running replay.
    ``BatchRunner.prune`` keeps every reservation an attempt of this process holds: the
    replay runs to its end and records its results; the abandoned one beside it goes."""
    store = SqlBatchStore(database)
    try:
        fp = b"\xaa" * 32
        assert (await store.claim(A, "taken", fp, "dead", 1.0, items=1)).claimed
        assert (await store.claim(A, "left", fp, "dead", 1.0, items=1)).claimed
        runner = BatchRunner(store)
        running, release = asyncio.Event(), asyncio.Event()
        result = (ItemResult(0, "k", ItemOutcome.CREATED, transfer_id=b"\x01" * 32),)

        async def run(indexes: Any) -> tuple[ItemResult, ...]:
            running.set()
            await release.wait()
            return result

        replay = asyncio.ensure_future(runner.submit(A, "taken", fp, run, 300.0, items=1))
        await asyncio.wait_for(running.wait(), 10)
        assert await runner.prune(50.0) == 1  # "left" only
        assert await store.get(A, "left") is None
        held = await store.get(A, "taken")
        assert held is not None and held.pending and held.created_at == 1.0
        release.set()
        record, _ = await asyncio.wait_for(replay, 10)
        assert record.results == result and not record.pending
        assert await runner.prune(50.0) == 1  # finished now, and old: its window is over
    finally:
        store.close()


def _refused(index: int, retryable: bool = False, on_input: bool = False) -> ItemResult:
    """An item refused (or RETRYABLE) with an error stored beside it; ``on_input``:
    refused on its own input (counted by the quota)."""
    meta = {"retryable": "true"} if retryable else {}
    outcome = ItemOutcome.RETRYABLE if retryable else ItemOutcome.REFUSED
    error = ItemError("PERMISSION_DENIED", "PERMISSION_DENIED", "another ledger", meta)
    return ItemResult(index, f"r{index}", outcome, error=error, on_input=on_input)


async def test_items_refused_on_input_past_the_daily_quota_refuse_new_batch_ids(
    database: Database,
) -> None:
    """Threat model, "batch rows": a brokerage's certificate alone (items refused on their
    own input) can no longer grow the batch rows without bound. Once its batches of the
    last day hold ``refused_per_day`` such items, a new batch id of that ledger is refused
    RESOURCE_EXHAUSTED and nothing is reserved; a ledger's refusals and RETRYABLE items (a
    ledger's, a peer's or an outage's doing: review helper-110 H1) are not counted; replays of recorded ids still answer; another ledger is
    not held by it; the window rolls."""
    quota = BatchQuota(items_per_day=1000, refused_per_day=5)
    store = SqlBatchStore(database, quota)
    fp = b"\xaa" * 32
    try:
        assert (await store.claim(A, "d1", fp, "o", 100.0, items=6)).claimed
        mixed = (
            *(_refused(i, on_input=True) for i in range(3)),
            _refused(3, retryable=True),  # an outage: not counted
            _refused(4),  # a ledger's refusal: not counted
            _refused(5, on_input=True),
        )
        await store.finish(BatchRecord(A, "d1", fp, mixed, 100.0), "o")
        # 4 of 5: a new id still runs; an all-created batch adds nothing.
        assert (await store.claim(A, "d2", fp, "o", 101.0, items=2)).claimed
        created = tuple(
            ItemResult(i, f"c{i}", ItemOutcome.CREATED, transfer_id=bytes([i + 1]) * 32)
            for i in range(2)
        )
        await store.finish(BatchRecord(A, "d2", fp, created, 101.0), "o")
        assert (await store.claim(A, "d3", fp, "o", 102.0, items=1)).claimed
        await store.finish(BatchRecord(A, "d3", fp, (_refused(0, on_input=True),), 102.0), "o")
        with pytest.raises(ResourceExhausted) as refused:
            await store.claim(A, "d4", fp, "o", 103.0, items=1)
        assert refused.value.kind is BridgeReason.RESOURCE_EXHAUSTED
        assert str(refused.value) == (
            f"batches from {A} recorded 5 items refused on their own input in the last 24 h,"
            " the most allowed (max_refused_batch_items_per_day 5); new batch ids are"
            " refused until older ones leave the window"
        )
        assert await store.get(A, "d4") is None  # nothing reserved
        # A replay of a recorded id is served: it re-runs its RETRYABLE item (then answers
        # its results); a conflicting request gets the fingerprint (Conflict).
        replay = await store.claim(A, "d1", fp, "o2", 103.0, items=6)
        assert replay.claimed and replay.record is not None
        assert replay.record.results == mixed and replay.record.to_retry == (3,)
        final = (*mixed[:3], _refused(3), *mixed[4:])
        await store.finish(BatchRecord(A, "d1", fp, final, 100.0), "o2")
        answered = await store.claim(A, "d1", fp, "o3", 103.0, items=6)
        assert not answered.claimed and answered.record is not None
        assert answered.record.results == final  # the marks are stored with the results
        assert [r.on_input for r in answered.record.results] == [1, 1, 1, 0, 0, 1]
        other = await store.claim(A, "d1", b"\xbb" * 32, "o2", 103.0, items=6)
        assert other.record is not None and other.record.fingerprint == fp
        # Another ledger's batches are not held by A's refusals.
        assert (await store.claim(B, "d4", fp, "o", 103.0, items=1)).claimed
        # The window rolls: a day after d1, its 4 leave the count.
        assert (await store.claim(A, "d4", fp, "o", 100.0 + 86_400 + 1, items=1)).claimed
    finally:
        store.close()


async def test_refusals_after_authentication_never_exhaust_the_quota(database: Database) -> None:
    """Review helper-110 H1: RETRYABLE items (another ledger's relayer down, a halt) and
    refusals that need a ledger's word are stored but not counted, however many."""
    store = SqlBatchStore(database, BatchQuota(items_per_day=1000, refused_per_day=1))
    fp = b"\xaa" * 32
    try:
        for n in range(3):
            assert (await store.claim(A, f"f{n}", fp, "o", 10.0 + n, items=50)).claimed
            results = tuple(_refused(i, retryable=i % 2 == 0) for i in range(50))
            await store.finish(BatchRecord(A, f"f{n}", fp, results, 10.0 + n), "o")
        assert (await store.claim(A, "f3", fp, "o", 20.0, items=1)).claimed
    finally:
        store.close()


async def test_the_reserving_write_checks_the_quota_again(database: Database) -> None:
    """Review helper-110 L2: concurrent new batch ids all pass the check made in a read;
    the check again inside the transaction that reserves each id admits only what fits."""
    store = SqlBatchStore(database, BatchQuota(items_per_day=10, refused_per_day=5))
    fp = b"\xaa" * 32
    try:
        got = await asyncio.gather(
            *(store.claim(A, f"g{n}", fp, "o", 30.0, items=4) for n in range(5)),
            return_exceptions=True,
        )
        claimed = [g for g in got if isinstance(g, Claim) and g.claimed]
        refused = [g for g in got if isinstance(g, ResourceExhausted)]
        assert (len(claimed), len(refused)) == (2, 3), got
        stored = [await store.get(A, f"g{n}") for n in range(5)]
        assert sum(1 for b in stored if b is not None) == 2
    finally:
        store.close()


async def test_items_past_the_daily_quota_refuse_a_new_batch_id(database: Database) -> None:
    """Every item of a reserved batch counts from its reservation (a running batch too);
    a new id whose items would pass ``items_per_day`` is refused, nothing reserved, and
    one that fits exactly still runs. A retryable batch's replay (a takeover of its row)
    is never refused by the quota."""
    store = SqlBatchStore(database, BatchQuota(items_per_day=10, refused_per_day=1000))
    fp = b"\xaa" * 32
    try:
        assert (await store.claim(A, "e1", fp, "o", 50.0, items=6)).claimed  # still pending
        with pytest.raises(ResourceExhausted) as refused:
            await store.claim(A, "e2", fp, "o", 51.0, items=5)
        assert str(refused.value) == (
            f"batches from {A} recorded 6 items in the last 24 h; 5 more would pass"
            " max_batch_items_per_day (10)"
        )
        assert await store.get(A, "e2") is None
        assert (await store.claim(A, "e2", fp, "o", 51.0, items=4)).claimed
        retry = (_refused(0, retryable=True),)
        await store.finish(BatchRecord(A, "e2", fp, retry, 51.0), "o")
        # At the quota: a new id is refused, but the retryable batch is taken over.
        with pytest.raises(ResourceExhausted):
            await store.claim(A, "e3", fp, "o", 52.0, items=1)
        again = await store.claim(A, "e2", fp, "o2", 52.0, items=4)
        assert again.claimed and again.record is not None and again.record.to_retry == (0,)
    finally:
        store.close()


def test_a_batch_quota_needs_positive_bounds() -> None:
    for bad in ((0, 1, 1.0), (1, 0, 1.0), (1, 1, 0.0)):
        with pytest.raises(ValueError, match="must be positive"):
            BatchQuota(*bad)


async def test_the_pruning_loop_deletes_in_rounds_and_survives_a_store_failure() -> None:
    """``prune_batches`` asks with the retention's cut-off until a round deletes fewer
    than a statement's rows; a store failure waits for the next round."""
    calls: list[tuple[float, int]] = []
    answers: list[int | Exception] = [Unavailable("database busy"), 2, 2, 1]
    stop = asyncio.Event()

    class Store:
        async def prune(self, created_before: float, limit: int = 1000) -> int:
            calls.append((created_before, limit))
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            if not answers:
                stop.set()
            return answer

    started = time.time()
    await asyncio.wait_for(prune_batches(Store(), 7, stop, every=0.01, batch_rows=2), 10)
    assert len(calls) == 4 and all(limit == 2 for _, limit in calls)
    assert all(abs(cut - (started - 7 * 86_400)) < 5 for cut, _ in calls)


@pytest.mark.security
async def test_a_brokerage_submits_and_watches_only_its_own_ledgers_batches() -> None:
    submit = RULES["/bridge.v1.TransferService/SubmitTransfers"]
    watch = RULES["/bridge.v1.TransferService/WatchBatch"]
    mine = Principal(A, "brokerage", A)
    assert role_allowed(submit, mine)
    for role in ("relayer", "depository", "bridge-operator", "coordinator"):
        assert not role_allowed(submit, Principal("org", role, A if role == "relayer" else ""))
    assert submit.scope is not None and watch.scope is not None
    ok = transfer_pb2.SubmitTransfersRequest(source_ledger=A)
    assert await submit.scope(mine, ok, None) is None
    why = await submit.scope(mine, transfer_pb2.SubmitTransfersRequest(source_ledger=B), None)
    assert why == f"brokerage:{A} may submit only transfers whose source ledger is {A}, not '{B}'"
    assert await watch.scope(mine, transfer_pb2.WatchBatchRequest(source_ledger=A), None) is None
    assert await watch.scope(mine, transfer_pb2.WatchBatchRequest(source_ledger=B), None)
    depository = Principal("ksd", "depository", "")
    assert role_allowed(watch, depository)
    assert (
        await watch.scope(depository, transfer_pb2.WatchBatchRequest(source_ledger=B), None) is None
    )


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None

    def set_trailing_metadata(self, _: Any) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        raise _Aborted(message)


@pytest.mark.parametrize("method", ["SubmitTransfers", "WatchBatch"])
async def test_a_standby_answers_not_leader_before_any_batch_handler_runs(method: str) -> None:
    reached: list[str] = []

    async def unary(request: Any, context: Any) -> Any:
        reached.append("unary")

    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        reached.append("stream")
        yield None

    make: Callable[..., Any] = (
        grpc.unary_unary_rpc_method_handler
        if method == "SubmitTransfers"
        else grpc.unary_stream_rpc_method_handler
    )
    inner = make(unary if method == "SubmitTransfers" else stream)

    async def continuation(_: Any) -> Any:
        return inner

    @dataclass
    class Details:
        method: str
        invocation_metadata: tuple[()] = ()

    gate = StandbyGate(lambda: False, lambda: "10.0.0.2:50051")
    handler = await gate.intercept_service(
        continuation, Details(f"/bridge.v1.TransferService/{method}")
    )
    context = _Context()

    async def call() -> None:
        if method == "SubmitTransfers":
            await handler.unary_unary(None, context)
        else:
            async for _ in handler.unary_stream(None, context):
                pass

    with pytest.raises(_Aborted, match="standby"):
        await call()
    assert context.code == grpc.StatusCode.UNAVAILABLE and reached == []


def test_the_cli_reads_one_item_per_line_and_names_a_bad_line(tmp_path: Path) -> None:
    from bridge.cli.main import _batch_items

    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"security": "KR7005930003", "to": "brokerage-b", "sender": "0x01",'
        ' "recipient": "0x02", "amount": "5", "idempotency_key": "k1"}\n'
        "\n"
        '{"security": "KR7005930003", "to": "brokerage-b", "sender": "0x01",'
        ' "recipient": "0x02", "amount": "6"}\n'
    )
    items, derived = _batch_items(good, good.read_bytes(), A, "batch-1")
    assert [(i.idempotency_key, i.source_ledger, i.amount) for i in items[:1]] == [("k1", A, "5")]
    assert len(items) == 2 and items[1].idempotency_key and items[1].source_ledger == A
    assert derived == (1,), "only the keyless line gets a derived key"
    again, _ = _batch_items(good, good.read_bytes(), A, "batch-1")
    assert again[1].idempotency_key == items[1].idempotency_key, "derived keys are stable"
    for text, message in (
        ("not json\n", "bad.jsonl:1: not JSON"),
        ('["a list"]\n', "bad.jsonl:1: expected a JSON object"),
        ('{}\n{"amount": "1", "from": "brokerage-b"}\n', r"bad.jsonl:2: unknown field\(s\) from"),
    ):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            _batch_items(bad, bad.read_bytes(), A, "batch-1")


def test_servers_accept_the_clients_keepalive_pings() -> None:
    """batchfix: a server must allow pings at least as often as our clients send them on a
    quiet call, else a long SubmitTransfers or a quiet WatchBatch is cut after about a
    minute with GOAWAY too_many_pings (gRPC's server default allows one per 5 minutes)."""
    from bridge.rpc.channels import INTERNAL_OPTIONS
    from bridge.rpc.server import SERVER_OPTIONS

    client = dict(INTERNAL_OPTIONS)["grpc.keepalive_time_ms"]
    server = dict(SERVER_OPTIONS)["grpc.http2.min_ping_interval_without_data_ms"]
    assert isinstance(client, int) and server <= client / 2


def test_the_largest_batch_answer_fits_grpcs_default_message_limit() -> None:
    """Review s18 F5: a SubmitTransfers response of MAX_BATCH_ITEMS_CEILING items, each at
    its worst (a 128-character key twice, a 240-character reason, every transaction id,
    long ledger names, the largest amount), stays under gRPC's default 4 MiB."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from bridge.config_schema import MAX_BATCH_ITEMS_CEILING

    ts = Timestamp(seconds=1_796_220_000, nanos=999_999_999)
    key = "k" * 128
    transfer = transfer_pb2.Transfer(
        transfer_id="0x" + "ab" * 32, idempotency_key=key, security_id="KR7005930003",
        source_ledger="l" * 64, target_ledger="m" * 64, sender="0x" + "11" * 20,
        recipient="0x" + "22" * 20, amount="9" * 78, state=5, reason="r" * 240,
        created_at=ts, updated_at=ts, deadline=ts, not_before=ts, parked=True,
        parked_reason=3, wait_reason=5,
        transactions={s: "0x" + "cd" * 32
                      for s in ("lock", "prepare", "expire", "burn", "mint", "release", "abort")},
    )  # fmt: skip
    worst = transfer_pb2.BatchItemResult(
        index=MAX_BATCH_ITEMS_CEILING - 1, idempotency_key=key, outcome=1, transfer=transfer
    )
    response = transfer_pb2.SubmitTransfersResponse(
        batch_id=key, created=True, results=[worst] * MAX_BATCH_ITEMS_CEILING
    )
    assert len(response.SerializeToString()) < 4 * 1024 * 1024


async def test_a_busy_sqlite_store_is_unavailable_not_internal(tmp_path: Path) -> None:
    """batchfix: a store busy beyond busy_timeout (another process holds the file's write
    lock) is DatabaseUnavailable (UNAVAILABLE, retryable: a batch item is RETRYABLE), the
    connection is left usable, and the write succeeds once the lock is released."""
    import sqlite3

    from bridge.coordinator.db import DatabaseUnavailable

    path = tmp_path / "coordinator.sqlite"
    db = open_sqlite(path)
    try:
        db.run_sync(lambda c: c.execute("PRAGMA busy_timeout=50"))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")

        def mark(c: Any) -> None:
            c.execute("INSERT INTO ledger_progress VALUES ('busy', 1)")

        with pytest.raises(DatabaseUnavailable, match="busy"):
            await db.write(mark)
        assert _item_error(DatabaseUnavailable("busy")).metadata["retryable"] == "true"
        other.execute("ROLLBACK")
        other.close()
        await db.write(mark)
        rows = await db.read(lambda c: c.execute("SELECT ledger FROM ledger_progress").fetchall())
        assert [r[0] for r in rows] == ["busy"]
    finally:
        db.close()


class SlowChecks:
    """Checks that finish in reverse item order (a later item's ledger read answers first);
    records what was recorded, in order, and how many checks ran at once at most."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.recorded: list[str] = []
        self.calls: list[list[str]] = []  # the items of each record call
        self.conflicts: set[str] = set()  # keys the store answers Conflict for
        self.fail_calls = 0  # fail this many record calls as a whole
        self.running = 0
        self.most = 0

    async def check(self, item: Item) -> Item:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.002 * (self.n - int(item.idempotency_key[1:])))
            if item.refuse is not None:
                raise item.refuse
            return item
        finally:
            self.running -= 1

    async def record(self, items: Sequence[Item]) -> list[tuple[bytes, bool] | BridgeError]:
        # every earlier item is settled (recorded or refused) before these are recorded
        self.calls.append([item.idempotency_key for item in items])
        if self.fail_calls:
            self.fail_calls -= 1
            raise DatabaseUnavailable("database locked")  # nothing recorded
        out: list[tuple[bytes, bool] | BridgeError] = []
        for item in items:
            if item.idempotency_key in self.conflicts:
                out.append(Conflict("the same instruction under another key"))
                continue
            self.recorded.append(item.idempotency_key)
            out.append((item.idempotency_key.encode().ljust(32, b"\0"), True))
        return out


async def test_items_checked_concurrently_are_recorded_in_item_order() -> None:
    """Issue 14: with ``parallel`` > 1 the checks overlap (and here finish in reverse
    order), yet records follow the batch's order (the store sequence a lane's flow-limit
    queue serves in), refusals stay in their items, and no more than ``parallel`` checks
    run at once."""
    n = 24
    items = [Item(f"k{i}") for i in range(n)]
    items[5] = Item("k5", refuse=PreconditionFailed("frozen", ErrorReason.HOLDER_FROZEN, A))
    items[9] = Item("k9", source_ledger=B)
    checks = SlowChecks(n)
    results = await run_items(
        A, items, checks.check, _error_of, record_many=checks.record, parallel=6
    )
    assert [r.index for r in results] == list(range(n))
    assert checks.recorded == [f"k{i}" for i in range(n) if i not in (5, 9)]
    assert [r.index for r in results if r.outcome is ItemOutcome.REFUSED] == [5, 9]
    assert 1 < checks.most <= 6
    sequential = SlowChecks(n)
    again = await run_items(
        A, items, sequential.check, _error_of, record_many=sequential.record, parallel=1
    )
    assert sequential.most == 1
    assert [(r.index, r.outcome) for r in again] == [(r.index, r.outcome) for r in results]
    assert all(len(call) == 1 for call in sequential.calls)  # parallel 1: one at a time


async def test_items_whose_checks_ended_are_recorded_together_in_item_order() -> None:
    """Issue 14: the next item is recorded together with every item right behind it whose
    check already accepted it (here, checks finishing in reverse order, a whole window at
    once), in one call and in item order; a refused item ends a group and keeps its own
    result; the calls, one after the other, cover exactly the accepted items in order."""
    n = 24
    items = [Item(f"k{i}") for i in range(n)]
    items[7] = Item("k7", refuse=PreconditionFailed("frozen", ErrorReason.HOLDER_FROZEN, A))
    checks = SlowChecks(n)
    results = await run_items(
        A, items, checks.check, _error_of, record_many=checks.record, parallel=6
    )
    flat = [key for call in checks.calls for key in call]
    assert flat == [f"k{i}" for i in range(n) if i != 7]
    assert len(checks.calls) < n - 1 and max(len(c) for c in checks.calls) > 1
    assert max(len(c) for c in checks.calls) <= 6  # never more than the window
    assert not any("k6" in c and "k8" in c for c in checks.calls)  # the refusal splits them
    assert [r.outcome for r in results].count(ItemOutcome.CREATED) == n - 1
    assert results[7].outcome is ItemOutcome.REFUSED


async def test_a_conflict_stays_in_its_item_and_a_failed_record_call_reaches_its_items() -> None:
    """An item the store answers Conflict is refused alone; a record call failing as a
    whole (the database unavailable) makes each of its items RETRYABLE, and the items
    after them are still recorded."""
    n = 12
    items = [Item(f"k{i}") for i in range(n)]
    checks = SlowChecks(n)
    checks.conflicts = {"k2"}
    checks.fail_calls = 1
    results = await run_items(
        A, items, checks.check, _item_error, record_many=checks.record, parallel=4
    )
    failed = checks.calls[0]
    by_key = {r.idempotency_key: r for r in results}
    assert [by_key[k].outcome for k in failed] == [ItemOutcome.RETRYABLE] * len(failed)
    assert by_key["k2"].outcome is (
        ItemOutcome.RETRYABLE if "k2" in failed else ItemOutcome.REFUSED
    )
    rest = [f"k{i}" for i in range(n) if f"k{i}" not in failed and i != 2]
    assert checks.recorded == rest
    assert all(by_key[k].outcome is ItemOutcome.CREATED for k in rest)


def _fenced() -> Fenced:
    return Fenced("coordinator-1", 7, 8, "coordinator-2")


@pytest.mark.parametrize(
    "error",
    [lambda: NotLeader("lease lost", "10.0.0.2:50051"), _fenced],
    ids=["not-leader", "fenced"],
)
async def test_not_leader_from_the_store_mid_batch_ends_the_batch(
    error: Callable[[], BridgeError],
) -> None:
    """The store refusing to record (NotLeader, or Fenced: this coordinator lost its lease
    while the batch ran) answers the whole batch NOT_LEADER: the items recorded before stay
    recorded (a retry on the leader finds them by key), nothing after is recorded or
    answered as an item's refusal, and the checks running ahead are cancelled."""
    n = 12
    items = [Item(f"k{i}") for i in range(n)]
    checks = SlowChecks(n)
    record = checks.record

    async def losing_the_lease(group: Sequence[Item]) -> list[tuple[bytes, bool] | BridgeError]:
        if any(it.idempotency_key == "k5" for it in group):
            raise error()
        return await record(group)

    with pytest.raises(BridgeError) as raised:
        await run_items(A, items, checks.check, _error_of, record_many=losing_the_lease, parallel=4)
    assert raised.value.kind is BridgeReason.NOT_LEADER
    # what the brokerage reads names no coordinator (Fenced keeps them for the logs)
    assert "coordinator-1" not in str(raised.value) and "coordinator-2" not in str(raised.value)
    assert checks.recorded == [f"k{i}" for i in range(5)][: len(checks.recorded)]
    assert "k5" not in checks.recorded and len(checks.recorded) <= 5
    assert all(call[0] != "k6" for call in checks.calls)  # nothing after k5 was offered
    await asyncio.sleep(0.05)
    assert checks.running == 0


async def test_fenced_in_a_check_fails_the_whole_batch() -> None:
    items = [Item("k1"), Item("k2", refuse=_fenced()), Item("k3")]
    submit = Submitter()
    with pytest.raises(Fenced):
        await run_items(A, items, submit, _error_of)
    assert submit.submitted == ["k1"]


async def test_not_leader_mid_batch_records_nothing_after_it_and_cancels_the_checks() -> None:
    """NotLeader at item 3 answers the whole batch NOT_LEADER: items 0-2 are recorded (a
    retry on the leader finds them by key), nothing after item 3 is, and the checks running
    ahead of it are cancelled, not left behind."""
    n = 12
    items = [Item(f"k{i}") for i in range(n)]
    items[3] = Item("k3", refuse=NotLeader("standby", "10.0.0.2:50051"))
    checks = SlowChecks(n)
    with pytest.raises(NotLeader):
        await run_items(A, items, checks.check, _error_of, record_many=checks.record, parallel=4)
    assert checks.recorded == ["k0", "k1", "k2"]
    await asyncio.sleep(0.05)
    assert checks.running == 0


def test_the_daemon_holds_its_batch_store_to_the_configured_quota(tmp_path: Path) -> None:
    """Review helper-110 L2: the quota in ``coordinator.toml`` is the one the daemon's batch
    store applies (and the defaults when it is absent)."""
    from bridge.config import load_coordinator
    from bridge.coordinator.__main__ import batch_store_of
    from tests.unit.test_config_rules import coordinator

    for extra, quota in (
        (
            {"max_batch_items_per_day": 7000, "max_refused_batch_items_per_day": 3},
            BatchQuota(7000, 3),
        ),
        ({}, BatchQuota(1_000_000, 10_000)),
    ):
        cfg = load_coordinator(coordinator(tmp_path, **extra))
        db = open_sqlite(tmp_path / "quota.sqlite")
        store = batch_store_of(db, cfg)
        try:
            assert store.quota == quota
        finally:
            store.close()
