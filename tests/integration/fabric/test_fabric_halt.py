"""The depository kill switch on the native Fabric network through the Fabric adapter.

The bridge chaincode runs as a service (both orgs endorse); Org1's Admin administers the
endpoint and installs the depository key; Org1's User1 is the relayer (``BridgeEnv.init``).
Checked: halt_status, ApplyOrder idempotent by sequence, the precise refusals (another key,
replay, expired: refused by the adapter, the chaincode having no clock), and that a halted
security is not locked until a signed release.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

import pytest

from bridge.devnet.fabric import FabricNetwork
from bridge.devnet.fabric_bridge import CHAINCODE_DIR, wait_for_peers
from bridge.devnet.processes import ManagedProcess
from bridge.domain.errors import LedgerRejected
from bridge.domain.governance import Order, OrderAction, make_order, sign_order
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.legs import Action, Leg, LegState
from bridge.domain.signer import LocalKeySigner
from bridge.ledgers.fabric.adapter import FabricAdapter
from tests.integration.fabric.support import (
    BridgeEnv,
    instruct,
    network_word,
    submit_and_wait,
)

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.governance]

CHAINCODE = "kstbhalt"
LEDGER = LedgerId("fabric-halt")
ISIN = "US0378331005"
SECURITY = SecurityId(ISIN)
DEPOSITORY = LocalKeySigner(secrets.token_bytes(32))

if not (CHAINCODE_DIR / "kstb_chaincode" / "__main__.py").is_file():
    pytest.skip("contracts/fabric/kstb_chaincode is not there yet", allow_module_level=True)


@pytest.fixture(scope="module")
async def env(fabric_network: FabricNetwork, bridge_chaincode: ManagedProcess) -> BridgeEnv:
    e = await BridgeEnv.new(fabric_network, CHAINCODE, LEDGER).init(ISIN)
    admin = e.client("Org1", "Admin")
    try:
        await submit_and_wait(
            e.net, admin, CHAINCODE, "SetDepository", "0x" + DEPOSITORY.address.hex()
        )
    finally:
        await admin.close()
    return e


@pytest.fixture
async def relayer(env: BridgeEnv) -> AsyncIterator[FabricAdapter]:
    adapter = FabricAdapter(LEDGER, env.client("Org1", "User1"), CHAINCODE, "Org1MSP/User1")
    yield adapter
    await adapter.close()


def order(action: OrderAction, sequence: int, expiry: int | None = None) -> Order:
    return make_order(
        network=network_word(),
        ledger=LEDGER.word,
        security=SECURITY.word,
        action=action,
        sequence=sequence,
        expiry=int(time.time()) + 600 if expiry is None else expiry,
    )


async def test_halt_release_and_refusals(env: BridgeEnv, relayer: FabricAdapter) -> None:
    status = await relayer.halt_status(SECURITY)
    assert status.depository == DEPOSITORY.address and not status.halted
    seq = status.sequence + 1
    halt = sign_order(DEPOSITORY, order(OrderAction.HALT, seq))
    out = await relayer.apply_order(halt.order, halt.signature)
    assert not out.already_applied
    await wait_for_peers(env.net, out.height)
    assert (await relayer.halt_status(SECURITY)).security_halted
    again = await relayer.apply_order(halt.order, halt.signature)
    assert again.already_applied and again.tx_id == ""

    sender = await env.holder(ISIN, 10)
    t = env.outbound(SECURITY, sender, 10)
    with pytest.raises(LedgerRejected) as info:
        await relayer.submit(Action.LOCK, t, None, instruct(t))
    assert info.value.reason == "SecurityHalted"
    assert (await relayer.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.NONE

    forged = sign_order(
        LocalKeySigner(secrets.token_bytes(32)), order(OrderAction.RELEASE, seq + 1)
    )
    with pytest.raises(LedgerRejected) as info:
        await relayer.apply_order(forged.order, forged.signature)
    assert info.value.reason == "NotDepository"
    stale = sign_order(DEPOSITORY, order(OrderAction.RELEASE, seq + 1, expiry=1))
    with pytest.raises(LedgerRejected) as info:
        await relayer.apply_order(stale.order, stale.signature)
    assert info.value.reason == "OrderExpired"
    assert (await relayer.halt_status(SECURITY)).security_halted

    release = sign_order(DEPOSITORY, order(OrderAction.RELEASE, seq + 2))
    out = await relayer.apply_order(release.order, release.signature)
    await wait_for_peers(env.net, out.height)
    assert not (await relayer.halt_status(SECURITY)).halted
    lock = await relayer.submit(Action.LOCK, t, None, instruct(t))
    await wait_for_peers(env.net, lock.height)
    assert (await relayer.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.LOCKED
