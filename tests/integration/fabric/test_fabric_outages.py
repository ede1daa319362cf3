"""Fabric node outages on a native network of its own: the orderer, and the chaincode server.

While the orderer is down, reads keep answering from the peers and every write is
``Unavailable`` (retryable, never a refusal); once it is back, the retried step applies
exactly once. While the chaincode server (chaincode as a service) is down, reads and writes
through the bridge chaincode are ``Unavailable``; once it serves again, they work, with no
state lost (it lives on the peers). The peer outage is covered by ``bench/soak.py --fabric``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bridge.devnet.fabric import FabricNetwork
from bridge.devnet.fabric_bridge import start_bridge_chaincode
from bridge.devnet.processes import ManagedProcess
from bridge.domain.errors import LedgerRejected, Unavailable
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.legs import Action, Leg, LegState, TxOutcome
from bridge.domain.terms import TransferTerms
from bridge.ledgers.fabric.adapter import FabricAdapter
from tests.integration.fabric.support import BridgeEnv, instruct
from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.fabric]

CHAINCODE = "kstbout"
LEDGER = LedgerId("fabric-out")
ISIN = "KR7005930003"
SECURITY = SecurityId(ISIN)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FabricNetwork]:
    """A network of this module's own: its orderer is killed here."""
    net = FabricNetwork(Path(tmp_path_factory.mktemp("fabric-outages")))
    net.start()
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="module")
def server(network: FabricNetwork) -> Iterator[ManagedProcess]:
    proc = start_bridge_chaincode(network, CHAINCODE)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
async def env(network: FabricNetwork, server: ManagedProcess) -> BridgeEnv:
    return await BridgeEnv.new(network, CHAINCODE, LEDGER).init(ISIN)


@pytest.fixture
async def relayer(env: BridgeEnv) -> AsyncIterator[FabricAdapter]:
    """Org1's User1 (the relayer) through Org1's peer; short call timeouts."""
    adapter = FabricAdapter(
        LEDGER,
        env.client("Org1", "User1", timeout=15.0, commit_timeout=30.0),
        CHAINCODE,
        "Org1MSP/User1",
    )
    yield adapter
    await adapter.close()


async def lock_when_possible(adapter: FabricAdapter, t: TransferTerms) -> TxOutcome:
    """Retry the lock on Unavailable, as the relayer and coordinator do; a refusal fails."""

    async def attempt() -> TxOutcome | None:
        try:
            return await adapter.submit(Action.LOCK, t, None, instruct(t))
        except LedgerRejected:
            raise
        except Unavailable:
            return None

    return await eventually(attempt, 90, "the lock applied after the outage", interval=0.5)


async def test_orderer_outage_writes_are_unavailable_then_apply_once(
    env: BridgeEnv, relayer: FabricAdapter
) -> None:
    sender = await env.holder(ISIN, 10)
    t = env.outbound(SECURITY, sender, 4)
    height = await relayer.finalized_height()
    env.net.kill_orderer()
    try:
        # Reads answer from the peer's committed state.
        assert (await relayer.holder_status(SECURITY, sender)).balance == 10
        assert await relayer.finalized_height() == height
        with pytest.raises(Unavailable) as down:
            await relayer.submit(Action.LOCK, t, None, instruct(t))
        assert not isinstance(down.value, LedgerRejected), "an outage is not the ledger's no"
        assert "no orderers could successfully process transaction" in str(down.value)
        assert (await relayer.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.NONE
        assert (await relayer.holder_status(SECURITY, sender)).balance == 10, "nothing moved"
    finally:
        env.net.restart_orderer()
    out = await lock_when_possible(relayer, t)
    assert not out.already_applied and out.height > height
    assert (await relayer.holder_status(SECURITY, sender)).balance == 6, "escrowed once"
    assert (await relayer.submit(Action.LOCK, t, None, instruct(t))).already_applied
    events = [
        e
        for e in await relayer.events(None, await relayer.finalized_height())
        if e.transfer_id == t.transfer_id
    ]
    assert [e.state for e in events] == [LegState.LOCKED], "one lock, no trace of the failure"


async def test_chaincode_server_outage_is_unavailable_then_recovers(
    env: BridgeEnv, relayer: FabricAdapter, server: ManagedProcess
) -> None:
    sender = await env.holder(ISIN, 5)
    t = env.outbound(SECURITY, sender, 5)
    server.kill9()
    try:
        with pytest.raises(Unavailable) as read:
            await relayer.get_leg(t.transfer_id, Leg.OUTBOUND)
        assert not isinstance(read.value, LedgerRejected)
        with pytest.raises(Unavailable) as write:
            await relayer.submit(Action.LOCK, t, None, instruct(t))
        assert not isinstance(write.value, LedgerRejected), "an outage is not the ledger's no"
        assert "could not launch chaincode" in str(read.value)
        assert "could not launch chaincode" in str(write.value)
    finally:
        server.start()
    out = await lock_when_possible(relayer, t)
    assert not out.already_applied
    status = await relayer.holder_status(SECURITY, sender)
    assert status.balance == 0 and status.eligible, "state kept on the peers"
    assert (await relayer.get_leg(t.transfer_id, Leg.OUTBOUND)).state is LegState.LOCKED
