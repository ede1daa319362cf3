"""Committee rotation through the Fabric adapter, on the native network (ADR 0008).

The chaincode runs as its own instance (``kstbrotate``). A rotation 1 -> 2 is installed with
``FabricAdapter.install_committee`` (by Org2's User1: anyone may submit), read back with
``committees()``; both epochs verify during the overlap, only epoch 2 after it (the ledger
time is the transaction timestamp, so the test waits in real time). The full rule set is
covered by tests/unit/test_fabric_chaincode_rotation.py on the same protocol code.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest

from bridge.devnet.fabric import FabricNetwork
from bridge.devnet.fabric_bridge import until_agreed, wait_for_peers
from bridge.devnet.processes import ManagedProcess
from bridge.domain.claims import Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.committee import Committee, CommitteeRotation
from bridge.domain.errors import LedgerRejected
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.legs import Action, Leg, LegState, SignatureSet
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.ledgers.fabric.adapter import FabricAdapter
from tests.integration.fabric.support import BridgeEnv as Env
from tests.integration.fabric.support import network_word

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.governance]

CHAINCODE = "kstbrotate"  # its own instance on the shared session network
LEDGER = LedgerId("fabric-rotate")
ISIN = "KR7005930003"
OVERLAP = 45  # room for the steps inside the overlap on a loaded host


@pytest.fixture(scope="module")
async def env(fabric_network: FabricNetwork, bridge_chaincode: ManagedProcess) -> Env:
    return await Env.new(fabric_network, CHAINCODE, LEDGER).init(ISIN)


@pytest.fixture
async def relayer(env: Env) -> AsyncIterator[FabricAdapter]:
    a = FabricAdapter(LEDGER, env.client("Org1", "User1"), CHAINCODE, "Org1MSP/User1")
    yield a
    await a.close()


@pytest.fixture
async def anyone(env: Env) -> AsyncIterator[FabricAdapter]:
    a = FabricAdapter(LEDGER, env.client("Org2", "User1"), CHAINCODE, "Org2MSP/User1")
    yield a
    await a.close()


def domain(env: Env, epoch: int = 0) -> ClaimDomain:
    return ClaimDomain(env.ledger.word, env.bridge, epoch, network_word())


def inbound(env: Env) -> TransferTerms:
    return env.inbound(SecurityId(ISIN), bytes(12) + secrets.token_bytes(20), 1)


async def abort_with(
    env: Env, relayer: FabricAdapter, epoch: int, signers: list[LocalKeySigner]
) -> str | None:
    """Abort a fresh inbound leg (a tombstone) with a certificate of ``epoch``."""
    t = inbound(env)
    digest = claim_digest(domain(env, epoch), Claim(ClaimKind.ABORT, t.transfer_id, t.terms_hash))
    ordered = sorted(signers, key=lambda s: s.address)[:3]
    cert = SignatureSet(epoch, tuple(s.sign_digest(digest) for s in ordered))
    try:
        outcome = await until_agreed(lambda: relayer.submit(Action.ABORT, t, cert))
    except LedgerRejected as exc:
        assert (await relayer.get_leg(t.transfer_id, Leg.INBOUND)).state is LegState.NONE
        return exc.reason
    await wait_for_peers(env.net, outcome.height)
    assert (await relayer.get_leg(t.transfer_id, Leg.INBOUND)).state is LegState.ABORTED
    return None


async def test_rotation_through_the_adapter(
    env: Env, relayer: FabricAdapter, anyone: FabricAdapter
) -> None:
    old = env.signers
    new = sorted(
        (LocalKeySigner(secrets.token_bytes(32)) for _ in range(4)), key=lambda s: s.address
    )
    (only,) = await anyone.committees()
    assert (only.committee, only.active_from, only.active_until) == (env.committee, 0, None)

    activation = int(time.time()) - 1
    r = CommitteeRotation(
        epoch=1,
        next=Committee(2, 3, tuple(s.address for s in new)),
        activation=activation,
        overlap=OVERLAP,
    )
    digest = r.digest(domain(env))
    signed = sorted(old, key=lambda s: s.address)[1:]
    cert = SignatureSet(1, tuple(s.sign_digest(digest) for s in signed))
    before = time.time()
    outcome = await anyone.install_committee(r, cert)
    assert not outcome.already_applied and outcome.tx_id
    await wait_for_peers(env.net, outcome.height)

    first, second = await anyone.committees()
    assert first.committee == env.committee
    assert first.active_until is not None
    assert int(before) - 5 <= first.active_until - OVERLAP <= int(time.time()) + 5
    assert (second.committee, second.active_from, second.active_until) == (r.next, activation, None)

    # The same rotation again: already applied; another committee for epoch 2: refused.
    assert (await anyone.install_committee(r, cert)).already_applied
    other = CommitteeRotation(1, Committee(2, 1, (new[0].address,)), activation, OVERLAP)
    other_digest = other.digest(domain(env))
    with pytest.raises(LedgerRejected) as exc:
        await anyone.install_committee(
            other, SignatureSet(1, tuple(s.sign_digest(other_digest) for s in signed))
        )
    assert exc.value.reason == "EpochAlreadyInstalled"

    # Overlap: both epochs verify.
    assert time.time() < first.active_until - 10, "the steps above took most of the overlap"
    assert await abort_with(env, relayer, 1, old) is None
    assert await abort_with(env, relayer, 2, new) is None
    assert await abort_with(env, relayer, 2, old) == "NotCommitteeMember"
    # After it: only the new epoch.
    await asyncio.sleep(max(0.0, first.active_until - time.time()) + 2)
    assert await abort_with(env, relayer, 1, old) == "WrongEpoch"
    assert await abort_with(env, relayer, 2, new) is None
    windows = await anyone.committees()
    assert [w.committee.epoch for w in windows] == [2]
