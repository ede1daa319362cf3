"""Decisions certified in a batch (issue 14): the store keeps, per ledger, either a
single-claim SignatureSet or a BatchCertified (batch certificate + the transfer's proof),
reads rows written before batches, replaces a batch certificate by a single one on
re-certification, and never records a batch certificate of another kind. SQLite and a real
PostgreSQL cluster (the store tests' fixture). Since schema version 9 a batch certificate is
stored once and each item names it beside its own proof."""

from __future__ import annotations

import base64
import json

import pytest

from bridge.coordinator.records import Decision
from bridge.coordinator.store import SqlTransferStore
from bridge.core.batch import BatchCertificate
from bridge.domain.batch_certified import BatchCertified
from bridge.domain.claims import ClaimKind
from bridge.domain.legs import SignatureSet
from tests.unit.test_store import db_path, make_record, make_store, store

__all__ = ["db_path", "make_store", "store"]

pytestmark = [pytest.mark.unit, pytest.mark.batch]


def batch_cert(kind: ClaimKind, epoch: int = 3) -> BatchCertified:
    return BatchCertified(
        BatchCertificate(epoch, int(kind), b"\x7a" * 32, 40, (b"\x01" * 65, b"\x02" * 65)),
        (b"\x11" * 32, b"\x22" * 32, b"\x33" * 32),
    )


async def write_row(
    store: SqlTransferStore, tid: bytes, kind: ClaimKind, certificates: object, cause: str
) -> None:
    """A decision row written as it stands, bypassing the store's encoder (older forms,
    malformed ones)."""

    def run(db):  # type: ignore[no-untyped-def]
        db.execute(
            "INSERT INTO decisions VALUES (?, ?, ?, ?, ?)",
            (tid, int(kind), json.dumps(certificates), cause, 1.0),
        )

    await store._db.write(run)


async def test_batch_certified_round_trips(store: SqlTransferStore) -> None:
    rec = make_record(1)
    await store.create(rec)
    decision = Decision(
        ClaimKind.COMMIT,
        {
            "brokerage-a": batch_cert(ClaimKind.COMMIT),
            "brokerage-b": SignatureSet(3, (b"\x05" * 65,)),
        },
        "",
    )
    assert await store.record_decision(rec.transfer_id, decision) == decision
    got = await store.decision(rec.transfer_id)
    assert got == decision
    assert isinstance(got.certificates["brokerage-a"], BatchCertified)
    assert got.certificates["brokerage-a"].epoch == 3


async def test_rows_written_before_batches_still_read(store: SqlTransferStore) -> None:
    rec = make_record(2)
    await store.create(rec)
    old = {"brokerage-a": {"epoch": 1, "signatures": ["aa" * 65]}}

    await write_row(store, rec.transfer_id, ClaimKind.ABORT, old, "why")
    got = await store.decision(rec.transfer_id)
    assert got == Decision(
        ClaimKind.ABORT, {"brokerage-a": SignatureSet(1, (b"\xaa" * 65,))}, "why"
    )


async def test_recertify_replaces_a_batch_certificate_by_a_single_one(
    store: SqlTransferStore,
) -> None:
    rec = make_record(3)
    await store.create(rec)
    tid = rec.transfer_id
    other = batch_cert(ClaimKind.ABORT, epoch=2)
    await store.record_decision(
        tid,
        Decision(
            ClaimKind.ABORT, {"brokerage-a": batch_cert(ClaimKind.ABORT), "brokerage-b": other}
        ),
    )
    single = SignatureSet(4, (b"\x09" * 65,))
    assert not await store.recertify(
        tid, ClaimKind.COMMIT, "brokerage-a", single
    )  # kind never changes
    assert await store.recertify(tid, ClaimKind.ABORT, "brokerage-a", single)
    got = await store.decision(tid)
    assert got is not None and got.kind is ClaimKind.ABORT
    assert got.certificates == {"brokerage-a": single, "brokerage-b": other}


@pytest.mark.security
async def test_a_batch_certificate_of_another_kind_is_never_recorded(
    store: SqlTransferStore,
) -> None:
    rec = make_record(4)
    await store.create(rec)
    forged = Decision(ClaimKind.COMMIT, {"brokerage-a": batch_cert(ClaimKind.ABORT)})
    with pytest.raises(ValueError, match="another kind"):
        await store.record_decision(rec.transfer_id, forged)
    assert await store.decision(rec.transfer_id) is None


@pytest.mark.security
async def test_an_unknown_stored_certificate_type_is_refused(store: SqlTransferStore) -> None:
    rec = make_record(5)
    await store.create(rec)
    row = {"brokerage-a": {"type": "mystery", "epoch": 1, "signatures": []}}

    await write_row(store, rec.transfer_id, ClaimKind.COMMIT, row, "")
    with pytest.raises(ValueError, match="unknown certificate type"):
        await store.decision(rec.transfer_id)


def commit_decision(n: int) -> Decision:
    """A COMMIT decision backed, on each ledger, by a batch certificate and item ``n``'s
    proof (distinct per item)."""
    cert = batch_cert(ClaimKind.COMMIT)
    mine = BatchCertified(cert.certificate, (bytes([n % 256]) * 32,))
    return Decision(ClaimKind.COMMIT, {"brokerage-a": mine, "brokerage-b": mine}, f"c{n}")


async def test_a_batch_of_decisions_is_recorded_in_one_transaction(
    store: SqlTransferStore,
) -> None:
    records = [make_record(10 + n) for n in range(5)]
    for rec in records:
        await store.create(rec)
    decisions = [commit_decision(n) for n in range(5)]
    commits = store._db.commits
    stored = await store.record_decisions(
        [(r.transfer_id, d) for r, d in zip(records, decisions, strict=True)]
    )
    assert store._db.commits == commits + 1
    assert stored == decisions
    for rec, d in zip(records, decisions, strict=True):
        assert await store.decision(rec.transfer_id) == d  # what the store reads back
        assert (await store.get(rec.transfer_id)).decision is ClaimKind.COMMIT
    assert await store.record_decisions([]) == []
    assert store._db.commits == commits + 1  # an empty batch writes nothing


@pytest.mark.security
async def test_a_batch_never_replaces_a_recorded_decision(store: SqlTransferStore) -> None:
    """First one wins per item, whether the earlier decision came alone, earlier in the same
    batch (a repeated transfer id) or in another batch; the others of the batch are
    recorded."""
    records = [make_record(20 + n) for n in range(3)]
    for rec in records:
        await store.create(rec)
    first = Decision(ClaimKind.ABORT, {"brokerage-a": SignatureSet(3, (b"\x05" * 65,))}, "x")
    await store.record_decision(records[0].transfer_id, first)
    tids = [r.transfer_id for r in records]
    stored = await store.record_decisions(
        [
            (tids[0], commit_decision(0)),
            (tids[1], commit_decision(1)),
            (tids[1], commit_decision(9)),
            (tids[2], commit_decision(2)),
        ]
    )
    assert stored == [first, commit_decision(1), commit_decision(1), commit_decision(2)]
    assert await store.decision(tids[0]) == first
    assert await store.decision(tids[1]) == commit_decision(1)
    again = await store.record_decisions([(tids[2], commit_decision(7))])
    assert again == [commit_decision(2)]


@pytest.mark.security
async def test_a_batch_across_pages_answers_each_item_its_stored_decision(
    store: SqlTransferStore,
) -> None:
    """601 items (two pages of the multi-row insert): a transfer decided before the call
    (on the second page) and one repeated across the page boundary are answered the first
    decision, never their own; every other item is recorded and answered its own."""
    records = [make_record(1000 + n) for n in range(600)]
    for rec in records:
        await store.create(rec)
    tids = [r.transfer_id for r in records]
    earlier = Decision(ClaimKind.ABORT, {"brokerage-a": SignatureSet(3, (b"\x05" * 65,))}, "x")
    await store.record_decision(tids[550], earlier)
    items = [(tid, commit_decision(n)) for n, tid in enumerate(tids)]
    items.insert(501, (tids[498], commit_decision(9999)))  # a repeat, on the second page
    stored = await store.record_decisions(items)
    expected = [d for _, d in items]
    expected[501] = commit_decision(498)
    expected[551] = earlier
    assert stored == expected
    assert await store.decision(tids[498]) == commit_decision(498)
    assert await store.decision(tids[550]) == earlier
    assert await store.decision(tids[599]) == commit_decision(599)
    assert _rows(store, "SELECT COUNT(*) FROM decisions") == [(600,)]


async def test_more_batch_certificates_than_a_page_are_each_stored_once(
    store: SqlTransferStore,
) -> None:
    """501 items, each under a certificate of its own (the certificates' insert in two
    pages), and a repeat naming another: every decision reads back whole, one row per
    certificate a decision names (none for the repeat's)."""
    records = [make_record(3000 + n) for n in range(501)]
    for rec in records:
        await store.create(rec)
    base = batch_cert(ClaimKind.COMMIT).certificate

    def decision(n: int) -> Decision:
        cert = BatchCertificate(base.epoch, base.kind, n.to_bytes(32, "big"), 1, base.signatures)
        return Decision(ClaimKind.COMMIT, {"brokerage-a": BatchCertified(cert, ())}, f"c{n}")

    items = [(r.transfer_id, decision(n)) for n, r in enumerate(records)]
    stored = await store.record_decisions([*items, (records[0].transfer_id, decision(900))])
    assert stored == [d for _, d in items] + [decision(0)]
    for tid, d in items[::50]:
        assert await store.decision(tid) == d
    assert _rows(store, "SELECT COUNT(*) FROM batch_certificates") == [(501,)]


@pytest.mark.security
async def test_a_batch_with_one_forged_item_records_nothing(store: SqlTransferStore) -> None:
    records = [make_record(30 + n) for n in range(3)]
    for rec in records:
        await store.create(rec)
    forged = Decision(ClaimKind.COMMIT, {"brokerage-a": batch_cert(ClaimKind.ABORT)})
    items = [
        (records[0].transfer_id, commit_decision(0)),
        (records[1].transfer_id, forged),
        (records[2].transfer_id, commit_decision(2)),
    ]
    commits = store._db.commits
    with pytest.raises(ValueError, match="another kind"):
        await store.record_decisions(items)
    assert store._db.commits == commits
    for rec in records:
        assert await store.decision(rec.transfer_id) is None
    # The same forgery as a repeat of a valid first item (which alone would be recorded
    # and answered for both) is refused too: every item is checked.
    with pytest.raises(ValueError, match="another kind"):
        await store.record_decisions([items[0], (records[0].transfer_id, forged)])
    assert store._db.commits == commits
    assert await store.decision(records[0].transfer_id) is None


def _rows(store: SqlTransferStore, sql: str) -> list[tuple[object, ...]]:
    return [tuple(r) for r in store._db.run_sync(lambda db: db.execute(sql).fetchall())]


async def test_a_batch_certificate_is_stored_once_and_each_item_keeps_its_proof(
    store: SqlTransferStore,
) -> None:
    """Schema version 9: the items of a batch name its certificate (one row per batch and
    ledger) beside their own proof, instead of each repeating its signatures and root;
    every decision reads back whole. A certificate over the same root with other
    signatures (a re-assembly from other members) is a row of its own."""
    records = [make_record(40 + n) for n in range(6)]
    for rec in records:
        await store.create(rec)
    a = batch_cert(ClaimKind.COMMIT).certificate
    b = BatchCertificate(a.epoch, a.kind, a.root, a.count, (b"\x03" * 65, b"\x04" * 65))

    def decision(n: int) -> Decision:
        return Decision(
            ClaimKind.COMMIT,
            {
                "brokerage-a": BatchCertified(a, (bytes([n]) * 32,)),
                "brokerage-b": BatchCertified(b, (bytes([n + 100]) * 32,)),
            },
            f"c{n}",
        )

    decisions = [decision(n) for n in range(6)]
    await store.record_decisions(
        [(r.transfer_id, d) for r, d in zip(records[:3], decisions[:3], strict=True)]
    )
    # A later write naming the same certificates adds no row.
    await store.record_decisions(
        [(r.transfer_id, d) for r, d in zip(records[3:], decisions[3:], strict=True)]
    )
    assert _rows(store, "SELECT COUNT(*) FROM batch_certificates") == [(2,)]
    for rec, d in zip(records, decisions, strict=True):
        assert await store.decision(rec.transfer_id) == d
    texts = _rows(store, "SELECT certificates FROM decisions")
    assert len(texts) == 6
    for (text,) in texts:
        row = json.loads(str(text))
        assert {e["type"] for e in row.values()} == {"batch-ref"}
        assert all("signatures" not in e and "root" not in e for e in row.values())
        assert len(str(text)) < 350  # the same decision inline, in hex: about 1,000


async def test_rows_with_an_inline_batch_certificate_still_read(store: SqlTransferStore) -> None:
    """Decisions written before version 9 carry their batch certificate inline."""
    rec = make_record(50)
    await store.create(rec)
    cert = batch_cert(ClaimKind.ABORT)
    b = cert.certificate
    inline = {
        "brokerage-a": {
            "type": "batch", "epoch": b.epoch, "kind": b.kind, "root": b.root.hex(),
            "count": b.count, "signatures": [x.hex() for x in b.signatures],
            "proof": [x.hex() for x in cert.proof],
        }
    }  # fmt: skip

    await write_row(store, rec.transfer_id, ClaimKind.ABORT, inline, "old")
    got = await store.decision(rec.transfer_id)
    assert got == Decision(ClaimKind.ABORT, {"brokerage-a": cert}, "old")


@pytest.mark.security
@pytest.mark.parametrize(
    ("proof", "certificate", "error"),
    [
        ("AAAA", None, "not a whole number of 32-byte siblings"),
        ("not base64!", None, "proof is not base64"),
        ("", "zz", "certificate id is not base64"),
    ],
)
async def test_a_malformed_batch_reference_is_refused(
    store: SqlTransferStore, proof: str, certificate: str | None, error: str
) -> None:
    rec = make_record(52)
    await store.create(rec)
    cid = certificate or base64.b64encode(b"\x01" * 32).decode()
    row = {"brokerage-a": {"type": "batch-ref", "certificate": cid, "proof": proof}}

    await write_row(store, rec.transfer_id, ClaimKind.COMMIT, row, "")
    with pytest.raises(ValueError, match=error):
        await store.decision(rec.transfer_id)


@pytest.mark.security
async def test_a_decision_naming_a_missing_batch_certificate_is_refused(
    store: SqlTransferStore,
) -> None:
    rec = make_record(51)
    await store.create(rec)
    missing = base64.b64encode(b"\xab" * 32).decode()
    row = {"brokerage-a": {"type": "batch-ref", "certificate": missing, "proof": ""}}

    await write_row(store, rec.transfer_id, ClaimKind.COMMIT, row, "")
    with pytest.raises(ValueError, match="missing batch certificate " + "ab" * 32):
        await store.decision(rec.transfer_id)


@pytest.mark.security
async def test_a_batch_certificate_altered_since_it_was_stored_is_refused(
    store: SqlTransferStore,
) -> None:
    """A ``batch_certificates`` row whose text no longer hashes to its id (edited in the
    database) is refused when a decision naming it is read."""
    rec = make_record(53)
    await store.create(rec)
    decision = commit_decision(1)
    await store.record_decision(rec.transfer_id, decision)
    assert await store.decision(rec.transfer_id) == decision

    def run(db):  # type: ignore[no-untyped-def]
        db.execute(
            "UPDATE batch_certificates SET certificate = REPLACE(certificate, '\"epoch\":3', '\"epoch\":4')"
        )

    await store._db.write(run)
    with pytest.raises(ValueError, match="does not match its id"):
        await store.decision(rec.transfer_id)
