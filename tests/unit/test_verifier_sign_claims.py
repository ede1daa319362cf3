"""SignClaims (ADR 0025) on the handler with fixed finalized legs: the member checks every
item with SignClaim's own rule, refuses all or nothing, and keeps COMMIT/ABORT exclusive per
item across batches and single claims, in both orders."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from bridge.core import batch as core
from bridge.core.reasons import ErrorReason
from bridge.domain.claim_batches import ClaimsRefused
from bridge.domain.claims import ClaimKind
from bridge.domain.committee import Committee, EpochWindow
from bridge.domain.errors import BridgeReason, InvalidInput, LedgerRejected
from bridge.domain.ids import LedgerId
from bridge.domain.legs import Leg, LegState, LegStatus
from bridge.domain.terms import TransferTerms
from bridge.rpc.claims_refusal import refusal_status, refused_items
from bridge.rpc.errors import DETAILS_KEY
from bridge.storage.backup import restore
from bridge.v1 import verifier_pb2
from tests.unit.test_store_backup import VERIFIER, reopen, restored_member
from tests.unit.test_verifier_claim_service import BROKER, NETWORK, Member, Reader
from verifiers.votes import ConflictingVote

pytestmark = [pytest.mark.unit, pytest.mark.security, pytest.mark.batch]


def sign(m: Member, kind: ClaimKind, terms: list[TransferTerms]) -> verifier_pb2.SignClaimsResponse:
    return asyncio.run(m.servicer.sign_claims(kind, terms))


def refusal(m: Member, kind: ClaimKind, terms: list[TransferTerms]) -> ClaimsRefused:
    with pytest.raises(ClaimsRefused) as info:
        sign(m, kind, terms)
    return info.value


def votes(m: Member) -> list[tuple[bytes, int, float]]:
    """Every row of the member's vote log (its ``at`` shows a row was never rewritten)."""
    db = sqlite3.connect(m.votes_path)  # type: ignore[attr-defined]
    try:
        return [(bytes(r[0]), r[1], r[2]) for r in db.execute(
            "SELECT transfer_id, decision, at FROM votes ORDER BY transfer_id"
        )]  # fmt: skip
    finally:
        db.close()


@pytest.fixture
def m(tmp_path: Path) -> Member:
    member = Member(tmp_path, frozenset({BROKER.address}))
    member.votes_path = tmp_path / "votes.sqlite"  # type: ignore[attr-defined]
    return member


def locked(m: Member, n: int) -> list[TransferTerms]:
    ts = [m.terms() for _ in range(n)]
    for t in ts:
        m.set_leg(m.a, t, Leg.OUTBOUND, LegState.LOCKED)
    return ts


def prepared(m: Member, n: int) -> list[TransferTerms]:
    ts = locked(m, n)
    for t in ts:
        m.set_leg(m.b, t, Leg.INBOUND, LegState.PREPARED)
    return ts


def rejected(m: Member, n: int) -> list[TransferTerms]:
    ts = locked(m, n)
    for t in ts:
        m.set_leg(m.b, t, Leg.INBOUND, LegState.REJECTED)
    return ts


def test_a_locked_batch_is_one_root_for_the_target(m: Member) -> None:
    ts = locked(m, 5)
    out = sign(m, ClaimKind.LOCKED, ts)
    (s,) = out.signatures
    assert (s.ledger_id, s.epoch, s.count) == ("b", 1, 5)
    batch = core.build_batch([
        core.BatchClaim(NETWORK, m.b.ledger.word, m.b.bridge_word, 1, int(ClaimKind.LOCKED),
                        t.transfer_id, t.terms_hash)
        for t in reversed(ts)  # any order: the leaves are sorted
    ])  # fmt: skip
    assert (s.root, s.digest) == (batch.root, batch.digest)
    assert s.signature == m.signer.sign_digest(batch.digest)
    assert votes(m) == [], "LOCKED is no decision"


def test_commit_batch_signs_both_ledgers_and_records_every_item(m: Member) -> None:
    ts = prepared(m, 3)
    out = sign(m, ClaimKind.COMMIT, ts)
    assert [s.ledger_id for s in out.signatures] == ["a", "b"]
    assert out.signatures[0].digest != out.signatures[1].digest, "each ledger its own root"
    assert [m.votes.decision(t.transfer_id) for t in ts] == [ClaimKind.COMMIT] * 3
    before = votes(m)
    again = sign(m, ClaimKind.COMMIT, ts)  # a replay: same signatures, nothing re-recorded
    assert [s.signature for s in again.signatures] == [s.signature for s in out.signatures]
    assert votes(m) == before


def test_one_ineligible_item_refuses_the_batch_and_records_nothing(m: Member) -> None:
    ts = prepared(m, 4)
    m.set_leg(m.b, ts[2], Leg.INBOUND, LegState.NONE)  # not prepared
    bad = m.terms()  # never locked
    exc = refusal(m, ClaimKind.COMMIT, [*ts, bad])
    assert [(i.index, i.reason) for i in exc.items] == [
        (2, BridgeReason.CLAIM_REFUSED),
        (4, BridgeReason.CLAIM_REFUSED),
    ]
    assert "not PREPARED" in exc.items[0].message
    assert votes(m) == [], "no vote for any item"
    # On the wire: the items come back typed from the status details alone.
    trailer = ((DETAILS_KEY, refusal_status(exc).SerializeToString()),)
    got = refused_items(trailer, 5)
    assert [(i.index, i.reason, i.retryable) for i in got] == [
        (i.index, i.reason, i.retryable) for i in exc.items
    ]


@pytest.mark.parametrize("first", [ClaimKind.COMMIT, ClaimKind.ABORT])
def test_commit_and_abort_stay_exclusive_per_item_across_batches(
    m: Member, first: ClaimKind
) -> None:
    """An item signed in one batch (or alone) under one decision is refused under the other
    in any later batch, whatever the ledgers show then; the batch records nothing."""
    other = ClaimKind.ABORT if first is ClaimKind.COMMIT else ClaimKind.COMMIT
    x, y = (prepared if first is ClaimKind.COMMIT else rejected)(m, 2)
    sign(m, first, [x, y])
    # The ledgers now (wrongly, or after a fork) show the other decision possible for x.
    z = (prepared if other is ClaimKind.COMMIT else rejected)(m, 1)[0]
    m.set_leg(
        m.b, x, Leg.INBOUND, LegState.PREPARED if other is ClaimKind.COMMIT else LegState.REJECTED
    )
    exc = refusal(m, other, [z, x])
    assert [(i.index, i.reason) for i in exc.items] == [(1, BridgeReason.PRECONDITION_FAILED)]
    assert f"already signed {first.name}" in exc.items[0].message
    assert m.votes.decision(z.transfer_id) is None, "the batch's other item is not recorded"
    assert m.votes.decision(x.transfer_id) is first


def test_a_single_claim_after_a_batch_and_a_batch_after_a_single_claim(m: Member) -> None:
    x, y = prepared(m, 2)
    sign(m, ClaimKind.COMMIT, [x])
    m.set_leg(m.b, x, Leg.INBOUND, LegState.REJECTED)
    with pytest.raises(ConflictingVote):
        m.sign(ClaimKind.ABORT, x)
    m.sign(ClaimKind.COMMIT, y)
    m.set_leg(m.b, y, Leg.INBOUND, LegState.REJECTED)
    exc = refusal(m, ClaimKind.ABORT, [y])
    assert exc.items[0].index == 0 and "already signed COMMIT" in exc.items[0].message


def test_malformed_batches_are_invalid_arguments(m: Member) -> None:
    ts = locked(m, 3)
    with pytest.raises(InvalidInput, match="item 3 repeats item 0"):
        sign(m, ClaimKind.LOCKED, [*ts, ts[0]])
    with pytest.raises(InvalidInput, match="1 to 1000 items, not 0"):
        sign(m, ClaimKind.LOCKED, [])
    back = TransferTerms(**{
        **{f: getattr(ts[0], f) for f in ts[0].__dataclass_fields__},
        "src_ledger": m.b.ledger.word, "src_bridge": m.b.bridge_word,
        "dst_ledger": m.a.ledger.word, "dst_bridge": m.a.bridge_word,
    })  # fmt: skip
    with pytest.raises(InvalidInput, match=r"items \[1\] do not"):
        sign(m, ClaimKind.LOCKED, [ts[1], back])
    m.servicer._max_batch_claims = 2
    with pytest.raises(InvalidInput, match="1 to 2 items, not 3"):
        sign(m, ClaimKind.LOCKED, ts)
    assert votes(m) == []


def test_abort_batch_towards_an_unknown_target_signs_the_source_only(m: Member) -> None:
    ts = [m.terms(dst_ledger=LedgerId("nowhere").word) for _ in range(2)]
    for t in ts:
        m.set_leg(m.a, t, Leg.OUTBOUND, LegState.LOCKED)
    out = sign(m, ClaimKind.ABORT, ts)
    assert [s.ledger_id for s in out.signatures] == ["a"]
    assert [m.votes.decision(t.transfer_id) for t in ts] == [ClaimKind.ABORT] * 2


def test_an_overlap_signs_a_root_under_each_epoch(m: Member) -> None:
    """During a rotation's overlap a member in both epochs signs each epoch's root (the
    root differs: the epoch is in every leaf); the coordinator takes the ledger's."""
    one = m.a.epochs[0]
    two = EpochWindow(Committee(2, 1, (m.signer.address,)), 0, None)
    m.a.epochs = m.b.epochs = (one, two)
    m.servicer._epoch_cache.clear()
    ts = locked(m, 3)
    out = sign(m, ClaimKind.LOCKED, ts)
    assert [(s.ledger_id, s.epoch) for s in out.signatures] == [("b", 2), ("b", 1)]
    assert out.signatures[0].root != out.signatures[1].root
    for s in out.signatures:
        batch = core.build_batch([
            core.BatchClaim(NETWORK, m.b.ledger.word, m.b.bridge_word, s.epoch,
                            int(ClaimKind.LOCKED), t.transfer_id, t.terms_hash)
            for t in ts
        ])  # fmt: skip
        assert (s.root, s.digest) == (batch.root, batch.digest)


def test_a_restored_vote_log_refuses_a_batch_with_a_forgotten_item(tmp_path: Path) -> None:
    """The member's store is restored from a backup taken before it signed COMMIT for x in
    a batch: quarantined, it refuses any batch holding x (StaleVoteLog, by index) unless a
    ledger shows the outcome applied, and records nothing for the batch's other items."""
    m, bak = restored_member(tmp_path)
    m.votes_path = tmp_path / "votes.sqlite"  # type: ignore[attr-defined]
    x, y = prepared(m, 2)
    sign(m, ClaimKind.COMMIT, [x])  # after the backup
    m.votes.close()
    restore(VERIFIER, bak, tmp_path / "votes.sqlite", "test: disk replaced")
    reopen(m, tmp_path)
    m.set_leg(m.b, x, Leg.INBOUND, LegState.EXPIRED)
    m.set_leg(m.b, y, Leg.INBOUND, LegState.EXPIRED)
    exc = refusal(m, ClaimKind.ABORT, [y, x])
    assert [(i.index, i.reason) for i in exc.items] == [
        (0, BridgeReason.CLAIM_REFUSED),
        (1, BridgeReason.CLAIM_REFUSED),
    ]
    assert all("quarantined" in i.message for i in exc.items)
    assert votes(m) == []
    # A ledger shows COMMIT applied for both: signed (nothing can change), and recorded.
    for t in (x, y):
        m.set_leg(m.a, t, Leg.OUTBOUND, LegState.BURNED)
        m.set_leg(m.b, t, Leg.INBOUND, LegState.PREPARED)
    assert sign(m, ClaimKind.COMMIT, [x, y]).signatures
    assert [m.votes.decision(t.transfer_id) for t in (x, y)] == [ClaimKind.COMMIT] * 2


def many_reads(m: Member, lie: int = 0) -> dict[str, list[int]]:
    """Give both readers ``get_legs`` (as the EVM, Fabric and CometBFT adapters have); the
    returned lists record each call's size. ``lie``: the target answers that many legs
    fewer than asked."""
    calls: dict[str, list[int]] = {"a": [], "b": []}
    for reader in (m.a, m.b):

        async def get_legs(tids: Sequence[bytes], leg: Leg, height: int | None = None,
                           r: Reader = reader) -> list[LegStatus]:  # fmt: skip
            calls[r.ledger.name].append(len(tids))
            answered = list(tids)[: len(tids) - lie] if r is m.b else tids
            return [
                r.legs.get((t, leg), LegStatus(LegState.NONE, bytes(32), 0, 5)) for t in answered
            ]

        reader.get_legs = get_legs  # type: ignore[attr-defined]
    return calls


def test_a_batch_reads_each_side_in_one_call_where_the_ledger_answers_many(m: Member) -> None:
    calls = many_reads(m)
    ts = prepared(m, 40)
    m.set_leg(m.b, ts[7], Leg.INBOUND, LegState.REJECTED)
    refused = refusal(m, ClaimKind.COMMIT, ts)
    assert [r.index for r in refused.items] == [7], "judged per item on the batched reads"
    assert calls == {"a": [40], "b": [40]}
    assert m.a.reads == [] and m.b.reads == [], "no leg read one at a time"
    ok = ts[:7] + ts[8:]
    sign(m, ClaimKind.COMMIT, ok)
    assert [m.votes.decision(t.transfer_id) for t in ok] == [ClaimKind.COMMIT] * 39
    aborts = [m.terms(dst_ledger=b"\x77" * 32) for _ in range(3)]  # an unknown target
    for t in aborts:
        m.set_leg(m.a, t, Leg.OUTBOUND, LegState.LOCKED)
    sign(m, ClaimKind.ABORT, aborts)
    assert calls["a"][-1] == 3 and calls["b"] == [40, 39], "only the source is read"


def test_a_ledger_answering_fewer_legs_fails_the_batch_and_records_nothing(m: Member) -> None:
    many_reads(m, lie=1)
    ts = prepared(m, 5)
    with pytest.raises(LedgerRejected, match="target ledger answered 4 legs for 5") as bad:
        sign(m, ClaimKind.COMMIT, ts)
    assert bad.value.reason is ErrorReason.MALFORMED_ANSWER
    assert votes(m) == []
