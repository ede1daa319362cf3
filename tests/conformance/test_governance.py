"""Issue-10 rules through the adapter, for every ledger kind: the depository halt, flow
limits and parking after prepare. Each refusal carries its typed reason and changes nothing.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from bridge.core.reasons import ErrorReason
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import LedgerRejected
from bridge.domain.flow import FlowLimit
from bridge.domain.governance import Order, OrderAction, make_order, sign_order
from bridge.domain.ids import LedgerId
from bridge.domain.legs import Action, Leg, LegState, RejectReason
from bridge.domain.signer import LocalKeySigner
from bridge.ledgers.adapter import LedgerAdapter
from tests.conformance.harness import OTHER, SECURITY, KindHarness, Terms
from tests.conformance.test_adapter import balance, step

pytestmark = [pytest.mark.conformance, pytest.mark.integration, pytest.mark.governance]

DEPOSITORY = LocalKeySigner(secrets.token_bytes(32))


@pytest.fixture
async def relayer(harness: KindHarness) -> AsyncIterator[LedgerAdapter]:
    adapter = harness.relayer()
    yield adapter
    await adapter.close()


def order(h: KindHarness, action: OrderAction, sequence: int, expiry: int | None = None) -> Order:
    return make_order(
        network=h.network_word,
        ledger=h.ledger.word,
        security=SECURITY.word,
        action=action,
        sequence=sequence,
        expiry=int(time.time()) + 600 if expiry is None else expiry,
    )


@pytest.mark.security
async def test_halt_stops_locks_until_a_signed_release(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    h, tt = harness, Terms(harness)
    status = await relayer.halt_status(SECURITY)
    if status.depository is None or not any(status.depository):
        await h.set_depository(DEPOSITORY.address)
        status = await relayer.halt_status(SECURITY)
    assert status.depository == DEPOSITORY.address and not status.halted
    seq = status.sequence + 1
    halt = sign_order(DEPOSITORY, order(h, OrderAction.HALT, seq))
    first = await relayer.apply_order(halt.order, halt.signature)
    await h.settled(first)
    assert not first.already_applied and first.tx_id
    assert (await relayer.halt_status(SECURITY)).security_halted
    again = await relayer.apply_order(halt.order, halt.signature)
    assert again.already_applied and again.tx_id == "", "idempotent by sequence"

    sender = await h.holder(3)
    t = tt.outbound(sender, 3)
    with pytest.raises(LedgerRejected) as exc:
        await relayer.submit(Action.LOCK, t, None, tt.instruction(t))
    assert exc.value.reason == ErrorReason.SECURITY_HALTED
    assert (await relayer.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.NONE

    forged = sign_order(
        LocalKeySigner(secrets.token_bytes(32)), order(h, OrderAction.RELEASE, seq + 1)
    )
    with pytest.raises(LedgerRejected) as exc:
        await relayer.apply_order(forged.order, forged.signature)
    assert exc.value.reason == ErrorReason.NOT_DEPOSITORY
    expired = sign_order(DEPOSITORY, order(h, OrderAction.RELEASE, seq + 1, expiry=1))
    with pytest.raises(LedgerRejected) as exc:
        await relayer.apply_order(expired.order, expired.signature)
    assert exc.value.reason == ErrorReason.ORDER_EXPIRED
    # An order of a sequence already applied is taken as applied: nothing is sent.
    replayed = sign_order(DEPOSITORY, order(h, OrderAction.RELEASE, seq))
    stale = await relayer.apply_order(replayed.order, replayed.signature)
    assert stale.already_applied and stale.tx_id == ""
    assert (await relayer.halt_status(SECURITY)).security_halted, "nothing lifted it"

    release = sign_order(DEPOSITORY, order(h, OrderAction.RELEASE, seq + 1))
    await h.settled(await relayer.apply_order(release.order, release.signature))
    assert not (await relayer.halt_status(SECURITY)).halted
    await step(h, relayer, Action.LOCK, t)
    assert (await relayer.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.LOCKED


async def test_flow_limit_refuses_a_lock_over_capacity_and_reads_the_bucket(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    h, tt = harness, Terms(harness)
    lane = LedgerId("conformance-lane")
    await h.set_flow_limit(lane, FlowLimit(outbound_capacity=10, window=86_400))
    try:
        flow = await relayer.flow_status(SECURITY, lane)
        assert flow.outbound.capacity == 10 and flow.counterpart == lane.name
        sender = await h.holder(30)
        first = replace(tt.outbound(sender, 8), dst_ledger=lane.word)
        await step(h, relayer, Action.LOCK, first)
        over = replace(tt.outbound(sender, 5), dst_ledger=lane.word)
        with pytest.raises(LedgerRejected) as exc:
            await relayer.submit(Action.LOCK, over, None, tt.instruction(over))
        assert exc.value.reason == ErrorReason.FLOW_LIMIT_EXCEEDED
        assert (await relayer.get_leg(over.transfer_id, Leg.OUTBOUND)).state is LegState.NONE
        assert await balance(relayer, sender) == 22
        # Another lane of the same security is not limited.
        free = tt.outbound(sender, 12)
        await step(h, relayer, Action.LOCK, free)
        assert free.dst_ledger == OTHER.word
    finally:
        await h.set_flow_limit(lane, FlowLimit())


async def test_a_recipient_refused_after_prepare_gets_its_units_parked(
    harness: KindHarness, relayer: LedgerAdapter
) -> None:
    h, tt = harness, Terms(harness)
    recipient = await h.holder()
    t = tt.inbound(recipient, 6)
    await step(h, relayer, Action.PREPARE, t, tt.cert(ClaimKind.LOCKED, t))
    await h.set_eligible(recipient, False)
    before = await relayer.supply(SECURITY)
    await step(h, relayer, Action.COMMIT, t, tt.cert(ClaimKind.COMMIT, t))
    leg = await relayer.get_leg(t.transfer_id, Leg.INBOUND)
    # COMMIT is the decision: the leg is MINTED, its reason says the units were parked.
    assert leg.state is LegState.MINTED
    assert leg.reason == RejectReason.RECIPIENT_NOT_ELIGIBLE
    assert await balance(relayer, recipient) == 0
    assert await h.parked(t.transfer_id) == 6
    after = await relayer.supply(SECURITY)
    assert after.minted_in == before.minted_in + 6
    assert after.prepared == before.prepared - 6
    assert after.escrowed == before.escrowed
