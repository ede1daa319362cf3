"""The organisation-bound admin, the two-organisation rule and parking on real Fabric peers.

One bridge chaincode instance on the session network, initialised with the governance
``{"issuer": "Org1MSP", "admin_orgs": ["Org1MSP", "Org2MSP"], "quorum": 2}``: Org1's
admins issue; relayers, instruction keys and the governance need both organisations. A
renewed Org1 admin certificate (issued now by Org1's CA with ``OU=admin``) keeps
administering; a client certificate of Org1 or an admin of Org2 does not; a commit to a
recipient frozen after prepare parks the units.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.devnet.custody import issue_client_certificate
from bridge.devnet.fabric import FabricNetwork
from bridge.devnet.fabric_bridge import pin_init, submit_agreed
from bridge.devnet.processes import ManagedProcess
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import LedgerRejected
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.legs import Leg, LegState
from bridge.ledgers.fabric import codec
from bridge.ledgers.fabric.adapter import FabricAdapter
from bridge.ledgers.fabric.gateway import GatewayClient
from bridge.ledgers.fabric.identity import SigningIdentity
from tests.integration.fabric.support import (
    NETWORK,
    committee_json,
    governance_json,
    network_word,
    submit_and_wait,
)
from tests.integration.fabric.support import BridgeEnv as Env

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.governance]

CHAINCODE = "kstbgov"  # its own instance on the shared session network
LEDGER = LedgerId("fabric-gov")
ISIN = "KR7005930003"


def renewed_admin(net: FabricNetwork, org: str) -> GatewayClient:
    """A client signing with a fresh admin certificate of ``org`` (a renewal): same
    organisation and role as cryptogen's Admin, another certificate and key."""
    o = net.org(org)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = issue_client_certificate(
        o, key.public_key(), f"Admin{secrets.token_hex(3)}", role="admin"
    )
    return GatewayClient(
        o.peer_endpoint,
        o.tls_ca_cert,
        o.peer_host,
        SigningIdentity(o.msp_id, pem, key),
        net.channel,
        tls_client_cert=o.user_tls_cert("Admin"),
        tls_client_key=o.user_tls_key("Admin"),
    )


@pytest.fixture(scope="module")
async def env(fabric_network: FabricNetwork, bridge_chaincode: ManagedProcess) -> Env:
    e = Env.new(fabric_network, CHAINCODE, LEDGER)
    admin1, admin2 = e.client("Org1", "Admin"), e.client("Org2", "Admin")
    relayer = e.client("Org1", "User1")
    try:
        NETWORK["word"] = await admin1.genesis_hash()
        args = [
            LEDGER.name,
            CHAINCODE,
            committee_json(e.committee),
            "0x" + network_word().hex(),
            governance_json("Org1MSP", ("Org1MSP", "Org2MSP"), 2),
        ]
        pin_init(fabric_network, CHAINCODE, args)
        await submit_and_wait(fabric_network, admin1, CHAINCODE, "Init", *args)
        await submit_and_wait(fabric_network, admin1, CHAINCODE, "RegisterSecurity", ISIN)
        for admin in (admin1, admin2):
            await submit_and_wait(
                fabric_network,
                admin,
                CHAINCODE,
                "SetRelayer",
                relayer.identity.chaincode_identity(),
                "true",
            )
    finally:
        for c in (admin1, admin2, relayer):
            await c.close()
    return e


@pytest.fixture
async def clients(env: Env) -> AsyncIterator[dict[str, GatewayClient]]:
    made = {
        "admin1": env.client("Org1", "Admin"),
        "admin2": env.client("Org2", "Admin"),
        "renewed1": renewed_admin(env.net, "Org1"),
        "client1": env.client("Org1", "User1"),  # also the relayer
    }
    yield made
    for c in made.values():
        await c.close()


async def submit(env: Env, client: GatewayClient, fn: str, *args: str) -> None:
    """Submit and wait until both organisations' peers committed it."""
    await submit_and_wait(env.net, client, CHAINCODE, fn, *args)


async def refused(client: GatewayClient, name: str, fn: str, *args: str) -> None:
    with pytest.raises(LedgerRejected) as exc:
        await submit_agreed(client, CHAINCODE, fn, list(args))
    assert exc.value.reason == name, str(exc.value)


async def query(client: GatewayClient, fn: str, *args: str) -> dict[str, object]:
    out: dict[str, object] = json.loads(await client.evaluate(CHAINCODE, fn, list(args)))
    return out


def address() -> str:
    return "0x" + secrets.token_hex(20)


async def test_a_renewed_admin_certificate_of_the_issuer_keeps_working(
    env: Env, clients: dict[str, GatewayClient]
) -> None:
    renewed = clients["renewed1"]
    me = await query(renewed, "WhoAmI")
    cryptogen = await query(clients["admin1"], "WhoAmI")
    assert str(me["identity"]).startswith("Org1MSP:") and me != cryptogen  # another cert
    holder = address()
    await submit(env, renewed, "SetEligible", ISIN, holder, "true")
    await submit(env, renewed, "Issue", ISIN, holder, "5")
    status = await query(renewed, "HolderStatus", ISIN, holder)
    assert (status["balance"], status["eligible"]) == ("5", True)


async def test_a_client_of_the_issuer_or_another_org_admin_is_not_admin(
    env: Env, clients: dict[str, GatewayClient]
) -> None:
    holder = address()
    for who in ("client1", "admin2"):
        await refused(clients[who], "NotAdmin", "SetEligible", ISIN, holder, "true")
        await refused(clients[who], "NotAdmin", "Issue", ISIN, holder, "1")
    status = await query(clients["admin1"], "HolderStatus", ISIN, holder)
    assert (status["balance"], status["eligible"]) == ("0", False)


async def test_one_org_alone_cannot_set_a_relayer(
    env: Env, clients: dict[str, GatewayClient]
) -> None:
    candidate = SigningIdentity.from_files(
        env.net.org("Org2").msp_id,
        env.net.org("Org2").user_cert("User1"),
        env.net.org("Org2").user_key("User1"),
    ).chaincode_identity()
    admin1, renewed1, admin2 = clients["admin1"], clients["renewed1"], clients["admin2"]
    await submit(env, admin1, "SetRelayer", candidate, "true")
    assert (await query(admin1, "IsRelayer", candidate))["relayer"] is False
    # Org1 again, with its renewed certificate: the same organisation does not count twice.
    await refused(renewed1, "AlreadyApproved", "SetRelayer", candidate, "true")
    # A client certificate of Org2 cannot approve for Org2.
    org2_client = env.client("Org2", "User1")
    try:
        await refused(org2_client, "NotAdmin", "SetRelayer", candidate, "true")
    finally:
        await org2_client.close()
    # Different arguments are a different proposal: Org2 approving "false" applies nothing.
    await submit(env, admin2, "SetRelayer", candidate, "false")
    assert (await query(admin1, "IsRelayer", candidate))["relayer"] is False
    await submit(env, admin2, "SetRelayer", candidate, "true")
    assert (await query(admin1, "IsRelayer", candidate))["relayer"] is True
    # Applied: the other half-approved proposal ("false") is stale now.
    info = await query(admin1, "Info")
    assert info["governance"] == {
        "issuer": "Org1MSP",
        "admin_orgs": ["Org1MSP", "Org2MSP"],
        "quorum": 2,
        "seq": 2,
    }


async def test_a_recipient_frozen_after_prepare_is_parked(
    env: Env, clients: dict[str, GatewayClient]
) -> None:
    admin1, relayer = clients["admin1"], clients["client1"]
    recipient, other = address(), address()
    for who in (recipient, other):
        await submit(env, admin1, "SetEligible", ISIN, who, "true")
    t = env.inbound(SecurityId(ISIN), bytes(12) + bytes.fromhex(recipient[2:]), 9)
    terms = codec.terms_to_json(t)
    locked = codec.certificate_to_json(env.cert(ClaimKind.LOCKED, t))
    await submit(env, relayer, "Prepare", terms, locked)
    await submit(env, admin1, "SetFrozen", ISIN, recipient, "true")
    before = await query(admin1, "Supply", ISIN)
    commit = codec.certificate_to_json(env.cert(ClaimKind.COMMIT, t))
    await submit(env, relayer, "Commit", terms, commit)  # COMMIT never fails at the target
    status = await FabricAdapter(LEDGER, relayer, CHAINCODE).get_leg(t.transfer_id, Leg.INBOUND)
    assert (status.state, status.reason, status.parked) == (LegState.MINTED, 3, True)
    tid = "0x" + t.transfer_id.hex()
    assert (await query(admin1, "Parked", tid))["amount"] == "9"
    assert (await query(admin1, "HolderStatus", ISIN, recipient))["balance"] == "0"
    after = await query(admin1, "Supply", ISIN)
    assert int(str(after["total_supply"])) == int(str(before["total_supply"])) + 9
    assert after["escrowed"] == before["escrowed"]
    assert int(str(after["minted_in"])) == int(str(before["minted_in"])) + 9
    # Only the issuer releases, only to a holder who may receive, only once.
    await refused(clients["admin2"], "NotAdmin", "ReleaseParked", tid, other)
    await refused(admin1, "RecipientRefused", "ReleaseParked", tid, recipient)
    await submit(env, clients["renewed1"], "ReleaseParked", tid, other)
    assert (await query(admin1, "HolderStatus", ISIN, other))["balance"] == "9"
    assert (await query(admin1, "Parked", tid))["amount"] == "0"
    await refused(admin1, "NotParked", "ReleaseParked", tid, other)
    assert await query(admin1, "Supply", ISIN) == after
