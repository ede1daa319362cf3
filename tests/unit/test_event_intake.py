"""Event intake (issue 9 item 4): a ledger event is a hint, never an authority.

The coordinator adopts a LOCKED event only after reading the lock on the source ledger at
finality with the same terms hash, never locks for a transfer it learned of from an event,
and resumes a FAILED transfer only for a lock the ledger shows. Pure logic with in-memory
relayers; the real-ledger attack is in tests/e2e/test_security_feed.py.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from bridge.coordinator.engine import ADOPTED_LOCK_GRACE_S
from bridge.coordinator.metrics import CoordinatorMetrics, install
from bridge.coordinator.records import TransferOrigin, TransferRecord, TransferRequest
from bridge.coordinator.store import SqliteTransferStore
from bridge.core.reasons import ErrorReason
from bridge.domain.errors import LedgerRejected, Unavailable
from bridge.domain.legs import Action, EventPosition, LedgerEvent, Leg, LegState, LegStatus
from bridge.domain.terms import TransferTerms
from bridge.domain.transfer import TransferState
from bridge.logfields import STATE, TRANSFER
from bridge.obs.metrics import CommonMetrics
from tests.support import eventually
from tests.unit import test_coordinator_driver as driver_tests
from tests.unit.test_coordinator_driver import HOLDER, ISIN, FakeRelayer, _word, final, request

pytestmark = [pytest.mark.unit, pytest.mark.security]

coordinator = driver_tests.coordinator  # the fixture: in-memory relayers "a" and "b"


A_BRIDGE = b"\0" * 12 + b"\xaa" * 20
B_BRIDGE = b"\0" * 12 + b"\xbb" * 20


def terms(deadline: int | None = None, amount: int = 3) -> TransferTerms:
    return TransferTerms(
        secrets.token_bytes(32), ISIN.encode().ljust(32, b"\0"), amount, _word("a"), A_BRIDGE,
        _word("b"), B_BRIDGE, b"\0" * 12 + b"\x11" * 20, b"\0" * 12 + b"\x66" * 20,
        b"\0" * 12 + b"\x11" * 20,  # holder-direct: the sender instructed its own lock
        deadline if deadline is not None else int(time.time()) + 600,
    )  # fmt: skip


def locked_event(t: TransferTerms, height: int = 5, terms_hash: bytes | None = None) -> LedgerEvent:
    return LedgerEvent(
        "a", EventPosition(height, 0), b"\0" * 32, "0x" + secrets.token_hex(32), t.transfer_id,
        Leg.OUTBOUND, LegState.LOCKED, 0, terms_hash or t.terms_hash, t,
    )  # fmt: skip


def show_lock(relayer: FakeRelayer, t: TransferTerms, terms_hash: bytes | None = None) -> None:
    relayer.legs[(t.transfer_id, Leg.OUTBOUND)] = LegStatus(
        LegState.LOCKED, terms_hash or t.terms_hash, 0, 5
    )


def recorded_events(tmp_path: Path) -> int:
    db = sqlite3.connect(tmp_path / "c.sqlite")
    try:
        return int(db.execute("SELECT COUNT(*) FROM ledger_events").fetchone()[0])
    finally:
        db.close()


async def test_a_forged_locked_event_for_a_lock_that_does_not_exist_is_not_adopted(
    coordinator, tmp_path: Path
) -> None:
    c, relayers, store = coordinator
    forged = terms(amount=10**6)
    assert await c.on_events("a", [locked_event(forged)], 5) == 0
    await asyncio.sleep(0.3)  # a driver, had one been started, would have locked by now
    assert await store.get(forged.transfer_id) is None, "no transfer row"
    assert relayers["a"].submitted == [], "no LOCK (nor anything) submitted"
    assert relayers["b"].submitted == []
    assert recorded_events(tmp_path) == 0, "the event is not recorded as seen"


async def test_an_event_whose_terms_the_ledger_does_not_show_is_not_adopted(coordinator) -> None:
    """A real lock exists for the id, but with other terms than the event claims."""
    c, relayers, store = coordinator
    real, claimed = terms(), terms()
    claimed = TransferTerms(
        real.nonce, claimed.security, 999, claimed.src_ledger, claimed.src_bridge,
        claimed.dst_ledger, claimed.dst_bridge, claimed.sender, claimed.recipient,
        claimed.instructor, claimed.deadline,
    )  # fmt: skip
    assert claimed.transfer_id == real.transfer_id and claimed.terms_hash != real.terms_hash
    show_lock(relayers["a"], real)
    assert await c.on_events("a", [locked_event(claimed)], 5) == 0
    assert await store.get(real.transfer_id) is None
    assert relayers["a"].submitted == []


async def test_an_event_whose_terms_do_not_hash_to_its_ids_is_not_adopted(coordinator) -> None:
    c, relayers, store = coordinator
    t = terms()
    show_lock(relayers["a"], t, terms_hash=b"\x42" * 32)
    assert await c.on_events("a", [locked_event(t, terms_hash=b"\x42" * 32)], 5) == 0
    assert await store.get(t.transfer_id) is None


async def test_a_lock_the_ledger_shows_is_adopted_and_completes_without_a_bridge_lock(
    coordinator,
) -> None:
    c, relayers, store = coordinator
    t = terms()
    show_lock(relayers["a"], t)
    event = locked_event(t)
    assert await c.on_events("a", [event], 5) == 1
    record = await store.get(t.transfer_id)
    assert record is not None
    assert record.origin is TransferOrigin.ADOPTED
    assert record.request.idempotency_key == f"onchain:0x{t.transfer_id.hex()}"
    assert record.transactions["lock"] == event.tx_id
    assert await final(store, t.transfer_id) is TransferState.COMMITTED
    assert relayers["a"].submitted == [Action.COMMIT], "the holder locked; the bridge did not"
    assert relayers["b"].submitted == [Action.PREPARE, Action.COMMIT]
    assert await c.on_events("a", [event], 5) == 0, "re-delivery is deduplicated"


async def test_a_relayer_that_cannot_read_the_ledger_gets_the_batch_refused(
    coordinator, tmp_path: Path
) -> None:
    c, relayers, store = coordinator
    t = terms()
    show_lock(relayers["a"], t)
    real_get_leg = relayers["a"].get_leg

    async def down(tid: bytes, leg: Leg) -> LegStatus:
        raise Unavailable("ledger a unreachable")

    relayers["a"].get_leg = down  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        await c.on_events("a", [locked_event(t)], 5)
    assert await store.get(t.transfer_id) is None
    assert recorded_events(tmp_path) == 0, "not recorded: the relayer delivers it again"
    relayers["a"].get_leg = real_get_leg  # type: ignore[method-assign]
    assert await c.on_events("a", [locked_event(t)], 5) == 1
    assert await store.get(t.transfer_id) is not None


async def _adopted(store: SqliteTransferStore, t: TransferTerms) -> TransferRecord:
    now = time.time()
    req = TransferRequest(f"onchain:0x{t.transfer_id.hex()}", ISIN, "a", "b", HOLDER, HOLDER, 3)
    record = TransferRecord(
        t.transfer_id, req, t, TransferState.SOURCE_LOCKED, "locked directly on-chain", now, now,
        origin=TransferOrigin.ADOPTED,
    )  # fmt: skip
    stored, created = await store.create(record)
    assert created
    return stored


async def test_the_driver_never_locks_for_an_adopted_transfer(coordinator) -> None:
    """The source later reads NONE (the relayer's view went back, or it lies): wait."""
    c, relayers, store = coordinator
    t = terms()
    await _adopted(store, t)
    c._spawn(t.transfer_id)

    async def waiting() -> str | None:
        r = await store.get(t.transfer_id)
        return r.reason if r is not None and "never locks" in r.reason else None

    reason = await eventually(waiting, 10, "the adopted transfer to wait", interval=0.02)
    assert "adopted from a ledger event, but the source ledger shows no lock" in reason
    await asyncio.sleep(0.5)
    record = await store.get(t.transfer_id)
    assert record is not None and record.state is TransferState.SOURCE_LOCKED
    assert relayers["a"].submitted == [], "never a LOCK"


async def test_an_adopted_transfer_with_no_lock_past_its_deadline_fails(coordinator) -> None:
    c, relayers, store = coordinator
    t = terms(deadline=int(time.time()) - ADOPTED_LOCK_GRACE_S - 5)
    await _adopted(store, t)
    c._spawn(t.transfer_id)
    assert await final(store, t.transfer_id) is TransferState.FAILED
    record = await store.get(t.transfer_id)
    assert record is not None
    assert record.reason == (
        "adopted from a ledger event, but the source ledger shows no lock with its terms,"
        " and its deadline has passed; the bridge never locks for it"
    )
    assert relayers["a"].submitted == []


async def test_origin_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    store = SqliteTransferStore(path)
    t = terms()
    await _adopted(store, t)
    store.close()
    again = SqliteTransferStore(path)
    try:
        got = await again.get(t.transfer_id)
        assert got is not None and got.origin is TransferOrigin.ADOPTED
        assert [r.origin for r in await again.unfinished()] == [TransferOrigin.ADOPTED]
    finally:
        again.close()


def _predates_schema_versions(db: sqlite3.Connection) -> None:
    """Such a file predates schema versions too: no version rows, and none of the tables
    versions 2 and later added (each version runs again on it, as on a real one)."""
    for table in (
        "schema_version", "supply_feed_head", "coordinator_lease", "coordinator_members",
        "transfer_batches",
    ):  # fmt: skip
        db.execute(f"DROP TABLE {table}")


async def test_a_store_written_before_origins_marks_old_adoptions(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    store = SqliteTransferStore(path)
    t = terms()
    await _adopted(store, t)
    submitted, _ = await store.create(
        TransferRecord(b"\x07" * 32, request("k-old"), terms(), TransferState.SUBMITTED, "",
                       1.0, 1.0)
    )  # fmt: skip
    store.close()
    db = sqlite3.connect(path)
    db.execute("DROP INDEX transfers_adopted")  # schema 11's, on the column
    db.execute("ALTER TABLE transfers DROP COLUMN origin")
    _predates_schema_versions(db)
    db.commit()
    db.close()
    again = SqliteTransferStore(path)
    try:
        got = await again.get(t.transfer_id)
        assert got is not None and got.origin is TransferOrigin.ADOPTED
        other = await again.get(submitted.transfer_id)
        assert other is not None and other.origin is TransferOrigin.SUBMITTED
    finally:
        again.close()


async def test_a_forged_lock_event_does_not_resume_a_failed_transfer(coordinator) -> None:
    c, relayers, store = coordinator
    relayers["a"].lock_refusal = LedgerRejected(ErrorReason.INSUFFICIENT_BALANCE, "balance=1")
    record, _ = await driver_tests.submit(c, request("k-failed"))
    assert await final(store, record.transfer_id) is TransferState.FAILED
    relayers["a"].lock_refusal = None
    relayers["a"].submitted.clear()
    t = record.terms
    forged = LedgerEvent(
        "a", EventPosition(9, 0), b"\0" * 32, "0xf0", t.transfer_id, Leg.OUTBOUND,
        LegState.LOCKED, 0, t.terms_hash, t,
    )  # fmt: skip
    assert await c.on_events("a", [forged], 9) == 0
    # From another ledger's relayer: refused, even where that relayer shows the lock.
    show_lock(relayers["b"], t)
    from_b = LedgerEvent(
        "b", EventPosition(9, 0), b"\0" * 32, "0xf1", t.transfer_id, Leg.OUTBOUND,
        LegState.LOCKED, 0, t.terms_hash, t,
    )  # fmt: skip
    assert await c.on_events("b", [from_b], 9) == 0
    await asyncio.sleep(0.3)
    got = await store.get(t.transfer_id)
    assert got is not None and got.state is TransferState.FAILED
    assert relayers["a"].submitted == [] and relayers["b"].submitted == []
    # The real lock, seen on the ledger, does resume it (units never stay in escrow),
    # logged and counted as any state change is.
    del relayers["b"].legs[(t.transfer_id, Leg.OUTBOUND)]
    show_lock(relayers["a"], t)
    metrics = CoordinatorMetrics(CommonMetrics.create("coordinator"), 60.0)
    install(metrics)
    try:
        with capture_logs() as logs:
            assert await c.on_events("a", [forged], 9) == 1
    finally:
        install(None)
    assert await final(store, t.transfer_id) is TransferState.COMMITTED
    assert relayers["a"].submitted == [Action.COMMIT], "resumed without locking again"
    said = [(e[TRANSFER], e[STATE]) for e in logs if e["event"] == "transfer state"]
    assert said[0] == ("0x" + t.transfer_id.hex(), "SOURCE_LOCKED")
    text = generate_latest(metrics.common.registry).decode()
    assert (
        'kstb_transfer_phase_seconds_count{from_state="FAILED",to_state="SOURCE_LOCKED"} 1.0'
        in text
    )


async def _squat(store: SqliteTransferStore, victim: TransferTerms) -> TransferRecord:
    """A row written before the prefix was reserved: a submitted transfer that took the
    adoption key of another transfer id's lock."""
    squatter, created = await store.create(
        TransferRecord(
            b"\x5a" * 32, request(f"onchain:0x{victim.transfer_id.hex()}"), terms(),
            TransferState.SUBMITTED, "", 1.0, 1.0,
        )
    )  # fmt: skip
    assert created
    return squatter


async def test_an_adoption_whose_key_another_transfer_holds_is_not_reported_as_done(
    coordinator,
) -> None:
    c, relayers, store = coordinator
    victim = terms()
    squatter = await _squat(store, victim)
    show_lock(relayers["a"], victim)
    with capture_logs() as logs:
        await c.on_events("a", [locked_event(victim)], 5)
    assert await store.get(victim.transfer_id) is None, "the lock was not silently dropped"
    alarms = [entry for entry in logs if entry["log_level"] == "error"]
    assert [entry["event"] for entry in alarms] == [
        "adoption key of a holder-direct lock is held by another transfer; not adopted,"
        " operator attention needed"
    ]
    assert alarms[0]["holder"] == "0x" + squatter.transfer_id.hex()
    assert not [entry for entry in logs if "adopted after reading" in entry["event"]]
    assert relayers["a"].submitted == [] and relayers["b"].submitted == []


async def test_the_origin_migration_does_not_label_a_squatting_row_adopted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite"
    store = SqliteTransferStore(path)
    genuine = terms()
    await _adopted(store, genuine)
    squatter = await _squat(store, terms())
    store.close()
    db = sqlite3.connect(path)
    db.execute("DROP INDEX transfers_adopted")  # schema 11's, on the column
    db.execute("ALTER TABLE transfers DROP COLUMN origin")
    _predates_schema_versions(db)
    db.commit()
    db.close()
    again = SqliteTransferStore(path)
    try:
        got = await again.get(genuine.transfer_id)
        assert got is not None and got.origin is TransferOrigin.ADOPTED
        other = await again.get(squatter.transfer_id)
        assert other is not None and other.origin is TransferOrigin.SUBMITTED
    finally:
        again.close()


async def test_a_lock_already_released_does_not_resume_a_failed_transfer(coordinator) -> None:
    """The lock landed after the transfer FAILED and was refunded since: nothing to resume."""
    c, relayers, store = coordinator
    relayers["a"].lock_refusal = LedgerRejected(ErrorReason.INSUFFICIENT_BALANCE, "balance=1")
    record, _ = await driver_tests.submit(c, request("k-released"))
    assert await final(store, record.transfer_id) is TransferState.FAILED
    relayers["a"].lock_refusal = None
    relayers["a"].submitted.clear()
    t = record.terms
    relayers["a"].legs[(t.transfer_id, Leg.OUTBOUND)] = LegStatus(
        LegState.RELEASED, t.terms_hash, 0, 5
    )
    event = driver_tests.lock_event(t, 9, tx="0xf2")
    await c.on_events("a", [event], 9)
    await asyncio.sleep(0.3)
    got = await store.get(t.transfer_id)
    assert got is not None and got.state is TransferState.FAILED
    assert [u.state for u in await store.history(t.transfer_id, 0)][-1] is TransferState.FAILED
    assert relayers["a"].submitted == [] and relayers["b"].submitted == []


async def _failed(coordinator: Any, key: str) -> TransferRecord:
    """A transfer submitted under ``key`` whose lock the source refused: FAILED, as read."""
    c, relayers, store = coordinator
    relayers["a"].lock_refusal = LedgerRejected(ErrorReason.INSUFFICIENT_BALANCE, "balance=1")
    record, _ = await driver_tests.submit(c, request(key))
    assert await final(store, record.transfer_id) is TransferState.FAILED
    failed = await store.get(record.transfer_id)
    assert failed is not None
    return failed


async def test_a_resume_never_moves_a_transfer_that_left_failed_meanwhile(coordinator) -> None:
    c, _, store = coordinator
    stale = record = await _failed(coordinator, "k-race")
    # Meanwhile something else finished it (an operator, another resume that completed).
    await store.set_state(record.transfer_id, TransferState.COMMITTED, "done", "committed")
    await c._resume_failed(stale, stale.terms.terms_hash, "0xf3")
    got = await store.get(record.transfer_id)
    assert got is not None and got.state is TransferState.COMMITTED
    assert not await store.resume_failed(
        record.transfer_id, TransferState.SOURCE_LOCKED, "resuming", "resumed"
    )
    history = await store.history(record.transfer_id, 0)
    assert history[-1].state is TransferState.COMMITTED


async def test_a_resume_of_an_unreadable_row_fails_neither_the_delivery_nor_the_sweep(
    coordinator,
) -> None:
    """Review helper-133 L2: a FAILED row damaged before its resume is refused by the store
    (rolled back, reported once) and left for the operator; the caller (a delivery, the
    sweep with the ledger's other resumes to make) goes on."""
    c, relayers, store = coordinator
    failed = record = await _failed(coordinator, "k-damaged")

    def damage(db):  # type: ignore[no-untyped-def]
        db.execute(
            "UPDATE transfers SET updated_at = 'x' WHERE transfer_id = ?", (record.transfer_id,)
        )

    await store._db.write(damage)
    with capture_logs() as logs:
        await c._resume_failed(failed, failed.terms.terms_hash, "0xf4")  # no error
    assert not [e for e in logs if e["event"] == "transfer state"]

    def state_of(db):  # type: ignore[no-untyped-def]
        return db.execute(
            "SELECT state FROM transfers WHERE transfer_id = ?", (record.transfer_id,)
        ).fetchone()[0]

    assert await store._db.read(state_of) == int(TransferState.FAILED)
    assert relayers["b"].submitted == []


async def test_resume_failed_is_a_compare_and_set(tmp_path: Path) -> None:
    store = SqliteTransferStore(tmp_path / "cas.sqlite")
    try:
        rec, _ = await store.create(
            TransferRecord(b"\x09" * 32, request("k-cas"), terms(), TransferState.FAILED, "",
                           1.0, 1.0)
        )  # fmt: skip
        write = await store.resume_failed(
            rec.transfer_id, TransferState.SOURCE_LOCKED, "resuming", "resumed"
        )
        assert write is not None
        got = await store.get(rec.transfer_id)
        assert got is not None and got.state is TransferState.SOURCE_LOCKED
        # What it recorded, and what it moved from: FAILED since the row's updated_at.
        assert write.record == got
        assert (write.previous, write.previous_at) == (TransferState.FAILED, 1.0)
        assert (await store.history(rec.transfer_id, 0))[-1].detail == "resumed"
        assert not await store.resume_failed(
            rec.transfer_id, TransferState.SOURCE_LOCKED, "again", "resumed"
        ), "no longer FAILED"
        assert len(await store.history(rec.transfer_id, 0)) == 2
    finally:
        store.close()


# ---- review helper-117 #3: a compromised relayer's events


def hold(relayer: FakeRelayer) -> asyncio.Event:
    """Every transaction ``relayer`` submits waits until the returned event is set."""
    gate = asyncio.Event()
    submit = relayer.submit

    async def held(*args: object, **kwargs: object) -> object:
        await gate.wait()
        return await submit(*args, **kwargs)  # type: ignore[arg-type]

    relayer.submit = held  # type: ignore[assignment,method-assign]
    return gate


async def test_a_ledgers_unfinished_adoptions_are_bounded_and_nothing_is_lost(
    coordinator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relayer's LOCKED events (its word that the locks exist) adopt at most
    MAX_UNFINISHED_ADOPTED unfinished transfers of its ledger: past it the delivery is
    refused Unavailable, nothing of the rest adopted and no event recorded as seen, so an
    honest relayer's re-delivery adopts them once earlier ones ended. Before, any number
    were adopted and each driven until its deadline (a term the event itself chose)."""
    import bridge.coordinator.intake as intake

    monkeypatch.setattr(intake, "MAX_UNFINISHED_ADOPTED", 2)
    c, relayers, store = coordinator
    locks = [terms() for _ in range(3)]
    for t in locks:
        show_lock(relayers["a"], t)
    held = hold(relayers["b"])  # the target does not prepare yet: adoptions stay unfinished
    events = [locked_event(t, height=5 + i) for i, t in enumerate(locks)]
    with pytest.raises(Unavailable, match="2 transfers adopted from a are unfinished"):
        await c.on_events("a", events, 7)
    adopted = [await store.get(t.transfer_id) for t in locks]
    assert [r is not None for r in adopted] == [True, True, False]
    assert recorded_events(tmp_path) == 0, "not recorded: the relayer delivers them again"
    assert await store.unfinished_adopted("a") == 2
    held.set()
    for t in locks[:2]:
        assert await final(store, t.transfer_id) is TransferState.COMMITTED
    assert await store.unfinished_adopted("a") == 0
    assert await c.on_events("a", events, 7) == 3, "the re-delivery adopts the third"
    assert await final(store, locks[2].transfer_id) is TransferState.COMMITTED


async def test_concurrent_deliveries_of_a_ledger_share_its_adoption_bound(
    coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review helper-118 #2: the bound was counted once per delivery, so K concurrent
    deliveries each adopted up to it. A ledger's deliveries are acted on one at a time."""
    import bridge.coordinator.intake as intake

    monkeypatch.setattr(intake, "MAX_UNFINISHED_ADOPTED", 2)
    c, relayers, store = coordinator
    hold(relayers["b"])  # adoptions stay unfinished
    locks = [terms() for _ in range(8)]
    for t in locks:
        show_lock(relayers["a"], t)
    pairs = [
        [locked_event(t, 10 + j) for j, t in enumerate(locks) if j // 2 == i] for i in range(4)
    ]
    deliveries = [c.on_events("a", pair, 20) for pair in pairs]
    results = await asyncio.gather(*deliveries, return_exceptions=True)
    assert sum(isinstance(r, Unavailable) for r in results) == 3
    assert await store.unfinished_adopted("a") == 2


async def test_an_event_from_neither_of_a_transfers_ledgers_is_refused(tmp_path: Path) -> None:
    """A relayer of a third ledger naming a transfer between two others: refused, not
    recorded, the transfer's driver not woken by it (it could wake it past its backoff as
    often as it delivers)."""
    from bridge.coordinator.engine import Coordinator
    from tests.unit.test_coordinator_driver import FakeCommittee, network_file, submit

    network = network_file(tmp_path, ("a", "b", "c"))
    store = SqliteTransferStore(tmp_path / "c.sqlite")
    relayers = {n: FakeRelayer(n) for n in ("a", "b", "c")}
    hold(relayers["a"])  # the lock does not go: the transfer stays unfinished
    c = Coordinator(network, store, relayers, FakeCommittee(),  # type: ignore[arg-type]
                    transfer_ttl=60, max_backoff=0.2, sweep_every=0.1)  # fmt: skip
    await c.start()
    try:
        record, _ = await submit(c, request("k-third"))
        woken: list[bytes] = []
        wake = c._drivers.wake
        c._drivers.wake = lambda tid: (woken.append(tid), wake(tid))[1]  # type: ignore[method-assign]
        event = LedgerEvent(
            "c", EventPosition(5, 0), b"\0" * 32, "0x" + secrets.token_hex(32),
            record.transfer_id, Leg.INBOUND, LegState.PREPARED, 0, record.terms.terms_hash, None,
        )  # fmt: skip
        with capture_logs() as logs:
            assert await c.on_events("c", [event], 5) == 0
        refused = [e for e in logs if e["event"].startswith("ledger event refused")]
        assert refused and "an event from c for a transfer between a and b" in refused[0]["reason"]
        assert woken == []
        assert recorded_events(tmp_path) == 0
    finally:
        await c.stop()
        store.close()


async def test_a_delivery_reads_its_transfers_together_and_again_after_acting(
    coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14: a delivery's transfers are read in one read per page, not one per event;
    a transfer an earlier event of the batch acted on is read again for its next event
    (here a duplicate of an adoption's event, which must see the adopted row: with room for
    one adoption, taken as new again it would refuse the delivery)."""
    import bridge.coordinator.intake as intake
    from tests.unit.test_coordinator_driver import lock_event, submit

    monkeypatch.setattr(intake, "MAX_UNFINISHED_ADOPTED", 1)
    c, relayers, store = coordinator
    records = [(await submit(c, request(f"k-{i}")))[0] for i in range(6)]
    for r in records:
        await final(store, r.transfer_id)
    holder = terms()
    show_lock(relayers["a"], holder)
    events = [lock_event(r.terms, 10 + i) for i, r in enumerate(records)]
    events += [locked_event(holder, height=30), locked_event(holder, height=31)]
    singles: list[bytes] = []
    many: list[int] = []
    get, get_many = store.get, store.get_many

    async def one(tid: bytes) -> Any:
        singles.append(tid)
        return await get(tid)

    async def together(tids: Any) -> Any:
        many.append(len(tids))
        return await get_many(tids)

    store.get, store.get_many = one, together  # type: ignore[method-assign]
    try:
        assert await c.on_events("a", events, 31) == len(events)
    finally:
        store.get, store.get_many = get, get_many  # type: ignore[method-assign]
    assert many == [7], "one read of the batch's 7 transfers"
    # Only the adopted transfer is read alone: again for its second event (and by the
    # driver its adoption started); none of the six.
    assert set(singles) == {holder.transfer_id}
    adopted = await store.get(holder.transfer_id)
    assert adopted is not None and adopted.origin is TransferOrigin.ADOPTED


async def test_a_failed_adoption_is_resumed_only_within_the_ledgers_adoption_bound(
    coordinator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review helper-128: a resumed adoption is unfinished again, so it takes room under
    its ledger's bound like a new one. Before, a relayer could adopt fakes up to the bound,
    let them fail, "show" their locks and resume them all, past the bound, while adopting
    more. At the bound the event is refused Unavailable (not recorded as seen: delivered
    again), the sweep passes it over, and nothing moves; with room again, it resumes. An
    event for a FAILED adoption whose lock was released since is dismissed even at the
    bound: it does not hold the ledger's delivery (review helper-130 L1)."""
    import bridge.coordinator.intake as intake

    monkeypatch.setattr(intake, "MAX_UNFINISHED_ADOPTED", 1)
    c, relayers, store = coordinator
    held = hold(relayers["b"])  # the target does not prepare yet: adoptions stay unfinished
    failed, other = terms(), terms()
    await _adopted(store, failed)
    await store.set_state(failed.transfer_id, TransferState.FAILED, "no lock", "failed")
    for t in (failed, other):
        show_lock(relayers["a"], t)
    assert await c.on_events("a", [locked_event(other, height=5)], 5) == 1  # fills the bound
    assert await store.unfinished_adopted("a") == 1
    asked: list[bytes] = []
    get_leg = relayers["a"].get_leg

    async def counted(tid: bytes, leg: Leg) -> LegStatus:
        asked.append(tid)
        return await get_leg(tid, leg)

    relayers["a"].get_leg = counted  # type: ignore[method-assign]
    with pytest.raises(Unavailable, match="1 transfers adopted from a are unfinished"):
        await c.on_events("a", [locked_event(failed, height=6)], 6)
    assert asked.count(failed.transfer_id) == 1, "one read, then refused"
    await c._recheck_failed()  # the sweep finds the lock too, and passes it over
    got = await store.get(failed.transfer_id)
    assert got is not None and got.state is TransferState.FAILED
    assert await store.unfinished_adopted("a") == 1
    assert recorded_events(tmp_path) == 1, "the refused event is delivered again"
    released = terms()
    await _adopted(store, released)
    await store.set_state(released.transfer_id, TransferState.FAILED, "no lock", "failed")
    relayers["a"].legs[(released.transfer_id, Leg.OUTBOUND)] = LegStatus(
        LegState.RELEASED, released.terms_hash, 0, 5
    )
    assert await c.on_events("a", [locked_event(released, height=7)], 7) == 1
    held.set()
    assert await final(store, other.transfer_id) is TransferState.COMMITTED
    assert await c.on_events("a", [locked_event(failed, height=6)], 6) == 1
    assert await final(store, failed.transfer_id) is TransferState.COMMITTED


async def test_a_sweep_resumes_adoptions_only_while_room_is_left(
    coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each adoption a sweep resumes takes room (review helper-130 L5): with room for one
    more, of two FAILED adoptions whose locks the ledger shows, one is resumed and the
    other is passed over, named in the log."""
    import bridge.coordinator.intake as intake

    monkeypatch.setattr(intake, "MAX_UNFINISHED_ADOPTED", 2)
    c, relayers, store = coordinator
    hold(relayers["b"])  # resumed adoptions stay unfinished
    first, second = terms(), terms()
    for t in (first, second):
        await _adopted(store, t)
        await store.set_state(t.transfer_id, TransferState.FAILED, "no lock", "failed")
        show_lock(relayers["a"], t)
    await _adopted(store, terms())  # one unfinished: room for one more
    with capture_logs() as logs:
        await c._recheck_failed()
    states = [(await store.get(t.transfer_id)).state for t in (first, second)]  # type: ignore[union-attr]
    assert sorted(s.name for s in states) == ["FAILED", "SOURCE_LOCKED"]
    assert await store.unfinished_adopted("a") == 2
    said = [e for e in logs if e["event"].startswith("locks found for failed adopted")]
    assert len(said) == 1 and said[0]["count"] == 1


async def test_a_slow_delivery_never_holds_the_sweep(coordinator) -> None:
    """Review helper-130 M1: the sweep took a ledger's delivery lock for its adoption
    count, so a delivery held inside its relayer's reads (a compromised relayer answering
    slowly) stalled the sweep of every ledger. The sweep now leaves that ledger's adopted
    transfers to a later sweep and resumes its submitted ones at once."""
    c, relayers, store = coordinator
    relayers["a"].lock_refusal = LedgerRejected(ErrorReason.INSUFFICIENT_BALANCE, "balance=1")
    record, _ = await driver_tests.submit(c, request("k-swept"))
    assert await final(store, record.transfer_id) is TransferState.FAILED
    relayers["a"].lock_refusal = None
    adopted = terms()
    await _adopted(store, adopted)
    await store.set_state(adopted.transfer_id, TransferState.FAILED, "no lock", "failed")
    for t in (record.terms, adopted):
        show_lock(relayers["a"], t)
    stuck, asked = asyncio.Event(), asyncio.Event()
    get_leg = relayers["a"].get_leg

    async def slow(tid: bytes, leg: Leg) -> LegStatus:
        if tid == slow_id:
            asked.set()
            await stuck.wait()
        return await get_leg(tid, leg)

    fake = terms()
    slow_id = fake.transfer_id
    relayers["a"].get_leg = slow  # type: ignore[method-assign]
    delivery = asyncio.ensure_future(c.on_events("a", [locked_event(fake, height=9)], 9))
    await asyncio.wait_for(asked.wait(), 5)
    with capture_logs() as logs:
        await asyncio.wait_for(c._recheck_failed(), 5)
    resumed = await store.get(record.transfer_id)
    assert resumed is not None and resumed.state is not TransferState.FAILED
    waiting = await store.get(adopted.transfer_id)
    assert waiting is not None and waiting.state is TransferState.FAILED
    said = [e for e in logs if e["event"].startswith("locks found for failed adopted")]
    assert len(said) == 1 and said[0]["reason"] == "a delivery is running"
    stuck.set()
    await asyncio.wait_for(delivery, 5)
    await c._recheck_failed()  # the ledger is free again: the adoption is resumed
    again = await store.get(adopted.transfer_id)
    assert again is not None and again.state is not TransferState.FAILED


async def test_a_delivery_waiting_for_the_lock_also_defers_adoptions(coordinator) -> None:
    """Review helper-131 M1: between one delivery releasing the ledger's lock and the next
    one, queued behind it, taking it, the lock reads free; a sweep taking it then would
    queue behind that next delivery (and its relayer's reads). A delivery waiting for the
    lock counts as running: the sweep defers the ledger's adopted transfers."""
    c, relayers, store = coordinator
    adopted = terms()
    await _adopted(store, adopted)
    await store.set_state(adopted.transfer_id, TransferState.FAILED, "no lock", "failed")
    show_lock(relayers["a"], adopted)
    c._intake._deliveries["a"] += 1  # one waits for the (free) lock
    try:
        with capture_logs() as logs:
            await asyncio.wait_for(c._recheck_failed(), 5)
    finally:
        c._intake._deliveries["a"] -= 1
    waiting = await store.get(adopted.transfer_id)
    assert waiting is not None and waiting.state is TransferState.FAILED
    said = [e for e in logs if e["event"].startswith("locks found for failed adopted")]
    assert len(said) == 1 and said[0]["transfer_ids"] == ["0x" + adopted.transfer_id.hex()]
    await c._recheck_failed()
    again = await store.get(adopted.transfer_id)
    assert again is not None and again.state is not TransferState.FAILED
