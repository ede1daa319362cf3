"""Flow limits on the real Fabric network (ADR 0010): the chaincode's buckets run on the
proposal timestamps the peers endorse, checked against each chaincode server's clock, and
the adapter reads them (FlowStatus, and a leg's not-before through GetLeg)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest

from bridge.devnet.fabric import FabricNetwork
from bridge.devnet.fabric_bridge import submit_agreed
from bridge.devnet.processes import ManagedProcess
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import LedgerRejected
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.legs import Leg, LegState
from bridge.ledgers.fabric import codec
from bridge.ledgers.fabric.adapter import FabricAdapter
from bridge.ledgers.fabric.gateway import GatewayClient
from tests.integration.fabric.support import OTHER_LEDGER, lock_args, submit_and_wait
from tests.integration.fabric.support import BridgeEnv as Env

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.governance]

CHAINCODE = "kstbflow"  # its own instance on the shared session network
LEDGER = LedgerId("fabric-flow")
ISIN = "KR7005930003"
SEC = SecurityId(ISIN)


@pytest.fixture(scope="module")
async def env(fabric_network: FabricNetwork, bridge_chaincode: ManagedProcess) -> Env:
    return await Env.new(fabric_network, CHAINCODE, LEDGER).init(ISIN)


@pytest.fixture
async def admin(env: Env) -> AsyncIterator[GatewayClient]:
    c = env.client("Org1", "Admin")
    yield c
    await c.close()


@pytest.fixture
async def relayer(env: Env) -> AsyncIterator[GatewayClient]:
    c = env.client("Org1", "User1")
    yield c
    await c.close()


async def refused(client: GatewayClient, name: str, fn: str, *args: str) -> LedgerRejected:
    with pytest.raises(LedgerRejected) as exc:
        await submit_agreed(client, CHAINCODE, fn, list(args))
    assert exc.value.reason == name, str(exc.value)
    return exc.value


async def test_limits_are_enforced_on_endorsed_time_and_read_by_the_adapter(
    env: Env, admin: GatewayClient, relayer: GatewayClient
) -> None:
    limit = [ISIN, OTHER_LEDGER.name, "10", "0", "1000000", "0", "5", "600"]
    await refused(relayer, "NotAdmin", "SetFlowLimit", *limit)
    adapter = FabricAdapter(LEDGER, relayer, CHAINCODE)
    assert not (await adapter.flow_status(SEC, OTHER_LEDGER)).limited
    await submit_and_wait(env.net, admin, CHAINCODE, "SetFlowLimit", *limit)
    status = await adapter.flow_status(SEC, OTHER_LEDGER)
    assert (status.outbound.capacity, status.outbound.available) == (10, 10)
    assert (status.large_threshold, status.large_delay) == (5, 600)
    assert abs(status.as_of - time.time()) < 30

    sender = await env.holder(ISIN, 20)
    big = env.outbound(SEC, sender, 8)  # above the large threshold: delayed
    await submit_and_wait(env.net, relayer, CHAINCODE, "Lock", *lock_args(codec.terms_to_json(big)))
    leg = await adapter.get_leg(big.transfer_id, Leg.OUTBOUND)
    assert leg.state is LegState.LOCKED
    assert time.time() + 500 < leg.not_before < time.time() + 700
    assert (await adapter.flow_status(SEC, OTHER_LEDGER)).outbound.available == 2

    over = env.outbound(SEC, sender, 5)
    rejection = await refused(
        relayer, "FlowLimitExceeded", "Lock", *lock_args(codec.terms_to_json(over))
    )
    assert rejection.detail == "available=2, requested=5"
    # Typed figures from the chaincode's JSON payload (ADR 0015), not from the detail text.
    assert (rejection.available, rejection.requested) == (2, 5)
    holder = "0x" + sender[12:].hex()
    raw = json.loads(await relayer.evaluate(CHAINCODE, "HolderStatus", [ISIN, holder]))
    assert raw["balance"] == "12"  # only the first lock escrowed

    terms = codec.terms_to_json(big)
    commit = codec.certificate_to_json(env.cert(ClaimKind.COMMIT, big))
    early = await refused(relayer, "TooEarly", "Commit", terms, commit)
    assert early.detail.startswith(f"notBefore={leg.not_before}, ")
    assert early.not_before == leg.not_before
    abort = codec.certificate_to_json(env.cert(ClaimKind.ABORT, big))
    await submit_and_wait(env.net, relayer, CHAINCODE, "Abort", terms, abort)  # never delayed
    assert (await adapter.flow_status(SEC, OTHER_LEDGER)).outbound.available == 10
    await submit_and_wait(
        env.net, admin, CHAINCODE, "SetFlowLimit", ISIN, OTHER_LEDGER.name, *["0"] * 6
    )
    assert not (await adapter.flow_status(SEC, OTHER_LEDGER)).limited
