"""Batched ledger steps (issue 14 item 2, ADR 0025), run against every ledger kind through
its harness and :meth:`bridge.ledgers.adapter.LedgerAdapter.submit_batch` only.

One invocation applies LOCK (with each item's instruction) or PREPARE / COMMIT / ABORT
(each item's proof under one batch certificate) to many transfers; every item reaches
exactly one final state; a replay skips every item and moves nothing; a refusal refuses the
whole invocation with its typed reason and, where one item caused it, the item's index.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import pytest

from bridge.core import batch as core
from bridge.core.reasons import ErrorReason
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import LedgerRejected
from bridge.domain.ledger_batches import BatchItem, BatchOutcome, refused_item
from bridge.domain.legs import Action, Leg, LegState, TxOutcome
from bridge.domain.terms import TransferTerms
from bridge.ledgers.adapter import LedgerAdapter
from tests.conformance.harness import SECURITY, KindHarness, Terms

pytestmark = [pytest.mark.conformance, pytest.mark.integration, pytest.mark.batch]


@pytest.fixture
async def relayer(harness: KindHarness) -> AsyncIterator[LedgerAdapter]:
    adapter = harness.relayer()
    yield adapter
    await adapter.close()


def certified(
    h: KindHarness, kind: ClaimKind, ts: Sequence[TransferTerms], *, epoch: int | None = None
) -> tuple[list[BatchItem], core.BatchCertificate]:
    """Every item's proof and a 3-of-4 certificate over the batch's root for this endpoint."""
    e = h.committee.epoch if epoch is None else epoch
    claims = [
        core.BatchClaim(
            h.network_word, h.ledger.word, h.bridge_word, e, int(kind), t.transfer_id, t.terms_hash
        )
        for t in ts
    ]
    b = core.build_batch(claims)
    signers = sorted(h.signers, key=lambda s: s.address)[: h.committee.threshold]
    cert = core.BatchCertificate(
        e, int(kind), b.root, b.count, tuple(s.sign_digest(b.digest) for s in signers)
    )
    return [BatchItem(t, proof=b.proof(c)) for t, c in zip(ts, claims, strict=True)], cert


async def settled(h: KindHarness, out: BatchOutcome) -> BatchOutcome:
    if out.tx_id:
        await h.settled(TxOutcome(out.tx_id, out.height, False))
    return out


async def states(a: LedgerAdapter, ts: Sequence[TransferTerms], leg: Leg) -> list[LegState]:
    return [(await a.get_leg(t.transfer_id, leg)).state for t in ts]


async def balance(a: LedgerAdapter, holder: bytes) -> int:
    return (await a.holder_status(SECURITY, holder)).balance


async def locked(
    h: KindHarness, a: LedgerAdapter, sender: bytes, amounts: Sequence[int]
) -> list[TransferTerms]:
    tt = Terms(h)
    ts = [tt.outbound(sender, n) for n in amounts]
    out = await a.submit_batch(Action.LOCK, [BatchItem(t, tt.instruction(t)) for t in ts])
    await settled(h, out)
    return ts


async def test_outbound_lock_and_commit_batches_and_their_replays(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    h, tt = harness, Terms(harness)
    sender = await h.holder(100)
    ts = [tt.outbound(sender, n) for n in (1, 2, 3, 4)]
    items = [BatchItem(t, tt.instruction(t)) for t in ts]
    out = await settled(h, await relayer.submit_batch(Action.LOCK, items))
    assert [r.transfer_id for r in out.items] == [t.transfer_id for t in ts]
    assert [(r.leg, r.state, r.skipped) for r in out.items] == [
        (Leg.OUTBOUND, LegState.LOCKED, False)
    ] * 4
    assert [r.terms_hash for r in out.items] == [t.terms_hash for t in ts]
    assert out.applied == 4 and out.tx_id and out.height > 0
    assert await balance(relayer, sender) == 90
    again = await relayer.submit_batch(Action.LOCK, items)
    assert again.applied == 0 and {r.state for r in again.items} == {LegState.LOCKED}
    assert await balance(relayer, sender) == 90
    proved, cert = certified(h, ClaimKind.COMMIT, ts)
    done = await settled(h, await relayer.submit_batch(Action.COMMIT, proved, cert))
    assert done.applied == 4 and {r.state for r in done.items} == {LegState.BURNED}
    assert await states(relayer, ts, Leg.OUTBOUND) == [LegState.BURNED] * 4
    replay = await relayer.submit_batch(Action.COMMIT, proved, cert)
    assert replay.applied == 0 and all(r.skipped for r in replay.items)
    assert await balance(relayer, sender) == 90


async def test_inbound_prepare_and_abort_batches(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    h, tt = harness, Terms(harness)
    bob, stranger = await h.holder(), await h.holder(eligible=False)
    ts = [tt.inbound(bob, 5), tt.inbound(stranger, 6), tt.inbound(bob, 7)]
    proved, cert = certified(h, ClaimKind.LOCKED, ts)
    out = await settled(h, await relayer.submit_batch(Action.PREPARE, proved, cert))
    assert [r.state for r in out.items] == [
        LegState.PREPARED, LegState.REJECTED, LegState.PREPARED,
    ]  # fmt: skip
    assert {r.leg for r in out.items} == {Leg.INBOUND} and out.items[1].reason != 0
    aborts, acert = certified(h, ClaimKind.ABORT, ts)
    out = await settled(h, await relayer.submit_batch(Action.ABORT, aborts, acert))
    assert [r.state for r in out.items] == [LegState.ABORTED] * 3
    assert await states(relayer, ts, Leg.INBOUND) == [LegState.ABORTED] * 3
    assert await balance(relayer, bob) == 0


async def test_refusals_apply_nothing_and_name_the_item(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    h, tt = harness, Terms(harness)
    sender = await h.holder(50)
    ts = [tt.outbound(sender, 1) for _ in range(4)]
    items = [BatchItem(t, tt.instruction(t)) for t in ts]
    # Item 2 carries item 1's instruction: its own lock is refused, so is the batch.
    forged = [*items[:2], replace(items[2], instruction=items[1].instruction), items[3]]
    with pytest.raises(LedgerRejected) as info:
        await relayer.submit_batch(Action.LOCK, forged)
    assert info.value.reason is ErrorReason.INVALID_INSTRUCTION
    assert refused_item(info.value) == 2
    assert await states(relayer, ts, Leg.OUTBOUND) == [LegState.NONE] * 4
    assert await balance(relayer, sender) == 50
    await settled(h, await relayer.submit_batch(Action.LOCK, items))
    # A proof under another root, named by its index.
    first, cert = certified(h, ClaimKind.COMMIT, ts[:2])
    other, _ = certified(h, ClaimKind.COMMIT, ts[2:])
    with pytest.raises(LedgerRejected) as info:
        await relayer.submit_batch(Action.COMMIT, [first[0], other[0]], cert)
    assert info.value.reason is ErrorReason.INVALID_BATCH_PROOF
    assert refused_item(info.value) == 1
    # The certificate of another kind, of an epoch not installed: the batch as a whole.
    with pytest.raises(LedgerRejected) as info:
        await relayer.submit_batch(Action.ABORT, first, cert)
    assert info.value.reason is ErrorReason.WRONG_BATCH_KIND
    assert refused_item(info.value) is None
    later, later_cert = certified(h, ClaimKind.COMMIT, ts, epoch=h.committee.epoch + 5)
    with pytest.raises(LedgerRejected) as info:
        await relayer.submit_batch(Action.COMMIT, later, later_cert)
    assert info.value.reason is ErrorReason.WRONG_EPOCH
    assert refused_item(info.value) is None
    # A transfer twice.
    every, all_cert = certified(h, ClaimKind.COMMIT, ts)
    with pytest.raises(LedgerRejected) as info:
        await relayer.submit_batch(Action.COMMIT, [every[0], every[1], every[0]], all_cert)
    assert info.value.reason is ErrorReason.DUPLICATE_BATCH_ITEM
    assert refused_item(info.value) == 2
    assert await states(relayer, ts, Leg.OUTBOUND) == [LegState.LOCKED] * 4
    assert await balance(relayer, sender) == 46


async def test_a_read_only_adapter_sends_no_batch(harness: KindHarness) -> None:
    h, tt = harness, Terms(harness)
    reader = h.reader()
    try:
        t = tt.outbound(await h.holder(1), 1)
        with pytest.raises(LedgerRejected) as info:
            await reader.submit_batch(Action.LOCK, [BatchItem(t, tt.instruction(t))])
        assert info.value.reason is ErrorReason.READ_ONLY
    finally:
        await reader.close()


async def test_batches_outside_the_kinds_bounds_are_value_errors(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    h, tt = harness, Terms(harness)
    t = tt.outbound(await h.holder(1), 1)
    _, cert = certified(h, ClaimKind.COMMIT, [t])
    with pytest.raises(ValueError, match="1 to"):
        await relayer.submit_batch(Action.LOCK, [])
    with pytest.raises(ValueError, match="takes no certificate"):
        await relayer.submit_batch(Action.LOCK, [BatchItem(t)], cert)
    with pytest.raises(ValueError, match="needs a batch certificate"):
        await relayer.submit_batch(Action.COMMIT, [BatchItem(t)], None)
    too_many = [BatchItem(tt.outbound(t.sender, 1)) for _ in range(relayer.max_batch_items + 1)]
    with pytest.raises(ValueError, match="1 to"):
        await relayer.submit_batch(Action.LOCK, too_many)
