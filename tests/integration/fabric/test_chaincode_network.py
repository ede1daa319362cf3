"""The KSTB bridge chaincode (contracts/fabric/kstb_chaincode) on the native Fabric network.

The chaincode runs as a CCaaS process (``python -m kstb_chaincode``); every transaction is
endorsed by both orgs' peers (policy AND(Org1, Org2)) through the ``peer`` CLI. Org1's Admin
initialises and administers, Org1's User1 is the relayer, Org2's User1 is a stranger. The
committee keys are generated at run time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.core.digests import WORD_FIELDS
from bridge.devnet.fabric import FabricError, FabricNetwork
from bridge.devnet.fabric_bridge import pin_init, start_bridge_chaincode
from bridge.devnet.processes import REPO_ROOT, ManagedProcess
from bridge.domain.claims import Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.hashing import keccak256
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.instructions import instruction_digest
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from tests.integration.fabric.support import gateway_client

pytestmark = [pytest.mark.integration, pytest.mark.fabric]

CHAINCODE = "kstbnet"  # its own instance: test_fabric_adapter.py deploys "kstb"
LEDGER = "fabric-test"
ISIN = SecurityId("KR7005930003")
CHAINCODE_DIR = REPO_ROOT / "contracts" / "fabric"


@dataclass
class Bridge:
    net: FabricNetwork
    package_id: str
    process: ManagedProcess
    signers: list[LocalKeySigner]

    def invoke(
        self, fn: str, *args: str, org: str = "Org1", user: str = "User1", init: bool = False
    ) -> str:
        """Submit, endorsed by BOTH orgs' peers, and wait for the commit (``init``: as the
        definition's one ``--isInit`` invocation)."""
        ctor = json.dumps({"Args": [fn, *args]})
        return self.net.peer_cli(
            org,
            [
                "chaincode",
                "invoke",
                *self.net.orderer_args(),
                "-C",
                self.net.channel,
                "-n",
                CHAINCODE,
                *self.net.endorsing_peer_args(),
                "-c",
                ctor,
                "--waitForEvent",
                *(["--isInit"] if init else []),
            ],
            user=user,
        )

    def query(self, fn: str, *args: str, org: str = "Org1", user: str = "User1") -> Any:
        """Evaluate on ``org``'s peer; the JSON result."""
        ctor = json.dumps({"Args": [fn, *args]})
        out = self.net.peer_cli(
            org,
            ["chaincode", "query", "-C", self.net.channel, "-n", CHAINCODE, "-c", ctor],
            user=user,
        )
        return json.loads(out.strip())

    def newest_chaincode_event(self, workdir: Path) -> tuple[str, str, dict[str, Any]]:
        """(chaincode id, event name, payload) of the first transaction of the newest block."""
        from bridge.ledgers.fabric.pb.common import common_pb2
        from bridge.ledgers.fabric.pb.peer import (
            chaincode_event_pb2,
            proposal_pb2,
            proposal_response_pb2,
            transaction_pb2,
        )

        path = workdir / f"newest-{secrets.token_hex(4)}.block"
        self.net.peer_cli(
            "Org1",
            [
                "channel",
                "fetch",
                "newest",
                str(path),
                "-c",
                self.net.channel,
                *self.net.orderer_args(),
            ],
        )
        block = common_pb2.Block.FromString(path.read_bytes())
        env = common_pb2.Envelope.FromString(block.data.data[0])
        payload = common_pb2.Payload.FromString(env.payload)
        tx = transaction_pb2.Transaction.FromString(payload.data)
        cap = transaction_pb2.ChaincodeActionPayload.FromString(tx.actions[0].payload)
        prp = proposal_response_pb2.ProposalResponsePayload.FromString(
            cap.action.proposal_response_payload
        )
        action = proposal_pb2.ChaincodeAction.FromString(prp.extension)
        event = chaincode_event_pb2.ChaincodeEvent.FromString(action.events)
        return event.chaincode_id, event.event_name, json.loads(event.payload)


@pytest.fixture(scope="module")
def bridge(fabric_network: FabricNetwork) -> Iterator[Bridge]:
    proc = start_bridge_chaincode(fabric_network, CHAINCODE)  # --init-required, no pin yet
    package_id = (proc.env or {})["CORE_CHAINCODE_ID"]
    try:
        signers = sorted(
            (LocalKeySigner(secrets.token_bytes(32)) for _ in range(4)), key=lambda s: s.address
        )
        yield Bridge(fabric_network, package_id, proc, signers)
    finally:
        proc.stop()


BROKER = LocalKeySigner(bytes([0x42]) * 32)


async def _genesis_hash(net: FabricNetwork) -> bytes:
    client = gateway_client(net)
    try:
        return await client.genesis_hash()
    finally:
        await client.close()


def holder() -> str:
    return "0x" + secrets.token_hex(20)


def terms_json(t: TransferTerms) -> str:
    obj: dict[str, Any] = {name: "0x" + getattr(t, name).hex() for name in WORD_FIELDS}
    obj.update(amount=str(t.amount), deadline=t.deadline)
    return json.dumps(obj)


def test_bridge_chaincode_on_the_network(bridge: Bridge, tmp_path: Path) -> None:
    net = bridge.net
    committee = {
        "epoch": 1,
        "threshold": 3,
        "members": ["0x" + s.address.hex() for s in bridge.signers],
    }
    genesis = asyncio.run(_genesis_hash(net))
    governance = {"issuer": "Org1MSP", "admin_orgs": ["Org1MSP"], "quorum": 1}
    args = [LEDGER, CHAINCODE, json.dumps(committee), "0x" + genesis.hex(), json.dumps(governance)]
    # Init before the organisations pinned its parameters, or with others: refused.
    with pytest.raises(FabricError, match="WrongInitParameters"):
        bridge.invoke("Init", *args, user="Admin", init=True)
    pin_init(net, CHAINCODE, args)
    rogue = {**committee, "members": committee["members"][:1], "threshold": 1}
    with pytest.raises(FabricError, match="WrongInitParameters"):
        bridge.invoke("Init", *args[:2], json.dumps(rogue), *args[3:], user="Admin", init=True)
    # Another organisation's admin with the (public) pinned arguments: not a pinned org.
    with pytest.raises(FabricError, match=r"NotAdmin: .* is no admin of a pinned organisation"):
        bridge.invoke("Init", *args, org="Org2", user="Admin", init=True)
    bridge.invoke("Init", *args, user="Admin", init=True)
    ledger_word = LedgerId(LEDGER).word
    bridge_word = keccak256(f"fabric:{net.channel}:{CHAINCODE}".encode())
    info = bridge.query("Info", org="Org2")
    assert info["ledger_word"] == "0x" + ledger_word.hex()
    assert info["bridge_word"] == "0x" + bridge_word.hex()
    assert bridge.query("Committee") == committee
    assert info["network_word"] == "0x" + genesis.hex()
    with pytest.raises(FabricError, match="AlreadyInitialized"):
        bridge.invoke("Init", *args, user="Admin")

    # identities: "<mspid>:<sha256 of the certificate PEM>"
    org1, org2 = net.org("Org1"), net.org("Org2")
    relayer = bridge.query("WhoAmI", user="User1")["identity"]
    pem = org1.user_cert("User1").read_bytes()
    assert relayer == f"Org1MSP:{hashlib.sha256(pem).hexdigest()}"
    admin = bridge.query("WhoAmI", user="Admin")["identity"]
    assert admin.startswith("Org1MSP:")
    assert info["governance"] == {**governance, "seq": 0}
    stranger = bridge.query("WhoAmI", org="Org2", user="User1")["identity"]
    assert stranger.startswith("Org2MSP:")
    assert org2.user_cert("User1").is_file()

    with pytest.raises(FabricError, match="NotAdmin"):
        bridge.invoke("SetRelayer", relayer, "true", user="User1")
    bridge.invoke("SetRelayer", relayer, "true", user="Admin")
    bridge.invoke("SetInstructor", "0x" + BROKER.address.hex(), "true", user="Admin")
    alice, bob = holder(), holder()
    bridge.invoke("RegisterSecurity", ISIN.isin, user="Admin")
    bridge.invoke("SetEligible", ISIN.isin, alice, "true", user="Admin")
    bridge.invoke("SetEligible", ISIN.isin, bob, "true", user="Admin")
    bridge.invoke("Issue", ISIN.isin, alice, "100", user="Admin")
    assert bridge.query("HolderStatus", ISIN.isin, alice, org="Org2")["balance"] == "100"

    def outbound_terms(amount: int) -> TransferTerms:
        return TransferTerms(
            nonce=secrets.token_bytes(32),
            security=ISIN.word,
            amount=amount,
            src_ledger=ledger_word,
            src_bridge=bridge_word,
            dst_ledger=LedgerId("evm-b").word,
            dst_bridge=bytes(12) + secrets.token_bytes(20),
            sender=bytes(12) + bytes.fromhex(alice[2:]),
            recipient=bytes(12) + secrets.token_bytes(20),
            instructor=bytes(12) + BROKER.address,
            deadline=2_000_000_000,
        )

    def ins(t: TransferTerms, signer: LocalKeySigner = BROKER) -> str:
        return "0x" + signer.sign_digest(instruction_digest(genesis, t)).hex()

    # a stranger's Lock is refused by the chaincode on both peers; nothing moves
    refused = outbound_terms(5)
    with pytest.raises(FabricError, match="NotRelayer"):
        bridge.invoke("Lock", terms_json(refused), ins(refused), org="Org2", user="User1")
    tid = "0x" + refused.transfer_id.hex()
    assert bridge.query("GetLeg", tid, "outbound")["state"] == 0

    # the relayer's Lock escrows
    t = outbound_terms(10)
    # without the brokerage's instruction, or with a forged one: refused, nothing moves
    forger = LocalKeySigner(secrets.token_bytes(32))
    for instruction, error in (
        ("0x", "MissingInstruction"),
        (ins(t, forger), "InvalidInstruction"),
    ):
        with pytest.raises(FabricError, match=error):
            bridge.invoke("Lock", terms_json(t), instruction, user="User1")
    assert bridge.query("HolderStatus", ISIN.isin, alice, org="Org2")["balance"] == "100"
    bridge.invoke("Lock", terms_json(t), ins(t), user="User1")
    tid = "0x" + t.transfer_id.hex()
    for org in ("Org1", "Org2"):
        out = bridge.query("GetLeg", tid, "outbound", org=org)
        assert out == {
            "state": 1,
            "terms_hash": "0x" + t.terms_hash.hex(),
            "amount": "10",
            "security": "0x" + ISIN.word.hex(),
            "reason": 0,
        }
        assert bridge.query("HolderStatus", ISIN.isin, alice, org=org)["balance"] == "90"
        assert bridge.query("Supply", ISIN.isin, org=org) == {
            "total_supply": "100",
            "escrowed": "10",
            "prepared": "0",
            "burned_out": "0",
            "minted_in": "0",
        }
    # the Lock's chaincode event is in the block (the shim alone would have dropped it)
    cc_id, name, payload = bridge.newest_chaincode_event(tmp_path)
    assert (cc_id, name) == (CHAINCODE, "LegStateChanged")
    assert payload["transfer_id"] == tid
    assert (payload["leg"], payload["state"]) == (0, 1)
    assert payload["terms"] == json.loads(terms_json(t))

    # an inbound leg prepared with a committee certificate verified in the chaincode
    inbound = TransferTerms(
        nonce=secrets.token_bytes(32),
        security=ISIN.word,
        amount=3,
        src_ledger=LedgerId("evm-b").word,
        src_bridge=bytes(12) + secrets.token_bytes(20),
        dst_ledger=ledger_word,
        dst_bridge=bridge_word,
        sender=bytes(12) + secrets.token_bytes(20),
        recipient=bytes(12) + bytes.fromhex(bob[2:]),
        instructor=b"\0" * 12 + b"\x1e" * 20,
        deadline=2_000_000_000,
    )
    digest = claim_digest(
        ClaimDomain(ledger_word, bridge_word, 1, genesis),
        Claim(ClaimKind.LOCKED, inbound.transfer_id, inbound.terms_hash),
    )
    sigs = [s.sign_digest(digest) for s in bridge.signers[1:]]
    cert = {"epoch": 1, "signatures": ["0x" + s.hex() for s in sigs]}
    with pytest.raises(FabricError, match="TooFewSignatures"):
        bridge.invoke("Prepare", terms_json(inbound), json.dumps({**cert, "signatures": []}))
    bridge.invoke("Prepare", terms_json(inbound), json.dumps(cert), user="User1")
    leg = bridge.query("GetLeg", "0x" + inbound.transfer_id.hex(), "inbound", org="Org2")
    assert (leg["state"], leg["reason"]) == (1, 0)
    assert bridge.query("Supply", ISIN.isin)["prepared"] == "3"


def test_concurrent_proposals_are_served(bridge: Bridge) -> None:
    """Many proposals in flight on one peer connection (the stock shim handler writes to
    the stream from concurrent tasks and fails with GRPC_CALL_ERROR_TOO_MANY_OPERATIONS)."""
    if bridge.query("Committee")["epoch"] != 1:  # pragma: no cover - needs the first test
        pytest.skip("chaincode not initialised")
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(
            pool.map(
                lambda i: bridge.query("HolderStatus", ISIN.isin, holder(), org=f"Org{i % 2 + 1}"),
                range(24),
            )
        )
    assert all(r["registered"] and r["balance"] == "0" for r in results)
