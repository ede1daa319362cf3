"""The ledger-adapter contract, run against every ledger kind through its harness.

Every state transition of both legs, every refusal with its typed reason (and nothing
half-applied), idempotent steps, events at finality with checkpointed resumption, holder and
supply reads. A kind passes when this module passes for it unchanged.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from bridge.core.reasons import ErrorReason
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import InvalidInput, LedgerRejected
from bridge.domain.legs import Action, Leg, LegState, RejectReason, SignatureSet, TxOutcome
from bridge.domain.terms import TransferTerms
from bridge.ledgers.adapter import LedgerAdapter
from bridge.ledgers.many_holders import read_holders
from tests.conformance.harness import SECURITY, KindHarness, Terms

pytestmark = [pytest.mark.conformance, pytest.mark.integration]


@pytest.fixture
async def relayer(harness: KindHarness) -> AsyncIterator[LedgerAdapter]:
    adapter = harness.relayer()
    yield adapter
    await adapter.close()


async def step(
    h: KindHarness,
    a: LedgerAdapter,
    action: Action,
    t: TransferTerms,
    cert: SignatureSet | None = None,
) -> TxOutcome:
    """Submit and wait until every node the harness reads has it."""
    instruction = Terms(h).instruction(t) if action is Action.LOCK else b""
    out = await a.submit(action, t, cert, instruction)
    await h.settled(out)
    return out


async def events_of(a: LedgerAdapter, t: TransferTerms) -> list[LegState]:
    final = await a.finalized_height()
    return [e.state for e in await a.events(None, final) if e.transfer_id == t.transfer_id]


async def balance(a: LedgerAdapter, holder: bytes) -> int:
    return (await a.holder_status(SECURITY, holder)).balance


# -- identity ---------------------------------------------------------------------------------
async def test_identity_and_addresses_round_trip(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    assert relayer.kind == harness.kind
    assert relayer.ledger == harness.ledger
    assert relayer.bridge_word == harness.bridge_word
    assert await relayer.network_word() == harness.network_word
    holder = await harness.holder()
    assert relayer.parse_address(relayer.format_address(holder)) == holder
    with pytest.raises(InvalidInput):
        relayer.parse_address("not an address")


# -- outbound leg: NONE -> LOCKED -> BURNED | RELEASED -----------------------------------------
async def test_outbound_lock_commit_is_idempotent_and_emits_each_event_once(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    h, tt = harness, Terms(harness)
    start = await relayer.finalized_height()
    sender = await h.holder(10)
    t = tt.outbound(sender, 10)
    lock = await step(h, relayer, Action.LOCK, t)
    assert not lock.already_applied and lock.tx_id and lock.height > start
    status = await relayer.get_leg(t.transfer_id, Leg.OUTBOUND)
    assert status.state is LegState.LOCKED and status.terms_hash == t.terms_hash
    assert await balance(relayer, sender) == 0
    again = await relayer.submit(Action.LOCK, t, None, tt.instruction(t))
    assert again.already_applied and again.tx_id == ""
    assert await balance(relayer, sender) == 0, "escrowed once"
    # The same transfer id with other terms is refused, not applied.
    other = replace(t, deadline=t.deadline + 1)
    with pytest.raises(LedgerRejected) as exc:
        await relayer.submit(Action.LOCK, other, None, tt.instruction(other))
    assert exc.value.reason == ErrorReason.TERMS_MISMATCH

    commit = tt.cert(ClaimKind.COMMIT, t)
    burned = await step(h, relayer, Action.COMMIT, t, commit)
    assert not burned.already_applied
    assert (await relayer.submit(Action.COMMIT, t, commit)).already_applied
    assert (await relayer.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.BURNED

    final = await relayer.finalized_height()
    events = [e for e in await relayer.events(None, final) if e.transfer_id == t.transfer_id]
    assert [e.state for e in events] == [LegState.LOCKED, LegState.BURNED]
    assert events[0].terms == t, "the LOCKED event carries the full terms"
    assert events[0].tx_id == lock.tx_id and events[1].tx_id == burned.tx_id
    assert all(e.leg is Leg.OUTBOUND and e.ledger == h.ledger.name for e in events)
    assert all(e.position.height <= final for e in events), "events only at finality"
    # Checkpoint: resuming after the last event returns nothing of this transfer.
    after = await relayer.events(events[-1].position, final)
    assert [e for e in after if e.transfer_id == t.transfer_id] == []


async def test_outbound_abort_releases_exactly_once(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    h, tt = harness, Terms(harness)
    sender = await h.holder(7)
    t = tt.outbound(sender, 7)
    await step(h, relayer, Action.LOCK, t)
    abort = tt.cert(ClaimKind.ABORT, t)
    await step(h, relayer, Action.ABORT, t, abort)
    assert (await relayer.submit(Action.ABORT, t, abort)).already_applied
    assert (await relayer.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.RELEASED
    assert await balance(relayer, sender) == 7, "released exactly once"
    assert await events_of(relayer, t) == [LegState.LOCKED, LegState.RELEASED]


# -- inbound leg: NONE -> PREPARED -> MINTED | ABORTED; NONE -> REJECTED -----------------------
async def test_inbound_prepare_commit_mints_once(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    h, tt = harness, Terms(harness)
    recipient = await h.holder()
    t = tt.inbound(recipient, 9)
    locked = tt.cert(ClaimKind.LOCKED, t)
    await step(h, relayer, Action.PREPARE, t, locked)
    assert (await relayer.submit(Action.PREPARE, t, locked)).already_applied
    status = await relayer.get_leg(t.transfer_id, Leg.INBOUND)
    assert status.state is LegState.PREPARED and status.terms_hash == t.terms_hash
    commit = tt.cert(ClaimKind.COMMIT, t)
    await step(h, relayer, Action.COMMIT, t, commit)
    assert (await relayer.submit(Action.COMMIT, t, commit)).already_applied
    assert (await relayer.get_leg(t.transfer_id, Leg.INBOUND)).state is LegState.MINTED
    assert await balance(relayer, recipient) == 9, "minted exactly once"
    assert await events_of(relayer, t) == [LegState.PREPARED, LegState.MINTED]


async def test_inbound_prepare_abort(harness: KindHarness, relayer: LedgerAdapter) -> None:
    h, tt = harness, Terms(harness)
    recipient = await h.holder()
    t = tt.inbound(recipient, 4)
    await step(h, relayer, Action.PREPARE, t, tt.cert(ClaimKind.LOCKED, t))
    abort = tt.cert(ClaimKind.ABORT, t)
    await step(h, relayer, Action.ABORT, t, abort)
    assert (await relayer.submit(Action.ABORT, t, abort)).already_applied
    assert (await relayer.get_leg(t.transfer_id, Leg.INBOUND)).state is LegState.ABORTED
    assert await balance(relayer, recipient) == 0
    assert await events_of(relayer, t) == [LegState.PREPARED, LegState.ABORTED]


async def test_ineligible_recipient_is_a_recorded_rejection(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    h, tt = harness, Terms(harness)
    stranger = await h.holder(eligible=False)
    t = tt.inbound(stranger, 3)
    await step(h, relayer, Action.PREPARE, t, tt.cert(ClaimKind.LOCKED, t))
    status = await relayer.get_leg(t.transfer_id, Leg.INBOUND)
    assert status.state is LegState.REJECTED
    assert status.reason == RejectReason.RECIPIENT_NOT_ELIGIBLE
    assert await events_of(relayer, t) == [LegState.REJECTED]


# -- refusals: typed reason, nothing applied -------------------------------------------------
async def test_lock_refusals_are_typed_and_apply_nothing(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    h, tt = harness, Terms(harness)
    sender = await h.holder(5)
    too_much = tt.outbound(sender, 6)
    with pytest.raises(LedgerRejected) as exc:
        await relayer.submit(Action.LOCK, too_much, None, tt.instruction(too_much))
    assert exc.value.reason == ErrorReason.INSUFFICIENT_BALANCE
    assert (await relayer.get_leg(too_much.transfer_id, Leg.OUTBOUND)).state is LegState.NONE
    # An instruction authorises a lock only before its deadline, by the ledger's own time
    # (EVM block.timestamp; Fabric's proposal and CometBFT's block timestamp, since
    # 2026-12-07: Fabric locked past it before).
    late = replace(tt.outbound(sender, 5), deadline=int(time.time()) - 3600)
    with pytest.raises(LedgerRejected) as exc:
        await relayer.submit(Action.LOCK, late, None, tt.instruction(late))
    assert exc.value.reason == ErrorReason.DEADLINE_PASSED
    assert (await relayer.get_leg(late.transfer_id, Leg.OUTBOUND)).state is LegState.NONE
    assert await balance(relayer, sender) == 5


@pytest.mark.security
async def test_certificate_refusals_are_typed_and_apply_nothing(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    h, tt = harness, Terms(harness)
    recipient = await h.holder()
    t = tt.inbound(recipient, 2)
    forged = tt.cert(ClaimKind.LOCKED, t, ledger=tt.outbound(recipient, 1).dst_ledger)
    short = tt.cert(ClaimKind.LOCKED, t)
    cases = [
        (forged, {ErrorReason.NOT_COMMITTEE_MEMBER, ErrorReason.TOO_FEW_SIGNATURES}),
        (replace(short, signatures=short.signatures[:2]), {ErrorReason.TOO_FEW_SIGNATURES}),
        (replace(short, epoch=99), {ErrorReason.WRONG_EPOCH, ErrorReason.EPOCH_NOT_ACTIVE}),
        (None, {"MissingCertificate"}),  # the adapter's own refusal
    ]
    for cert, reasons in cases:
        with pytest.raises(LedgerRejected) as exc:
            await relayer.submit(Action.PREPARE, t, cert)
        assert exc.value.reason in reasons, (cert, exc.value.reason)
    # A step of the other leg: this ledger is the target of ``t``.
    with pytest.raises(LedgerRejected) as exc:
        await relayer.submit(Action.LOCK, t, None, Terms(h).instruction(t))
    assert exc.value.reason == "WrongLeg"  # the adapter's own refusal
    # A certificate of another kind does not verify as LOCKED.
    with pytest.raises(LedgerRejected):
        await relayer.submit(Action.PREPARE, t, tt.cert(ClaimKind.ABORT, t))
    assert (await relayer.get_leg(t.transfer_id, Leg.INBOUND)).state is LegState.NONE
    assert await events_of(relayer, t) == []


@pytest.mark.security
async def test_a_read_only_adapter_submits_nothing(harness: KindHarness) -> None:
    h, tt = harness, Terms(harness)
    reader = h.reader()
    try:
        sender = await h.holder(1)
        t = tt.outbound(sender, 1)
        with pytest.raises(LedgerRejected) as exc:
            await reader.submit(Action.LOCK, t, None, tt.instruction(t))
        assert exc.value.reason == "ReadOnly"  # the adapter's own refusal
        assert (await reader.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.NONE
    finally:
        await reader.close()


# -- holder reads -------------------------------------------------------------------------------
async def test_many_holders_read_each_as_a_single_read(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    """The relayer's GetHolders path (``read_holders``: a kind's many-holder read, or
    bounded single reads): each holder, in order, as ``holder_status`` reads it."""
    h = harness
    funded, empty = await h.holder(12), await h.holder()
    ineligible = await h.holder(eligible=False)
    holders = [funded, empty, ineligible, funded]
    many = await read_holders(relayer, SECURITY, holders)
    assert many == [await relayer.holder_status(SECURITY, w) for w in holders]
    assert [(s.balance, s.eligible) for s in many] == [
        (12, True), (0, True), (0, False), (12, True)
    ]  # fmt: skip


# -- supply reads -------------------------------------------------------------------------------
async def test_supply_counts_escrow_prepared_burned_and_minted(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    h, tt = harness, Terms(harness)
    before = await relayer.supply(SECURITY)
    sender = await h.holder(20)
    out = tt.outbound(sender, 8)
    await step(h, relayer, Action.LOCK, out)
    inbound = tt.inbound(await h.holder(), 5)
    await step(h, relayer, Action.PREPARE, inbound, tt.cert(ClaimKind.LOCKED, inbound))
    mid = await relayer.supply(SECURITY)
    assert mid.total_supply == before.total_supply + 20
    assert mid.escrowed == before.escrowed + 8
    assert mid.prepared == before.prepared + 5
    await step(h, relayer, Action.COMMIT, out, tt.cert(ClaimKind.COMMIT, out))
    await step(h, relayer, Action.COMMIT, inbound, tt.cert(ClaimKind.COMMIT, inbound))
    after = await relayer.supply(SECURITY)
    assert after.total_supply == before.total_supply + 20 - 8 + 5
    assert after.escrowed == before.escrowed and after.prepared == before.prepared
    assert after.burned_out == before.burned_out + 8
    assert after.minted_in == before.minted_in + 5
    assert after.height >= mid.height and after.ledger == h.ledger.name
