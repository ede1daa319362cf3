"""One transfer row the coordinator cannot parse (damaged, or written by a newer release)
stops nothing else: its reads raise a typed UnreadableRecord, never "no transfer"; scans
leave it out and report it once; the coordinator starts and drives every other transfer;
a relayer's batch of events goes on past it (before, every re-delivery failed on it and
the ledger's whole intake stopped)."""

from __future__ import annotations

import base64
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.coordinator.engine import Coordinator
from bridge.coordinator.metrics import CoordinatorMetrics
from bridge.coordinator.store import SqlTransferStore, UnreadableRecord, _terms_text
from bridge.domain.errors import Unavailable, public_text
from bridge.domain.transfer import TransferState
from bridge.obs.metrics import CommonMetrics
from bridge.rpc.errors import status_for
from tests.unit.test_coordinator_driver import (
    FakeCommittee,
    coordinator,
    final,
    holder_lock,
    lock_event,
    request,
    submit,
)
from tests.unit.test_store import db_path, legacy_terms_json, make_record, make_store, store

pytestmark = [pytest.mark.unit]

__all__ = ["coordinator", "db_path", "make_store", "store"]  # fixtures


def _noncanonical(text: str) -> str:
    """``text`` (compact terms without an instruction: 352 bytes, so base64 ending in "==")
    with the lowest unused bit of its last character set: the same bytes decoded."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    assert text.endswith("==")
    last = alphabet[alphabet.index(text[-3]) ^ 1]
    changed = text[:-3] + last + "=="
    assert base64.b64decode(changed[3:]) == base64.b64decode(text[3:]) and changed != text
    return changed


DAMAGES = {
    "request not JSON": ("request", "{not json"),
    "a state of a newer release": ("state", 99),
    "terms missing a field": ("terms", '{"nonce": "00"}'),
    "an origin of a newer release": ("origin", "from-the-future"),
    "compact terms not base64": ("terms", "t1:not*base64"),
    "compact terms too short": ("terms", "t1:AAAA"),
    "compact terms with a cut instruction": (
        "terms",
        _terms_text(make_record(9).terms, bytes(range(65)))[:-8],
    ),
    "compact terms with padding bits set": (
        "terms",
        _noncanonical(_terms_text(make_record(9).terms)),
    ),
    "compact terms with a zero amount": ("terms", "t1:" + base64.b64encode(bytes(352)).decode()),
    "JSON terms with a zero amount": (
        "terms",
        legacy_terms_json(make_record(9).terms, b"").replace('"amount": 100', '"amount": 0'),
    ),
}


async def damage(store: SqlTransferStore, tid: bytes, column: str, value: Any) -> None:
    """Overwrite one column of a stored transfer row as it stands (no encoder)."""

    def run(db):  # type: ignore[no-untyped-def]
        # Only the test's constant column names are formatted in.
        db.execute(f"UPDATE transfers SET {column} = ? WHERE transfer_id = ?", (value, tid))

    await store._db.write(run)


@pytest.mark.parametrize("how", list(DAMAGES))
async def test_an_unreadable_row_is_typed_on_reads_and_left_out_of_scans(
    store: SqlTransferStore, how: str
) -> None:
    records = [make_record(n) for n in range(3)]
    for r in records:
        await store.create(r)
    bad = records[1].transfer_id
    await damage(store, bad, *DAMAGES[how])

    with pytest.raises(UnreadableRecord) as info:
        await store.get(bad)
    assert info.value.transfer_id == bad
    assert status_for(info.value).name == "INTERNAL"
    assert bad.hex() in public_text(info.value) and "{not json" not in public_text(info.value)
    many = await store.get_many([records[0].transfer_id, bad, records[2].transfer_id])
    assert many.found == {r.transfer_id: r for r in (records[0], records[2])}
    assert list(many.unreadable) == [bad] and many.unreadable[bad].transfer_id == bad
    with pytest.raises(UnreadableRecord):
        await store.get_by_key("brokerage-a", records[1].request.idempotency_key)
    assert await store.get(records[0].transfer_id) == records[0]

    others = [records[0].transfer_id, records[2].transfer_id]
    assert [r.transfer_id for r in await store.unfinished()] == others
    assert [r.transfer_id for r in await store.stuck(time.time() + 1, 10)] == others
    page, cursor = await store.list_transfers(None, None, 2, 0)
    assert [r.transfer_id for r in page] == [records[0].transfer_id], "the page holds 2 rows"
    assert cursor != 0
    rest, _ = await store.list_transfers(None, None, 2, cursor)
    assert [r.transfer_id for r in rest] == [records[2].transfer_id], "paging goes past it"
    # A brokerage's ledger-scoped listing (the target ledger is a column since schema 11:
    # before, SQL parsed the request JSON, and a malformed one failed the whole listing).
    for ledger in ("brokerage-a", "brokerage-b"):
        scoped, _ = await store.list_transfers(None, None, 10, 0, ledger=ledger)
        assert [r.transfer_id for r in scoped] == others
    assert store.unreadable.count == 1, "reported once however often it is scanned"

    gauge = CoordinatorMetrics(CommonMetrics.create("coordinator"), 60.0)
    await gauge.refresh(store, _NoHalts(), None, None, [], [])
    assert gauge.unreadable._value.get() == 1


class _NoHalts:
    async def halted_on(self, record: object) -> list[str]:
        return []


async def test_the_coordinator_starts_and_drives_the_others_past_one(
    coordinator: Any, tmp_path: Path
) -> None:
    """Three transfers wait (the source relayer is down); one's row is damaged; a new
    coordinator on the same store starts, drives the other two to COMMITTED, and never
    treats the damaged one as absent."""
    c, relayers, store = coordinator
    a = relayers["a"]
    up = a.submit

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise Unavailable("relayer of a unreachable")

    a.submit = down
    tids = [(await submit(c, request(f"w{i}")))[0].transfer_id for i in range(3)]
    await c.stop()
    await damage(store, tids[1], "request", "{not json")
    a.submit = up

    again = Coordinator(c._network, store, relayers, FakeCommittee(), transfer_ttl=60,  # type: ignore[arg-type]
                        max_backoff=0.2, sweep_every=0.1)  # fmt: skip
    await again.start()
    try:
        assert await final(store, tids[0]) is TransferState.COMMITTED
        assert await final(store, tids[2]) is TransferState.COMMITTED
        assert store.unreadable.count == 1
        with pytest.raises(UnreadableRecord):
            await store.get(tids[1])
    finally:
        await again.stop()


async def test_a_batch_of_events_goes_on_past_an_unreadable_transfer(coordinator: Any) -> None:
    """A relayer delivers two events: one for a transfer whose row is damaged, one for a
    lock nobody instructed (adopted, then released). The batch is accepted, the second is
    acted on, and the first is never adopted as a transfer of its own."""
    c, relayers, store = coordinator
    record, _ = await submit(c, request("damaged"))
    assert await final(store, record.transfer_id) is TransferState.COMMITTED
    await damage(store, record.transfer_id, "state", 99)
    t = record.terms
    on_bad = lock_event(t, 3)
    rogue, adopted = holder_lock(relayers, b"\x13" * 20, 3, index=1, tx="0x02")
    assert await c.on_events("a", [on_bad, adopted], 3) == 2
    assert await final(store, rogue.transfer_id) is TransferState.ABORTED
    assert await c.on_events("a", [on_bad, adopted], 3) == 0, "both recorded as seen"
    with pytest.raises(UnreadableRecord):
        await store.get(t.transfer_id)  # still the damaged row: nothing adopted over it


async def test_a_repaired_row_is_read_again_and_no_longer_counted(store: SqlTransferStore) -> None:
    rec = make_record(1)
    await store.create(rec)
    text = await store._db.read(
        lambda db: db.execute(
            "SELECT request FROM transfers WHERE transfer_id = ?", (rec.transfer_id,)
        ).fetchone()[0]
    )
    await damage(store, rec.transfer_id, "request", "{not json")
    assert await store.unfinished() == [] and store.unreadable.count == 1
    await damage(store, rec.transfer_id, "request", str(text))  # repaired from a backup
    assert await store.unfinished() == [rec]
    assert store.unreadable.count == 0, "the gauge (and its alert) clears"


async def test_a_lanes_queue_goes_on_past_a_request_that_is_not_json(
    store: SqlTransferStore,
) -> None:
    """A queued row whose request column is not JSON at all: before schema 11 the lane's
    reads compared the request's target ledger in SQL, and the malformed JSON failed every
    read of the lane (both engines); now the row counts 0 and the lane goes on."""
    from bridge.domain.transfer import TransferState

    queued = [make_record(n, state=TransferState.QUEUED, amount=10 + n) for n in range(3)]
    for r in queued:
        await store.create(r)
    await damage(store, queued[0].transfer_id, "request", "{not json")
    count, units, _ = await store.queued_on_lane("KR7005930003", "brokerage-a", "brokerage-b")
    assert (count, units) == (3, 11 + 12)
    assert await store.lane_backlog(queued[2].transfer_id, [TransferState.QUEUED]) == 11
    assert store.unreadable.count == 1


async def test_a_lanes_queue_goes_on_past_an_unreadable_amount(store: SqlTransferStore) -> None:
    """Review helper-113 M4: a queued transfer whose request names no readable amount
    takes no lane capacity (it takes no step) and does not stop its lane's other
    transfers' queue reads."""
    import json

    from bridge.domain.transfer import TransferState

    queued = [make_record(n, state=TransferState.QUEUED, amount=10 + n) for n in range(3)]
    for r in queued:
        await store.create(r)
    bad = dataclasses.asdict(queued[0].request) | {"amount": "lots"}
    await damage(store, queued[0].transfer_id, "request", json.dumps(bad))
    count, units, _ = await store.queued_on_lane("KR7005930003", "brokerage-a", "brokerage-b")
    assert (count, units) == (3, 11 + 12)
    ahead = await store.lane_backlog(queued[2].transfer_id, [TransferState.QUEUED])
    assert ahead == 11
    assert store.unreadable.count == 1


async def test_coalesced_key_lookups_fail_only_the_unreadable_key(
    store: SqlTransferStore,
) -> None:
    """Review helper-113 M3: admission's key lookups of one source ledger go out as one
    read; one unreadable row among them fails only its own key's lookup, so the ledger's
    other submissions are admitted. The store answers that key its UnreadableRecord in the
    same read (before, the read failed and every key was read again alone: up to 500)."""
    import asyncio

    from bridge.coordinator.key_reads import KeyReads

    records = [make_record(n) for n in range(3)]
    for r in records:
        await store.create(r)
    await damage(store, records[1].transfer_id, "state", 99)
    reads_of_many: list[int] = []
    many, one = store.get_by_keys, store.get_by_key

    async def counted(ledger: str, keys: Any) -> Any:
        reads_of_many.append(len(keys))
        return await many(ledger, keys)

    async def alone(ledger: str, key: str) -> Any:
        raise AssertionError("a key was read alone")

    store.get_by_keys, store.get_by_key = counted, alone  # type: ignore[method-assign]
    reads = KeyReads(store, max_in_flight=1, linger_ms=20)
    try:
        got = await asyncio.gather(
            *(reads.get("brokerage-a", r.request.idempotency_key) for r in records),
            reads.get("brokerage-a", "never-used"),
            return_exceptions=True,
        )
    finally:
        await reads.close()
    assert got[0] == records[0] and got[2] == records[2] and got[3] is None
    assert isinstance(got[1], UnreadableRecord) and got[1].transfer_id == records[1].transfer_id
    assert sum(reads_of_many) == 4 and len(reads_of_many) <= 2, reads_of_many
    store.get_by_key = one  # type: ignore[method-assign]
    with pytest.raises(UnreadableRecord):
        await store.get_by_key("brokerage-a", records[1].request.idempotency_key)
    found = await many("brokerage-a", [r.request.idempotency_key for r in records])
    assert isinstance(found[records[1].request.idempotency_key], UnreadableRecord)
    assert found[records[0].request.idempotency_key] == records[0]
    assert store.unreadable.count == 1
    assert got[1].transfer_id == records[1].transfer_id


async def test_a_state_change_of_an_unreadable_row_records_nothing(store: SqlTransferStore) -> None:
    """Review helper-114 L3: a state change whose returned row cannot be parsed is rolled
    back (nothing recorded, no history entry) and the row reported like a read's."""
    from bridge.domain.transfer import TransferState

    rec = make_record(1)
    await store.create(rec)
    await damage(store, rec.transfer_id, "request", "{not json")
    with pytest.raises(UnreadableRecord):
        await store.set_state(rec.transfer_id, TransferState.SOURCE_LOCKED, "locked", "locked")
    assert store.unreadable.count == 1
    history = await store.history(rec.transfer_id, 0)
    assert [h.state for h in history] == [TransferState.SUBMITTED]
    state = await store._db.read(
        lambda db: db.execute(
            "SELECT state FROM transfers WHERE transfer_id = ?", (rec.transfer_id,)
        ).fetchone()[0]
    )
    assert int(state) == int(TransferState.SUBMITTED)


def test_a_coordinator_of_an_older_release_exits_6_on_a_newer_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Review helper-115 L1: a database migrated by a newer release (rows this release may
    not read, e.g. compact terms) is refused at start with status 6, which the systemd
    unit does not restart (RestartPreventExitStatus), instead of a traceback and exit 1
    every five seconds."""
    from bridge.coordinator import __main__ as daemon
    from bridge.coordinator import schema
    from bridge.storage.migrations import StoreTooNew

    async def newer(config: Path) -> None:
        raise StoreTooNew(schema.KIND, schema.LATEST + 1, schema.LATEST)

    import structlog

    monkeypatch.setattr(daemon, "run", newer)
    # The process-wide set-up main() does first (descriptor 2, logging, the collector) is
    # not this test's: left as the test process has it.
    monkeypatch.setattr(daemon, "route_native_stderr", lambda component: False)
    monkeypatch.setattr(daemon, "configure", lambda component: structlog.get_logger())
    monkeypatch.setattr(daemon, "tune_collector", lambda: None)
    with pytest.raises(SystemExit) as info:
        daemon.main(["--config", str(tmp_path / "coordinator.toml")])
    assert info.value.code == daemon.EXIT_STORE_TOO_NEW == 6
    unit = Path(__file__).parents[2] / "deploy" / "systemd" / "kstb-coordinator.service"
    assert "RestartPreventExitStatus=3 6" in unit.read_text()
