"""The coordinator's SQLite store: idempotent creation, history, decisions, events, paging."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.coordinator.db import open_database
from bridge.coordinator.records import Decision, TransferRecord, TransferRequest
from bridge.coordinator.store import (
    SqliteTransferStore,
    SqlTransferStore,
    UnreadableRecord,
    summarise,
)
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import Conflict
from bridge.domain.flow import WaitReason
from bridge.domain.legs import EventPosition, LedgerEvent, Leg, LegState, SignatureSet
from bridge.domain.terms import TransferTerms
from bridge.domain.transfer import TransferState

pytestmark = pytest.mark.unit

SENDER = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
RECIPIENT = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"


def w(byte: int) -> bytes:
    return bytes([byte]) * 32


def make_record(
    n: int,
    *,
    key: str | None = None,
    security: str = "KR7005930003",
    state: TransferState = TransferState.SUBMITTED,
    amount: int = 100,
    source_ledger: str = "brokerage-a",
) -> TransferRecord:
    terms = TransferTerms(
        nonce=n.to_bytes(32, "big"),
        security=security.encode().ljust(32, b"\0"),
        amount=amount,
        src_ledger=w(0xA0),
        src_bridge=w(0xB0),
        dst_ledger=w(0xA1),
        dst_bridge=w(0xB1),
        sender=b"\0" * 12 + bytes.fromhex(SENDER[2:]),
        recipient=b"\0" * 12 + bytes.fromhex(RECIPIENT[2:]),
        instructor=b"\0" * 12 + b"\x1e" * 20,
        deadline=1_800_000_000 + n,
    )
    request = TransferRequest(
        idempotency_key=key if key is not None else f"key-{n}",
        security=security,
        source_ledger=source_ledger,
        target_ledger="brokerage-b",
        sender=SENDER,
        recipient=RECIPIENT,
        amount=amount,
    )
    return TransferRecord(
        transfer_id=terms.transfer_id,
        request=request,
        terms=terms,
        state=state,
        reason="accepted",
        created_at=1000.0 + n,
        updated_at=1000.0 + n,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "coordinator.sqlite"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def make_store(request: pytest.FixtureRequest, db_path: Path) -> Callable[[], SqlTransferStore]:
    """Open a store on this test's database (the same one every call): the SQLite file,
    or a fresh schema of the module's PostgreSQL database (a real cluster; ADR 0013)."""
    if request.param == "sqlite":
        return lambda: SqliteTransferStore(db_path)
    url = request.getfixturevalue("fresh_pg_url")
    return lambda: SqlTransferStore(open_database(url))


@pytest.fixture
def store(make_store: Callable[[], SqlTransferStore]) -> Iterator[SqlTransferStore]:
    s = make_store()
    yield s
    s.close()


def event(tid: bytes, height: int, index: int, state: LegState = LegState.LOCKED) -> LedgerEvent:
    return LedgerEvent(
        ledger="brokerage-a",
        position=EventPosition(height, index),
        block_hash=w(height % 256),
        tx_id=f"0x{height:04x}{index:04x}",
        transfer_id=tid,
        leg=Leg.OUTBOUND,
        state=state,
        reason=0,
        terms_hash=w(0xEE),
    )


# -- create / get --------------------------------------------------------------------------


async def test_create_then_get(store: SqlTransferStore) -> None:
    rec = make_record(1, amount=2**256 - 1)
    stored, created = await store.create(rec)
    assert created
    assert stored == rec
    assert await store.get(rec.transfer_id) == rec
    assert await store.get_by_key(rec.request.source_ledger, "key-1") == rec
    assert await store.get(w(0x99)) is None
    assert await store.get_by_key(rec.request.source_ledger, "nope") is None


async def test_a_record_is_read_from_its_columns_as_they_are_now(store: SqlTransferStore) -> None:
    """The parsed request and terms are kept per column text, never per transfer: a row
    whose columns read otherwise now (here rewritten behind the store's back) reads as
    they are, and a column that does not parse raises on every read."""
    from bridge.coordinator.db import Conn

    rec = make_record(1)
    await store.create(rec)
    from bridge.coordinator import store as store_module

    hits = store_module._terms_of.cache_info().hits
    assert await store.get(rec.transfer_id) == rec
    assert await store.get(rec.transfer_id) == rec
    assert store_module._terms_of.cache_info().hits >= hits + 1  # parsed once, then kept
    other = make_record(2, key="key-other", amount=7)
    await store.create(other)
    row = await store._db.read(
        lambda db: db.execute(
            "SELECT request, terms FROM transfers WHERE transfer_id = ?", (other.transfer_id,)
        ).fetchone()
    )

    def rewrite(request: str, terms: str) -> Callable[[Conn], None]:
        def run(db: Conn) -> None:
            db.execute(
                "UPDATE transfers SET request = ?, terms = ? WHERE transfer_id = ?",
                (request, terms, rec.transfer_id),
            )

        return run

    await store._db.write(rewrite(str(row[0]), str(row[1])))
    now = await store.get(rec.transfer_id)
    assert now is not None
    assert (now.request, now.terms) == (other.request, other.terms)
    await store._db.write(rewrite("{not json", str(row[1])))
    for _ in range(2):
        with pytest.raises(UnreadableRecord) as info:
            await store.get(rec.transfer_id)
        assert isinstance(info.value.__cause__, json.JSONDecodeError)


def legacy_terms_json(t: TransferTerms, instruction: bytes) -> str:
    """A ``terms`` column as releases before schema version 10 wrote it (a JSON object of
    hex words, the two integers, and the instruction in hex)."""
    names = (
        "nonce", "security", "amount", "src_ledger", "src_bridge", "dst_ledger",
        "dst_bridge", "sender", "recipient", "instructor", "deadline",
    )  # fmt: skip
    data = {
        k: (v.hex() if isinstance(v, bytes) else v)
        for k, v in zip(names, t.as_abi_tuple(), strict=True)
    }
    data["instruction"] = instruction.hex()
    return json.dumps(data)


async def terms_column(store: SqlTransferStore, tid: bytes) -> str:
    row = await store._db.read(
        lambda db: db.execute(
            "SELECT terms FROM transfers WHERE transfer_id = ?", (tid,)
        ).fetchone()
    )
    return str(row[0])


@pytest.mark.batch  # issue 14: storage per transfer
@pytest.mark.parametrize("instruction", [b"", bytes(range(65))], ids=["adopted", "instructed"])
async def test_terms_are_stored_compact_and_rows_of_older_releases_still_read(
    store: SqlTransferStore, instruction: bytes
) -> None:
    """Schema version 10: a transfer's terms and instruction are written in the compact
    form, at most 60 % of the JSON object's length, and read back equal (the largest amount
    and deadline included); a row written in the JSON form of older releases reads the
    same record."""
    from bridge.coordinator.store import TERMS_FORM
    from bridge.domain.terms import UINT64_MAX, UINT256_MAX

    big = make_record(1)
    terms = dataclasses.replace(big.terms, amount=UINT256_MAX, deadline=UINT64_MAX)
    rec = dataclasses.replace(
        big, terms=terms, transfer_id=terms.transfer_id, instruction=instruction
    )
    await store.create(rec)
    text = await terms_column(store, rec.transfer_id)
    assert text.startswith(TERMS_FORM)
    assert len(text) < len(legacy_terms_json(terms, instruction)) * 0.6
    assert await store.get(rec.transfer_id) == rec

    old = dataclasses.replace(make_record(2), instruction=instruction)
    await store.create(old)

    def rewrite(db: Any) -> None:
        db.execute(
            "UPDATE transfers SET terms = ? WHERE transfer_id = ?",
            (legacy_terms_json(old.terms, instruction), old.transfer_id),
        )

    await store._db.write(rewrite)
    assert (await terms_column(store, old.transfer_id)).startswith("{")
    assert await store.get(old.transfer_id) == old


async def test_create_is_idempotent_per_key(store: SqlTransferStore) -> None:
    original = make_record(1, key="order-7")
    await store.create(original)
    retry = make_record(2, key="order-7", amount=555)  # other terms, same key
    stored, created = await store.create(retry)
    assert created is False
    assert stored == original
    assert await store.get(retry.transfer_id) is None
    history = await store.history(original.transfer_id, 0)
    assert [(h.sequence, h.state, h.detail) for h in history] == [
        (1, TransferState.SUBMITTED, "accepted")
    ]


@pytest.mark.security
async def test_keys_are_scoped_per_source_ledger(store: SqlTransferStore) -> None:
    mine = make_record(1, key="order-1")
    theirs = make_record(2, key="order-1", source_ledger="brokerage-c")
    assert (await store.create(mine))[1] is True
    stored, created = await store.create(theirs)
    assert created and stored == theirs, "another brokerage's key never blocks this one"
    assert await store.get_by_key("brokerage-a", "order-1") == mine
    assert await store.get_by_key("brokerage-c", "order-1") == theirs
    assert await store.get_by_key("brokerage-b", "order-1") is None


@pytest.mark.security
@pytest.mark.batch  # issue 14: admission's key lookups read together (KeyReads)
async def test_keys_read_together_answer_only_their_own_ledger(store: SqlTransferStore) -> None:
    """``get_by_keys`` answers exactly what ``get_by_key`` answers for each key, scoped to
    its source ledger (another brokerage's same key is not an answer), over several pages."""
    mine = [make_record(n, key=f"order-{n}") for n in range(1, 1103)]
    theirs = make_record(5000, key="order-7", source_ledger="brokerage-c")
    await store.create_many([*mine, theirs])
    asked = ["order-7", "nope", *(f"order-{n}" for n in range(1, 1103)), "order-7"]
    found = await store.get_by_keys("brokerage-a", asked)
    assert set(found) == {f"order-{n}" for n in range(1, 1103)}
    assert all(found[r.request.idempotency_key] == r for r in mine)
    assert (await store.get_by_keys("brokerage-c", ["order-7", "order-8"])) == {"order-7": theirs}
    assert await store.get_by_keys("brokerage-b", ["order-7"]) == {}
    assert await store.get_by_keys("brokerage-a", []) == {}


@pytest.mark.security
async def test_same_transfer_under_another_key_is_a_conflict(store: SqlTransferStore) -> None:
    rec = make_record(1, key="first")
    await store.create(rec)
    again = dataclasses.replace(
        rec, request=dataclasses.replace(rec.request, idempotency_key="second")
    )
    with pytest.raises(Conflict, match="already submitted under another idempotency_key"):
        await store.create(again)
    assert await store.get_by_key("brokerage-a", "second") is None
    assert len(await store.history(rec.transfer_id, 0)) == 1


@pytest.mark.batch  # issue 14: a batch's items recorded in one transaction
async def test_create_many_records_in_order_in_one_transaction(store: SqlTransferStore) -> None:
    """Each record as ``create`` would have it (created, an existing key's stored record, or
    its Conflict, confined to it), in one transaction, the store sequence in item order."""
    first = make_record(1, key="first")
    await store.create(first)
    fresh = [make_record(10 + n, key=f"batch-{n}") for n in range(4)]
    retry = make_record(2, key="first", amount=555)  # the existing key, other terms
    stolen = dataclasses.replace(
        first, request=dataclasses.replace(first.request, idempotency_key="stolen")
    )  # the existing transfer id under a new key
    commits = store._db.commits
    outcomes = await store.create_many([fresh[0], retry, fresh[1], stolen, fresh[2], fresh[3]])
    assert store._db.commits == commits + 1
    assert outcomes[0] == (fresh[0], True)
    assert outcomes[1] == (first, False)
    assert isinstance(outcomes[3], Conflict)
    assert [outcomes[2], outcomes[4], outcomes[5]] == [(r, True) for r in fresh[1:]]
    assert await store.get_by_key("brokerage-a", "stolen") is None
    listed, _ = await store.list_transfers(None, None, 10, 0)
    assert [r.request.idempotency_key for r in listed] == ["first"] + [
        f"batch-{n}" for n in range(4)
    ]
    for r in fresh:
        assert [h.detail for h in await store.history(r.transfer_id, 0)] == ["accepted"]
    assert await store.create_many([]) == []
    assert store._db.commits == commits + 1


_V1_TRANSFERS = """
CREATE TABLE transfers (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  transfer_id BLOB NOT NULL UNIQUE,
  idempotency_key TEXT NOT NULL UNIQUE,
  request TEXT NOT NULL,
  terms TEXT NOT NULL,
  security TEXT NOT NULL,
  state INTEGER NOT NULL,
  reason TEXT NOT NULL,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  transactions TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX transfers_state ON transfers(state);
"""


@pytest.mark.security
async def test_a_file_with_global_keys_is_migrated(db_path: Path) -> None:
    # A file written before keys were scoped per source ledger (and before ``origin``).
    s = SqliteTransferStore(db_path)
    recs = [make_record(1, key="order-1"), make_record(2, key="onchain:0x" + "00" * 32)]
    adopted = make_record(3)
    adopted = dataclasses.replace(
        adopted,
        request=dataclasses.replace(
            adopted.request, idempotency_key="onchain:0x" + adopted.transfer_id.hex()
        ),
    )
    for r in [*recs, adopted]:
        await s.create(r)
    rows = s._db.run_sync(
        lambda c: c.execute(
            "SELECT seq, transfer_id, idempotency_key, request, terms, security, state, reason,"
            " created_at, updated_at, transactions FROM transfers ORDER BY seq"
        ).fetchall()
    )
    s.close()
    raw = sqlite3.connect(db_path)
    # A file written before the schema was versioned has no schema_version table either.
    raw.executescript(
        "DROP TABLE transfers; DROP TABLE schema_version; DROP TABLE supply_feed_head;"
        " DROP TABLE coordinator_lease; DROP TABLE coordinator_members;"
        " DROP TABLE transfer_batches;" + _V1_TRANSFERS
    )
    raw.executemany("INSERT INTO transfers VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    raw.commit()
    raw.close()

    migrated = SqliteTransferStore(db_path)
    try:
        assert await migrated.get(recs[0].transfer_id) == recs[0]
        assert await migrated.get_by_key("brokerage-a", "order-1") == recs[0]
        got = await migrated.get(adopted.transfer_id)
        assert got is not None and got.origin.value == "adopted"
        theirs = make_record(4, key="order-1", source_ledger="brokerage-c")
        assert (await migrated.create(theirs))[1] is True
        page, _ = await migrated.list_transfers(None, None, 10, 0)
        assert [r.transfer_id for r in page] == [r.transfer_id for r in [*recs, adopted, theirs]], (
            "rows and their order kept"
        )
    finally:
        migrated.close()
    SqliteTransferStore(db_path).close()  # opening a migrated file again changes nothing


async def test_create_writes_first_history_entry(store: SqlTransferStore) -> None:
    rec = make_record(3, state=TransferState.SOURCE_LOCKED)
    await store.create(rec)
    (entry,) = await store.history(rec.transfer_id, 0)
    assert (entry.transfer_id, entry.sequence, entry.state, entry.at) == (
        rec.transfer_id,
        1,
        TransferState.SOURCE_LOCKED,
        1003.0,
    )


# -- state and history ---------------------------------------------------------------------


async def test_set_state_appends_history_only_on_change(store: SqlTransferStore) -> None:
    rec = make_record(1)
    await store.create(rec)
    tid = rec.transfer_id
    w = await store.set_state(tid, TransferState.SOURCE_LOCKED, "locked", "lock seen")
    assert (w.record.state, w.record.reason) == (TransferState.SOURCE_LOCKED, "locked")
    assert (w.previous, w.previous_at) == (TransferState.SUBMITTED, rec.updated_at)
    w = await store.set_state(tid, TransferState.SOURCE_LOCKED, "still locked", "ignored")
    assert (w.record.reason, w.previous) == ("still locked", TransferState.SOURCE_LOCKED)
    await store.set_state(tid, TransferState.TARGET_PREPARED, "prepared", "prepare seen")
    await store.set_state(tid, TransferState.COMMITTING, "", "commit certified")
    history = await store.history(tid, 0)
    assert [(h.sequence, h.state, h.detail) for h in history] == [
        (1, TransferState.SUBMITTED, "accepted"),
        (2, TransferState.SOURCE_LOCKED, "lock seen"),
        (3, TransferState.TARGET_PREPARED, "prepare seen"),
        (4, TransferState.COMMITTING, "commit certified"),
    ]
    assert [h.sequence for h in await store.history(tid, 2)] == [3, 4]
    assert await store.history(tid, 4) == []


async def test_history_sequences_are_per_transfer(store: SqlTransferStore) -> None:
    a, b = make_record(1), make_record(2)
    await store.create(a)
    await store.create(b)
    await store.set_state(a.transfer_id, TransferState.SOURCE_LOCKED, "", "a")
    await store.set_state(b.transfer_id, TransferState.FAILED, "", "b")
    assert [h.sequence for h in await store.history(b.transfer_id, 0)] == [1, 2]
    assert [h.detail for h in await store.history(a.transfer_id, 0)] == ["accepted", "a"]


async def test_set_state_of_unknown_transfer_raises(store: SqlTransferStore) -> None:
    with pytest.raises(KeyError):
        await store.set_state(w(0x42), TransferState.FAILED, "", "")
    # The failed transaction was rolled back and the store is still usable.
    _, created = await store.create(make_record(1))
    assert created


async def test_set_reason_and_transactions(store: SqlTransferStore) -> None:
    rec = make_record(1)
    await store.create(rec)
    await store.set_reason(rec.transfer_id, "waiting for finality")
    await store.add_transaction(rec.transfer_id, "lock", "0xaa")
    await store.add_transaction(rec.transfer_id, "prepare", "0xbb")
    await store.add_transaction(rec.transfer_id, "lock", "0xcc")
    got = await store.get(rec.transfer_id)
    assert got is not None
    assert got.reason == "waiting for finality"
    assert got.state is TransferState.SUBMITTED
    assert dict(got.transactions) == {"lock": "0xcc", "prepare": "0xbb"}
    assert len(await store.history(rec.transfer_id, 0)) == 1


@pytest.mark.batch  # issue 14: a batch's transactions in two statements a page
async def test_add_transactions_records_every_item_of_a_batch_or_none(
    store: SqlTransferStore,
) -> None:
    """Many transfers (past a page of 500 ids), two steps of one transfer, a step recorded
    again (the same transaction: unchanged; another: replaced, in item order), each item
    under its own step; a call naming an unknown transfer records nothing of its items."""
    records = [make_record(n) for n in range(1, 603)]
    await store.create_many(records)
    first, second = records[0].transfer_id, records[1].transfer_id
    await store.add_transaction(second, "lock", "0x01")
    steps = [(r.transfer_id, "lock", f"0x{n:04x}") for n, r in enumerate(records)]
    steps += [(first, "prepare", "0xbb"), (second, "lock", "0x0001"), (first, "lock", "0xff")]
    await store.add_transactions(steps)
    got = (await store.get_many([r.transfer_id for r in records])).found
    assert dict(got[first].transactions) == {"lock": "0xff", "prepare": "0xbb"}
    assert dict(got[second].transactions) == {"lock": "0x0001"}
    assert all(
        dict(got[r.transfer_id].transactions) == {"lock": f"0x{n:04x}"}
        for n, r in enumerate(records)
        if n > 1
    )
    with pytest.raises(KeyError):
        await store.add_transactions(
            [(records[5].transfer_id, "burn", "0xee"), (w(0x42), "x", "y")]
        )
    again = await store.get(records[5].transfer_id)
    assert again is not None and "burn" not in again.transactions
    await store.add_transactions([])


# -- decisions -----------------------------------------------------------------------------


async def test_record_decision_keeps_the_first(store: SqlTransferStore) -> None:
    rec = make_record(1)
    await store.create(rec)
    tid = rec.transfer_id
    assert await store.decision(tid) is None
    commit = Decision(
        ClaimKind.COMMIT,
        {
            "brokerage-a": SignatureSet(2, (b"\x01" * 65, b"\x02" * 65)),
            "brokerage-b": SignatureSet(2, (b"\x03" * 65,)),
        },
    )
    abort = Decision(ClaimKind.ABORT, {"brokerage-a": SignatureSet(2, (b"\x09" * 65,))})
    assert await store.record_decision(tid, commit) == commit
    assert await store.record_decision(tid, abort) == commit
    assert await store.decision(tid) == commit
    got = await store.get(tid)
    assert got is not None
    assert got.decision is ClaimKind.COMMIT


# -- events --------------------------------------------------------------------------------


async def test_record_events_dedupes_by_position(store: SqlTransferStore) -> None:
    tid = w(0x01)
    e1, e2, e3 = event(tid, 10, 0), event(tid, 10, 1), event(tid, 11, 0)
    assert await store.record_events("brokerage-a", [e1, e2], scanned=10) == [e1, e2]
    # Re-delivery of e2 (same position, even with other content) is not fresh.
    again = event(w(0x02), 10, 1, LegState.RELEASED)
    assert await store.record_events("brokerage-a", [again, e3], scanned=11) == [e3]
    assert await store.record_events("brokerage-a", [e1, e2, e3], scanned=11) == []
    # The same position on another ledger is a different event.
    assert await store.record_events("brokerage-b", [e1], scanned=10) == [e1]


async def test_record_events_in_pages_keeps_the_first_of_a_position(
    store: SqlTransferStore,
) -> None:
    """More events than one statement's page (500), one position twice in the call with
    other content, some recorded before: the fresh ones, in the call's order, each once,
    and the first of a repeated position is the one recorded."""
    tid = w(0x03)
    before = [event(tid, 1, i) for i in range(0, 600, 3)]  # every third position
    assert await store.record_events("brokerage-a", before, scanned=1) == before
    batch = [event(tid, 1, i) for i in range(600)]
    twice = event(w(0x04), 1, 599, LegState.RELEASED)  # position (1, 599), other content
    early = event(w(0x05), 1, 1, LegState.RELEASED)  # repeats a position of the first page
    fresh = await store.record_events(
        "brokerage-a", [*batch, twice, early, batch[4]], scanned=2
    )  # batch[4] itself twice: answered once (review helper-132)
    assert fresh == [e for i, e in enumerate(batch) if i % 3]

    def stored(db):  # type: ignore[no-untyped-def]
        return db.execute(
            "SELECT COUNT(*), MAX(CASE WHEN idx = 599 THEN state END) FROM ledger_events"
            " WHERE ledger = 'brokerage-a' AND height = 1"
        ).fetchone()

    count, state_599 = await store._db.read(stored)
    assert (count, state_599) == (600, int(batch[599].state))
    assert await store.record_events("brokerage-a", [twice], scanned=2) == []


async def test_scanned_height_never_decreases(store: SqlTransferStore) -> None:
    assert await store.scanned_height("brokerage-a") is None
    await store.record_events("brokerage-a", [], scanned=20)
    assert await store.scanned_height("brokerage-a") == 20
    await store.record_events("brokerage-a", [], scanned=15)
    assert await store.scanned_height("brokerage-a") == 20
    await store.record_events("brokerage-a", [], scanned=21)
    assert await store.scanned_height("brokerage-a") == 21
    assert await store.scanned_height("brokerage-b") is None


# -- listing -------------------------------------------------------------------------------


async def test_list_paginates_in_creation_order(store: SqlTransferStore) -> None:
    recs = [make_record(n) for n in range(1, 6)]
    for r in recs:
        await store.create(r)
    page1, cursor1 = await store.list_transfers(None, None, 2, 0)
    assert [r.request.idempotency_key for r in page1] == ["key-1", "key-2"]
    assert cursor1 != 0
    page2, cursor2 = await store.list_transfers(None, None, 2, cursor1)
    assert [r.request.idempotency_key for r in page2] == ["key-3", "key-4"]
    assert cursor2 != 0
    page3, cursor3 = await store.list_transfers(None, None, 2, cursor2)
    assert [r.request.idempotency_key for r in page3] == ["key-5"]
    assert cursor3 == 0


async def test_list_exact_fit_has_no_next_page(store: SqlTransferStore) -> None:
    for n in range(1, 5):
        await store.create(make_record(n))
    page, cursor = await store.list_transfers(None, None, 4, 0)
    assert len(page) == 4
    assert cursor == 0
    page, cursor = await store.list_transfers(None, None, 10, 0)
    assert (len(page), cursor) == (4, 0)


async def test_list_filters_by_state_and_security(store: SqlTransferStore) -> None:
    await store.create(make_record(1, security="KR7005930003"))
    await store.create(make_record(2, security="US0378331005"))
    await store.create(make_record(3, security="KR7005930003"))
    await store.create(make_record(4, security="US0378331005"))
    r3 = make_record(3)
    await store.set_state(r3.transfer_id, TransferState.COMMITTED, "", "done")

    kr, _ = await store.list_transfers(None, "KR7005930003", 10, 0)
    assert [r.request.idempotency_key for r in kr] == ["key-1", "key-3"]
    done, _ = await store.list_transfers(TransferState.COMMITTED, None, 10, 0)
    assert [r.request.idempotency_key for r in done] == ["key-3"]
    both, _ = await store.list_transfers(TransferState.SUBMITTED, "US0378331005", 10, 0)
    assert [r.request.idempotency_key for r in both] == ["key-2", "key-4"]
    none, cursor = await store.list_transfers(TransferState.ABORTED, None, 10, 0)
    assert (none, cursor) == ([], 0)

    # Pagination with a filter: the cursor skips filtered-out rows correctly.
    us1, c = await store.list_transfers(None, "US0378331005", 1, 0)
    assert [r.request.idempotency_key for r in us1] == ["key-2"]
    us2, c = await store.list_transfers(None, "US0378331005", 1, c)
    assert [r.request.idempotency_key for r in us2] == ["key-4"]
    assert c == 0


async def test_unfinished_excludes_terminal(store: SqlTransferStore) -> None:
    states = [
        TransferState.SUBMITTED,
        TransferState.COMMITTED,
        TransferState.COMMITTING,
        TransferState.ABORTED,
        TransferState.FAILED,
        TransferState.ABORTING,
    ]
    for n, state in enumerate(states, start=1):
        await store.create(make_record(n, state=state))
    unfinished = await store.unfinished()
    assert [r.request.idempotency_key for r in unfinished] == ["key-1", "key-3", "key-6"]
    await store.set_state(make_record(3).transfer_id, TransferState.COMMITTED, "", "done")
    assert [r.request.idempotency_key for r in await store.unfinished()] == ["key-1", "key-6"]
    assert [t for t, _, _ in await store.unfinished_sources()] == [
        make_record(n).transfer_id for n in (1, 6)
    ]
    assert await store.unfinished_sources() == [
        (r.transfer_id, r.request.source_ledger, r.origin) for r in await store.unfinished()
    ]


async def test_unfinished_summary_counts_what_the_records_say(store: SqlTransferStore) -> None:
    """Issue 14: the gauges' summary of the unfinished transfers, counted by the database
    (no record parsed), equals the one computed from the records themselves: stuck ones
    (created before the time asked), the oldest, the waits per reason; terminal transfers
    are not counted; ``unfinished(limit)`` is the first ones in arrival order."""
    assert await store.unfinished_summary(2000.0) == summarise([], 2000.0)
    states = [TransferState.SUBMITTED, TransferState.QUEUED, TransferState.QUEUED,
              TransferState.COMMITTED, TransferState.SOURCE_LOCKED, TransferState.FAILED,
              TransferState.QUEUED]  # fmt: skip
    for n, state in enumerate(states, start=1):
        await store.create(make_record(n, state=state))
    await store.set_wait(make_record(2).transfer_id, WaitReason.SOURCE_OUTBOUND_CAPACITY, 0.0)
    await store.set_wait(make_record(3).transfer_id, WaitReason.LARGE_TRANSFER_DELAY, 9.0)
    await store.set_wait(make_record(7).transfer_id, WaitReason.SOURCE_OUTBOUND_CAPACITY, 0.0)
    await store.set_wait(make_record(4).transfer_id, WaitReason.TARGET_INBOUND_CAPACITY, 0.0)
    records = await store.unfinished()
    assert [r.request.idempotency_key for r in records] == [
        "key-1", "key-2", "key-3", "key-5", "key-7"
    ]  # fmt: skip
    for before in (0.0, 1003.0, 1003.5, 5000.0):
        got = await store.unfinished_summary(before)
        assert got == summarise(records, before)
    got = await store.unfinished_summary(1003.5)
    assert (got.stuck, got.oldest_created_at) == (3, 1001.0)
    assert got.waits == {
        WaitReason.NONE: 2,
        WaitReason.SOURCE_OUTBOUND_CAPACITY: 2,
        WaitReason.LARGE_TRANSFER_DELAY: 1,
    }, "a terminal transfer's wait is not counted"
    assert [r.transfer_id for r in await store.unfinished(limit=2)] == [
        r.transfer_id for r in records[:2]
    ]
    assert await store.unfinished(limit=0) == []


# -- durability ----------------------------------------------------------------------------


async def test_data_survives_reopening(make_store: Callable[[], SqlTransferStore]) -> None:
    rec = make_record(1)
    first = make_store()
    await first.create(rec)
    await first.set_state(rec.transfer_id, TransferState.COMMITTING, "r", "d")
    await first.record_decision(
        rec.transfer_id, Decision(ClaimKind.COMMIT, {"brokerage-a": SignatureSet(1, ())})
    )
    await first.record_events("brokerage-a", [event(rec.transfer_id, 5, 0)], scanned=5)
    first.close()

    second = make_store()
    try:
        got = await second.get(rec.transfer_id)
        assert got is not None
        assert got.terms == rec.terms
        assert got.request == rec.request
        assert (got.state, got.decision) == (TransferState.COMMITTING, ClaimKind.COMMIT)
        assert [h.sequence for h in await second.history(rec.transfer_id, 0)] == [1, 2]
        assert await second.scanned_height("brokerage-a") == 5
        assert await second.record_events("brokerage-a", [event(rec.transfer_id, 5, 0)], 5) == []
        _, created = await second.create(make_record(9, key="key-1"))
        assert created is False
    finally:
        second.close()


async def test_a_new_state_ends_the_flow_wait_in_the_same_transaction(
    store: SqlTransferStore,
) -> None:
    """Store calls really suspend (ADR 0013): the wait must end with the state change, not
    in a separate call a reader could see between (QUEUED without its wait)."""
    from bridge.domain.flow import WaitReason

    rec = make_record(1)
    await store.create(rec)
    await store.set_wait(rec.transfer_id, WaitReason.SOURCE_OUTBOUND_CAPACITY, 2_000_000_000.0)
    queued = (await store.set_state(rec.transfer_id, TransferState.QUEUED, "queued: x", "q")).record
    assert (queued.wait_reason, queued.not_before) == (
        WaitReason.SOURCE_OUTBOUND_CAPACITY,
        2_000_000_000.0,
    )
    moved = (
        await store.set_state(rec.transfer_id, TransferState.SOURCE_LOCKED, "", "locked")
    ).record
    assert (moved.wait_reason, moved.not_before) == (WaitReason.NONE, 0.0)


async def test_set_state_returns_the_record_a_read_gives_after_it(
    store: SqlTransferStore,
) -> None:
    """set_state's record comes from its own UPDATE (RETURNING), not a read after it: every
    column and every joined table (decision, parked reason, flow wait, transactions) must
    read as a read after the write gives them, whether the state changes or not."""
    rec = make_record(1)
    await store.create(rec)
    tid = rec.transfer_id
    other = make_record(2, key="key-2")
    await store.create(other)

    async def same(state: TransferState, reason: str) -> TransferRecord:
        got = (await store.set_state(tid, state, reason, "detail")).record
        assert got == await store.get(tid)
        assert (got.state, got.reason) == (state, reason)
        return got

    await store.set_wait(tid, WaitReason.TARGET_INBOUND_CAPACITY, 1_900_000_000.5)
    await store.set_wait(other.transfer_id, WaitReason.SOURCE_OUTBOUND_CAPACITY, 7.0)
    queued = await same(TransferState.QUEUED, "queued")
    assert (queued.wait_reason, queued.not_before) == (
        WaitReason.TARGET_INBOUND_CAPACITY,
        1_900_000_000.5,
    )
    await same(TransferState.QUEUED, "still queued")  # no change: the wait stays
    await store.add_transaction(tid, "lock", "0xaa")
    locked = await same(TransferState.SOURCE_LOCKED, "locked")  # the wait ends
    assert (locked.wait_reason, locked.transactions) == (WaitReason.NONE, {"lock": "0xaa"})
    await store.record_decision(
        tid, Decision(ClaimKind.COMMIT, {"brokerage-a": SignatureSet(2, (b"\x01" * 65,))})
    )
    await store.record_parked(tid, 2)
    committing = await same(TransferState.COMMITTING, "")
    assert (committing.decision, committing.parked_reason) == (ClaimKind.COMMIT, 2)
    assert (await same(TransferState.COMMITTING, "again")).updated_at >= committing.updated_at
    # Another transfer's rows never leak into this one's record, nor this write into it.
    assert (await store.get(other.transfer_id)) == dataclasses.replace(
        other,
        wait_reason=WaitReason.SOURCE_OUTBOUND_CAPACITY,
        not_before=7.0,
    )


def test_set_state_s_returning_clause_reads_each_table_by_its_key(tmp_path: Path) -> None:
    """SQLite does not use an index for a subquery of RETURNING that refers to the updated
    row (it scanned every decision, parked transfer and flow wait per state change: twice
    the coordinator's CPU in the benchmark); the clause takes the id as parameters."""
    from bridge.coordinator.store import _RETURNING_RECORD

    db = open_database(tmp_path / "plan.db")
    try:
        tid = w(1)
        plan = db.run_sync(
            lambda c: c.execute(
                "EXPLAIN QUERY PLAN UPDATE transfers SET state = ?, reason = ?, updated_at = ?"
                " WHERE transfer_id = ?" + _RETURNING_RECORD,
                (1, "", 0.0, tid, tid, tid, tid, tid),
            ).fetchall()
        )
    finally:
        db.close()
    steps = [str(row[3]) for row in plan]
    assert not [s for s in steps if s.startswith("SCAN")], steps
    assert sum(s.startswith("SEARCH") for s in steps) == 5, steps


@pytest.mark.batch
async def test_create_many_gives_a_key_repeated_in_one_call_its_first_record(
    store: SqlTransferStore,
) -> None:
    """The inserts of one call run in record order: a key given twice is created by its
    first record and the second gets that stored record (not created), as two calls would;
    the same transfer id twice under two keys is the second key's Conflict."""
    a = make_record(1, key="dup")
    b = make_record(2, key="dup")  # the same key, another transfer
    c = dataclasses.replace(a, request=dataclasses.replace(a.request, idempotency_key="other"))
    outcomes = await store.create_many([a, b, c])
    assert outcomes[0] == (a, True)
    assert outcomes[1] == (a, False)
    assert isinstance(outcomes[2], Conflict)
    assert await store.get(b.transfer_id) is None
    assert [h.detail for h in await store.history(a.transfer_id, 0)] == ["accepted"]


@pytest.mark.batch
async def test_create_many_answers_a_key_taken_later_in_the_call_as_free_then(
    store: SqlTransferStore,
) -> None:
    """Review helper-93: the stored rows are read after every insert, yet each record is
    answered as its own insert and read would have answered it. Here r1's key K is free
    when r1 is inserted (its transfer id is r0's: nothing inserted, a Conflict), and r2
    takes K afterwards: r1 is still the Conflict, not r2's record."""
    r0 = make_record(1, key="k0")
    r1 = dataclasses.replace(r0, request=dataclasses.replace(r0.request, idempotency_key="k"))
    r2 = make_record(2, key="k")
    outcomes = await store.create_many([r0, r1, r2])
    assert outcomes[0] == (r0, True)
    assert isinstance(outcomes[1], Conflict)
    assert outcomes[2] == (r2, True)
    assert await store.get_by_key("brokerage-a", "k") == r2


def test_records_read_by_keys_use_the_key_index(tmp_path: Path) -> None:
    """create_many reads its stored records back with one ``IN`` over the keys of a source
    ledger: an index search on (source_ledger, idempotency_key), never a scan."""
    from bridge.coordinator.store import _COLS, _FROM

    db = open_database(tmp_path / "plan.db")
    try:
        plan = db.run_sync(
            lambda c: c.execute(
                f"EXPLAIN QUERY PLAN SELECT {_COLS}, t.idempotency_key FROM {_FROM}"
                " WHERE t.source_ledger = ? AND t.idempotency_key IN (?,?,?)",
                ("brokerage-a", "k1", "k2", "k3"),
            ).fetchall()
        )
    finally:
        db.close()
    steps = [str(row[3]) for row in plan]
    assert not [s for s in steps if s.startswith("SCAN")], steps


@pytest.mark.postgres
@pytest.mark.ha
async def test_postgres_store_writes_never_open_a_pipeline(
    fresh_pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader frozen between a pipeline's statements left its session waiting for the
    pipeline's Sync, where neither statement_timeout nor idle_in_transaction_session_timeout
    ends it, so its lease-row lock held every takeover back until the process died
    (tests/e2e/test_ha.py, with create_many pipelined). Every batched write is a plain
    multi-row statement: a pipeline opened anywhere in these writes fails the test. The
    records span two statements (600 > 500 rows) and keep their order in the store."""
    import psycopg

    def no_pipeline(*_: object, **__: object) -> object:
        raise AssertionError("a store write opened a psycopg pipeline")

    # executemany opens its pipeline through _pipeline_nolock (psycopg 3.3), the public
    # pipeline() through the same: both refused.
    monkeypatch.setattr(psycopg.Connection, "pipeline", no_pipeline)
    monkeypatch.setattr(psycopg.Connection, "_pipeline_nolock", no_pipeline)
    store = SqlTransferStore(open_database(fresh_pg_url))
    try:
        records = [make_record(n, key=f"p-{n:04d}") for n in range(1, 601)]
        outcomes = await store.create_many(records)
        assert outcomes == [(r, True) for r in records]
        await store.add_transactions([(r.transfer_id, "lock", "0x01") for r in records])
        await store.set_state(records[0].transfer_id, TransferState.SOURCE_LOCKED, "x", "y")
        listed, _ = await store.list_transfers(None, None, 600, 0)
        assert [r.request.idempotency_key for r in listed] == [f"p-{n:04d}" for n in range(1, 601)]
        got = await store.get_many([r.transfer_id for r in records])
        assert got.unreadable == {} and len(got.found) == 600
        assert all(dict(g.transactions) == {"lock": "0x01"} for g in got.found.values())
    finally:
        store.close()


async def test_schema_11_fills_the_target_ledger_of_older_rows(store: SqlTransferStore) -> None:
    """Migration 11's backfill (both engines): every row written before the column existed
    gets its request's target ledger, so lane reads and ledger-scoped listings find it; a
    row whose request does not parse keeps NULL (in no lane, listed by its source only)."""
    from bridge.coordinator.schema import _v11_target_ledgers

    records = [make_record(n) for n in range(1, 4)]
    other = make_record(4)
    other = dataclasses.replace(
        other, request=dataclasses.replace(other.request, target_ledger="brokerage-c")
    )
    await store.create_many([*records, other])

    def as_before_11(db: Any) -> None:
        db.execute("UPDATE transfers SET target_ledger = NULL")
        db.execute(
            "UPDATE transfers SET request = '{not json' WHERE transfer_id = ?",
            (records[1].transfer_id,),
        )

    await store._db.write(as_before_11)
    assert (await store.list_transfers(None, None, 10, 0, ledger="brokerage-b"))[0] == []
    await store._db.write(_v11_target_ledgers)

    def targets(db: Any) -> list[Any]:
        rows = db.execute("SELECT target_ledger FROM transfers ORDER BY seq").fetchall()
        return [row[0] for row in rows]

    assert await store._db.read(targets) == ["brokerage-b", None, "brokerage-b", "brokerage-c"]
    listed, _ = await store.list_transfers(None, None, 10, 0, ledger="brokerage-b")
    assert [r.transfer_id for r in listed] == [records[0].transfer_id, records[2].transfer_id]
    listed, _ = await store.list_transfers(None, None, 10, 0, ledger="brokerage-c")
    assert [r.transfer_id for r in listed] == [other.transfer_id]


async def test_schema_11_backfill_pages_through_many_rows(
    store: SqlTransferStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backfill reads in pages by seq and writes 500 rows per UPDATE: rows past the
    first page and past the first 500 are filled too."""
    import bridge.coordinator.schema as schema_module

    monkeypatch.setattr(schema_module, "_BACKFILL_PAGE", 7)
    await store.create_many([make_record(n) for n in range(1, 24)])
    await store._db.write(lambda db: db.execute("UPDATE transfers SET target_ledger = NULL"))
    await store._db.write(schema_module._v11_target_ledgers)
    count = await store._db.read(
        lambda db: db.execute(
            "SELECT COUNT(*) FROM transfers WHERE target_ledger = 'brokerage-b'"
        ).fetchone()[0]
    )
    assert count == 23


async def test_unfinished_adoptions_are_counted_on_their_partial_index(tmp_path: Path) -> None:
    """Review helper-118 #2: the intake counts a ledger's unfinished adoptions per delivery;
    the count searches the partial index transfers_adopted, never every row of the ledger,
    and counts only unfinished adopted rows of that ledger."""
    from bridge.coordinator.records import TransferOrigin

    s = SqliteTransferStore(tmp_path / "c.sqlite")
    try:
        adopted = [
            dataclasses.replace(make_record(n), origin=TransferOrigin.ADOPTED) for n in range(3)
        ]
        await s.create_many([*adopted, make_record(9)])
        await s.set_state(adopted[0].transfer_id, TransferState.COMMITTED, "done", "x")
        assert await s.unfinished_adopted("brokerage-a") == 2
        assert await s.unfinished_adopted("brokerage-b") == 0
        plan = s._db.run_sync(
            lambda c: c.execute(
                "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM transfers WHERE source_ledger = ?"
                " AND origin = 'adopted' AND state NOT IN (?,?,?)",
                ("brokerage-a", 1, 2, 3),
            ).fetchall()
        )
    finally:
        s.close()
    assert any("transfers_adopted" in str(row[3]) for row in plan), plan
