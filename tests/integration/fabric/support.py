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

from bridge.devnet.fabric import FabricNetwork
from bridge.devnet.fabric_bridge import wait_for_peers
from bridge.domain.claims import Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.committee import Committee, assemble_certificate
from bridge.domain.ids import LedgerId, SecurityId
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


def _digest(
    ledger_word: bytes, bridge_word: bytes, epoch: int, kind: ClaimKind, terms: TransferTerms
) -> bytes:
    domain = ClaimDomain(ledger_word, bridge_word, epoch)
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


async def submit_and_wait(
    net: FabricNetwork, client: GatewayClient, chaincode: str, fn: str, *args: str
) -> int:
    """Submit and wait until both orgs' peers committed it (the next call reads it); return
    its block."""
    result = await client.submit(chaincode, fn, list(args))
    await wait_for_peers(net, result.block_number)
    return result.block_number


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
            for fn, args in (
                ("Init", [self.ledger.name, self.chaincode, committee_json(self.committee)]),
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
            deadline=2_000_000_000,
        )
