"""Fixtures that stand up real anvil ledgers with deployed bridge contracts."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from web3 import Web3
from web3.contract import Contract

from bridge.config import LedgerConfig
from bridge.core.words import evm_network_word
from bridge.devnet.anvil import AnvilNode, DevAccount
from bridge.domain.claims import Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.committee import Committee, assemble_certificate
from bridge.domain.ids import LedgerId, SecurityId, evm_address_word, parse_evm_address
from bridge.domain.instructions import sign_instruction
from bridge.domain.legs import SignatureSet
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.keys.loader import PLAINTEXT_KEYS_ENV
from bridge.ledgers.evm import deploy
from bridge.rpc.tls import INSECURE_ENV

ISIN = "KR7005930003"
CHAIN_ID = 31337
BROKER = LocalKeySigner(bytes([0x42]) * 32)
"""The brokerage instruction key of the integration tests' transfers."""


@pytest.fixture(autouse=True)
def _devnet_development_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests reach anvil over plain http (``AnvilNode.rpc_url``) and open the
    devnet's plaintext key files, in process and from the daemons they start (which
    inherit the environment): allowed only under the development flags, which a test of
    a refusal removes again."""
    monkeypatch.setenv(INSECURE_ENV, "1")
    monkeypatch.setenv(PLAINTEXT_KEYS_ENV, "1")


@dataclass
class EvmLedger:
    """One bridge endpoint (and token) on an anvil node."""

    name: str
    node: AnvilNode
    w3: Web3
    admin: DevAccount
    relayer: DevAccount
    endpoint: Contract
    token: Contract

    def config(self, finality_depth: int = 0, rpc_url: str | None = None) -> LedgerConfig:
        """Adapter configuration for this ledger."""
        return LedgerConfig(
            id=LedgerId(self.name),
            kind="evm",
            rpc_url=rpc_url or self.node.rpc_url,
            bridge=self.endpoint.address,
            chain_id=self.node.chain_id,
            finality_depth=finality_depth,
            block_interval=0.2,
        )

    @property
    def word(self) -> bytes:
        """The endpoint as a 32-byte word."""
        return evm_address_word(self.endpoint.address)

    def holder(self, units: int = 0) -> DevAccount:
        """A new eligible holder with ``units`` issued."""
        acct = DevAccount.generate()
        deploy.set_eligible(self.w3, self.admin.private_key, self.token, acct.address, True)
        if units:
            deploy.issue(self.w3, self.admin.private_key, self.token, acct.address, units)
        return acct

    def balance(self, address: str) -> int:
        """Token balance at the latest block."""
        return int(self.token.functions.balanceOf(Web3.to_checksum_address(address)).call())


@dataclass
class TwoLedgers:
    """Two endpoints on one anvil (distinct ledger ids) and a 3-of-4 committee."""

    node: AnvilNode
    a: EvmLedger
    b: EvmLedger
    signers: Sequence[LocalKeySigner]
    committee: Committee

    def terms(
        self, sender: DevAccount, recipient: DevAccount, amount: int, ttl: int = 600
    ) -> TransferTerms:
        """Fresh terms A -> B."""
        return TransferTerms(
            nonce=secrets.token_bytes(32),
            security=SecurityId(ISIN).word,
            amount=amount,
            src_ledger=LedgerId(self.a.name).word,
            src_bridge=self.a.word,
            dst_ledger=LedgerId(self.b.name).word,
            dst_bridge=self.b.word,
            sender=evm_address_word(sender.address),
            recipient=evm_address_word(recipient.address),
            instructor=bytes(12) + BROKER.address,
            deadline=int(time.time()) + ttl,
        )

    def instruction(self, terms: TransferTerms, signer: LocalKeySigner | None = None) -> bytes:
        """The brokerage's signature instructing the lock of ``terms`` on the source ledger."""
        return instruct(terms, signer, self.node.chain_id)

    def cert(self, kind: ClaimKind, terms: TransferTerms, on: EvmLedger) -> SignatureSet:
        """A valid t-of-n certificate for ``kind`` verified by ``on``."""
        domain = ClaimDomain(
            LedgerId(on.name).word,
            on.word,
            self.committee.epoch,
            evm_network_word(on.node.chain_id),
        )
        digest = claim_digest(domain, Claim(kind, terms.transfer_id, terms.terms_hash))
        c = assemble_certificate(
            self.committee, digest, [s.sign_digest(digest) for s in self.signers]
        )
        return SignatureSet(c.epoch, tuple(v.signature for v in c.votes))


def _endpoint(node: AnvilNode, name: str, committee: Committee) -> EvmLedger:
    w3 = deploy.connect(node.rpc_url)
    admin, relayer = DevAccount.generate(), DevAccount.generate()
    node.fund(admin.address)
    node.fund(relayer.address)
    endpoint = deploy.deploy_endpoint(w3, admin.private_key, LedgerId(name), committee)
    deploy.set_relayer(w3, admin.private_key, endpoint, relayer.address, True)
    deploy.set_instructor(
        w3, admin.private_key, endpoint, Web3.to_checksum_address(BROKER.address), True
    )
    token = deploy.deploy_security_token(w3, admin.private_key, SecurityId(ISIN))
    deploy.register_security(w3, admin.private_key, endpoint, token)
    return EvmLedger(name, node, w3, admin, relayer, endpoint, token)


@pytest.fixture(scope="module")
def two_ledgers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoLedgers]:
    """A fresh anvil (one block per transaction) with endpoints A and B."""
    workdir: Path = tmp_path_factory.mktemp("anvil")
    node = AnvilNode("adapter", CHAIN_ID, 0, workdir).start()
    signers = sorted(
        (LocalKeySigner(secrets.token_bytes(32)) for _ in range(4)), key=lambda s: s.address
    )
    committee = Committee(1, 3, tuple(s.address for s in signers))
    try:
        yield TwoLedgers(
            node, _endpoint(node, "ledger-a", committee), _endpoint(node, "ledger-b", committee),
            signers, committee,
        )  # fmt: skip
    finally:
        node.stop()


def instruct(
    terms: TransferTerms, signer: LocalKeySigner | None = None, chain_id: int = CHAIN_ID
) -> bytes:
    """The brokerage's instruction for a lock of ``terms`` on the anvil chain ``chain_id``."""
    return sign_instruction(signer or BROKER, evm_network_word(chain_id), terms)


def address_word(text: str) -> bytes:
    """Shorthand for tests."""
    return b"\0" * 12 + parse_evm_address(text)
