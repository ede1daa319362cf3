"""Helpers shared by the Fabric tests that drive the bridge chaincode through the Gateway.

Each test module serves its own chaincode instance (the ``bridge_chaincode`` fixture in
conftest.py) and keeps its own constants; ``BridgeEnv`` ties one instance to the committee
that signs for it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.core import digests as core
from bridge.devnet.fabric import FabricNetwork
from bridge.devnet.fabric_bridge import pin_init, submit_agreed, wait_for_peers
from bridge.domain.claims import Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.committee import Committee, assemble_certificate
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.instructions import instruction_digest
from bridge.domain.legs import SignatureSet
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.ledgers.fabric.adapter import fabric_bridge_word
from bridge.ledgers.fabric.gateway import GatewayClient
from bridge.ledgers.fabric.identity import SigningIdentity

OTHER_LEDGER = LedgerId("evm-b")
"""The other side of the terms that BridgeEnv makes, unless a test names another."""


def signing_identity(net: FabricNetwork, org: str = "Org1", user: str = "User1") -> SigningIdentity:
    """``org``'s ``user`` (``Admin``: the org admin, which may administer the endpoint)."""
    o = net.org(org)
    if user == "Admin":
        return SigningIdentity.from_msp_dir(o.msp_id, o.admin_msp_dir)
    return SigningIdentity.from_files(o.msp_id, o.user_cert(user), o.user_key(user))


def gateway_client(
    net: FabricNetwork, org: str = "Org1", user: str = "User1", **kw: float
) -> GatewayClient:
    """A Gateway client to ``org``'s peer as ``org``'s ``user``, with ``user``'s TLS client
    certificate (the peers require one)."""
    o = net.org(org)
    ident = signing_identity(net, org, user)
    return GatewayClient(
        o.peer_endpoint,
        o.tls_ca_cert,
        o.peer_host,
        ident,
        net.channel,
        timeout=kw.get("timeout", 30.0),
        commit_timeout=kw.get("commit_timeout", 120.0),
        tls_client_cert=o.user_tls_cert(user),
        tls_client_key=o.user_tls_key(user),
    )


BROKER = LocalKeySigner(bytes([0x42]) * 32)
"""The brokerage instruction key of the Fabric tests' outbound transfers."""

NETWORK: dict[str, bytes] = {}
"""The session network's genesis block hash (its network word), once read: ``NETWORK["word"]``."""


def network_word() -> bytes:
    """The Fabric test network's word (read by :meth:`BridgeEnv.init` / ``initialise``)."""
    return NETWORK["word"]


def instruction(terms: TransferTerms, signer: LocalKeySigner = BROKER) -> str:
    """``signer``'s instruction for a lock of ``terms`` on this network, as Lock's hex arg."""
    return "0x" + signer.sign_digest(instruction_digest(network_word(), terms)).hex()


def instruct(terms: TransferTerms, signer: LocalKeySigner = BROKER) -> bytes:
    """``signer``'s instruction for a lock of ``terms`` on this network (adapter form)."""
    return signer.sign_digest(instruction_digest(network_word(), terms))


def lock_args(terms_json: str, signer: LocalKeySigner = BROKER) -> list[str]:
    """``Lock``'s arguments: the terms JSON (any, even one the domain would refuse) and
    ``signer``'s instruction for exactly the terms it holds."""
    obj = json.loads(terms_json)
    words = {n: bytes.fromhex(obj[n][2:]) for n in core.WORD_FIELDS}
    t = core.Terms(amount=int(obj["amount"]), deadline=int(obj["deadline"]), **words)
    digest = core.instruction_digest(network_word(), t.terms_hash)
    return [terms_json, "0x" + signer.sign_digest(digest).hex()]


def _digest(
    ledger_word: bytes, bridge_word: bytes, epoch: int, kind: ClaimKind, terms: TransferTerms
) -> bytes:
    domain = ClaimDomain(ledger_word, bridge_word, epoch, network_word())
    return claim_digest(domain, Claim(kind, terms.transfer_id, terms.terms_hash))


def claim_signatures(
    signers: Sequence[LocalKeySigner],
    ledger_word: bytes,
    bridge_word: bytes,
    epoch: int,
    kind: ClaimKind,
    terms: TransferTerms,
) -> list[bytes]:
    """Each signer's signature over the claim, in ascending signer address (no checks)."""
    digest = _digest(ledger_word, bridge_word, epoch, kind, terms)
    return [s.sign_digest(digest) for s in sorted(signers, key=lambda s: s.address)]


def certificate(
    committee: Committee,
    signers: Sequence[LocalKeySigner],
    ledger_word: bytes,
    bridge_word: bytes,
    kind: ClaimKind,
    terms: TransferTerms,
) -> SignatureSet:
    """A valid certificate of the committee's current epoch for the claim."""
    digest = _digest(ledger_word, bridge_word, committee.epoch, kind, terms)
    c = assemble_certificate(committee, digest, [s.sign_digest(digest) for s in signers])
    return SignatureSet(c.epoch, tuple(v.signature for v in c.votes))


def committee_json(committee: Committee) -> str:
    """The committee as the chaincode's ``Init`` takes it."""
    members = ["0x" + m.hex() for m in committee.members]
    return json.dumps(
        {"epoch": committee.epoch, "threshold": committee.threshold, "members": members}
    )


def governance_json(issuer: str, admin_orgs: Sequence[str] = (), quorum: int = 1) -> str:
    """The chaincode's Init governance: ``issuer`` issues; ``quorum`` of ``admin_orgs``
    (default: the issuer alone) approve relayers, instruction keys and governance changes."""
    orgs = sorted(admin_orgs or (issuer,))
    return json.dumps({"issuer": issuer, "admin_orgs": orgs, "quorum": quorum})


async def submit_and_wait(
    net: FabricNetwork, client: GatewayClient, chaincode: str, fn: str, *args: str
) -> int:
    """Submit and wait until both orgs' peers committed it (the next call reads it); return
    its block. Endorsements the gateway could not collect are asked again
    (:func:`submit_agreed`); a refusal is not."""
    result = await submit_agreed(client, chaincode, fn, list(args), is_init=fn == "Init")
    await wait_for_peers(net, result.block_number)
    return result.block_number


async def initialise(
    net: FabricNetwork, admin: GatewayClient, chaincode: str, ledger: LedgerId, committee: Committee
) -> None:
    """Pin the Init arguments (ledger, chaincode, committee, the channel's genesis hash, the
    governance: the ``admin`` client's organisation issues and alone approves admin changes)
    for the chaincode server, as its organisation would, Init the endpoint with them and
    register BROKER as its instruction key."""
    NETWORK["word"] = await admin.genesis_hash()
    args = [
        ledger.name,
        chaincode,
        committee_json(committee),
        "0x" + network_word().hex(),
        governance_json(admin.identity.msp_id),
    ]
    pin_init(net, chaincode, args)
    await submit_and_wait(net, admin, chaincode, "Init", *args)
    await submit_and_wait(
        net, admin, chaincode, "SetInstructor", "0x" + BROKER.address.hex(), "true"
    )


@dataclass
class BridgeEnv:
    """A bridge chaincode instance on the network and the committee that signs for it."""

    net: FabricNetwork
    chaincode: str
    ledger: LedgerId
    signers: list[LocalKeySigner]
    committee: Committee

    @classmethod
    def new(cls, net: FabricNetwork, chaincode: str, ledger: LedgerId) -> BridgeEnv:
        """Four fresh signers; the committee is all of them, epoch 1, threshold 3."""
        signers = [LocalKeySigner(secrets.token_bytes(32)) for _ in range(4)]
        committee = Committee(1, 3, tuple(sorted(s.address for s in signers)))
        return cls(net, chaincode, ledger, signers, committee)

    def client(self, org: str = "Org1", user: str = "User1", **kw: float) -> GatewayClient:
        return gateway_client(self.net, org, user, **kw)

    @property
    def bridge(self) -> bytes:
        """The instance's bridge word (its identity in claim digests)."""
        return fabric_bridge_word(self.net.channel, self.chaincode)

    def sigs(
        self,
        kind: ClaimKind,
        t: TransferTerms,
        *,
        ledger: bytes | None = None,
        bridge: bytes | None = None,
        epoch: int = 1,
        signers: list[LocalKeySigner] | None = None,
    ) -> list[bytes]:
        """Raw signatures (by default of the first three signers) for hand-made certificates."""
        chosen = signers if signers is not None else self.signers[:3]
        return claim_signatures(
            chosen, ledger or self.ledger.word, bridge or self.bridge, epoch, kind, t
        )

    def cert(self, kind: ClaimKind, t: TransferTerms, bridge: bytes | None = None) -> SignatureSet:
        """A valid certificate for the claim on this instance (or on ``bridge``)."""
        return certificate(
            self.committee, self.signers, self.ledger.word, bridge or self.bridge, kind, t
        )

    async def init(self, isin: str) -> BridgeEnv:
        """Org1's Admin initialises the instance, makes Org1's User1 its relayer and
        registers ``isin``, each committed on both peers; returns this env."""
        admin, relayer = self.client("Org1", "Admin"), self.client("Org1", "User1")
        try:
            await initialise(self.net, admin, self.chaincode, self.ledger, self.committee)
            for fn, args in (
                ("SetRelayer", [relayer.identity.chaincode_identity(), "true"]),
                ("RegisterSecurity", [isin]),
            ):
                await submit_and_wait(self.net, admin, self.chaincode, fn, *args)
        finally:
            await admin.close()
            await relayer.close()
        return self

    async def holder(self, isin: str, units: int = 0) -> bytes:
        """A fresh holder made eligible for ``isin`` and issued ``units`` by Org1's Admin,
        each committed on both peers; returns its word."""
        address = "0x" + secrets.token_hex(20)
        admin = self.client("Org1", "Admin")
        try:
            await submit_and_wait(
                self.net, admin, self.chaincode, "SetEligible", isin, address, "true"
            )
            if units:
                await submit_and_wait(
                    self.net, admin, self.chaincode, "Issue", isin, address, str(units)
                )
        finally:
            await admin.close()
        return bytes(12) + bytes.fromhex(address[2:])

    def outbound(
        self, security: SecurityId, sender: bytes, amount: int, other: LedgerId = OTHER_LEDGER
    ) -> TransferTerms:
        """Fresh terms moving ``amount`` from ``sender`` here to a random holder on ``other``."""
        return TransferTerms(
            nonce=secrets.token_bytes(32),
            security=security.word,
            amount=amount,
            src_ledger=self.ledger.word,
            src_bridge=self.bridge,
            dst_ledger=other.word,
            dst_bridge=secrets.token_bytes(32),
            sender=sender,
            recipient=bytes(12) + secrets.token_bytes(20),
            instructor=bytes(12) + BROKER.address,
            deadline=2_000_000_000,
        )

    def inbound(
        self, security: SecurityId, recipient: bytes, amount: int, other: LedgerId = OTHER_LEDGER
    ) -> TransferTerms:
        """Fresh terms moving ``amount`` from a random holder on ``other`` to ``recipient``."""
        return TransferTerms(
            nonce=secrets.token_bytes(32),
            security=security.word,
            amount=amount,
            src_ledger=other.word,
            src_bridge=secrets.token_bytes(32),
            dst_ledger=self.ledger.word,
            dst_bridge=self.bridge,
            sender=bytes(12) + secrets.token_bytes(20),
            recipient=recipient,
            instructor=b"\0" * 12 + b"\x1e" * 20,
            deadline=2_000_000_000,
        )
