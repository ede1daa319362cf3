"""The per-kind harness the conformance suite is generic over (ADR 0014).

A harness gives the suite one bridge endpoint of its kind, started for the session, with a
3-of-4 committee and the suite's brokerage key registered, and the kind's own way to make
holders and to wait until a step is visible to every reader. Everything else the suite does
through :class:`bridge.ledgers.adapter.LedgerAdapter` only.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bridge.domain.claims import Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.committee import Committee, assemble_certificate
from bridge.domain.flow import FlowLimit
from bridge.domain.ids import LedgerId, SecurityId
from bridge.domain.instructions import instruction_digest
from bridge.domain.legs import SignatureSet, TxOutcome
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.ledgers.adapter import LedgerAdapter

ISIN = "KR7005930003"
SECURITY = SecurityId(ISIN)
OTHER = LedgerId("conformance-other")
BROKER = LocalKeySigner(bytes([0x42]) * 32)
"""The brokerage instruction key every harness registers on its endpoint."""


def new_committee() -> tuple[list[LocalKeySigner], Committee]:
    """Four fresh signers, threshold 3, epoch 1."""
    signers = sorted(
        (LocalKeySigner(secrets.token_bytes(32)) for _ in range(4)), key=lambda s: s.address
    )
    return signers, Committee(1, 3, tuple(s.address for s in signers))


class KindHarness(Protocol):
    """One running endpoint of a ledger kind."""

    kind: str
    ledger: LedgerId
    bridge_word: bytes
    network_word: bytes
    signers: Sequence[LocalKeySigner]
    committee: Committee
    step_seconds: float
    """Seconds one step may take from its send until :meth:`settled` returns, with room for
    a loaded machine: the suite sizes the time windows it waits out (a rotation's activation
    delay and overlap) from it, so a kind with instant steps waits seconds, not minutes."""

    def relayer(self) -> LedgerAdapter:
        """A fresh writable adapter with the relayer identity (the caller closes it)."""
        ...

    def reader(self) -> LedgerAdapter:
        """A fresh adapter without a submitting identity (read-only)."""
        ...

    async def holder(self, units: int = 0, eligible: bool = True) -> bytes:
        """A fresh holder's word, eligible for :data:`ISIN` (unless not) and issued ``units``."""
        ...

    async def settled(self, outcome: TxOutcome) -> None:
        """Return once ``outcome`` is visible to every node the harness's adapters use."""
        ...

    async def ledger_time(self) -> int:
        """The ledger's latest time (the latest block's on EVM, which a PoA chain may stamp
        ahead of this machine's clock; this machine's where the submitter sets it)."""
        ...

    async def reach_time(self, when: int) -> None:
        """Return once a step sent now is checked against a ledger time (block time, or the
        transaction timestamp on Fabric) of at least ``when`` unix seconds."""
        ...

    # -- the endpoint admin's and issuer's acts (issue-10 rules), each final on return
    async def set_eligible(self, holder: bytes, eligible: bool) -> None:
        """Add ``holder`` to (or remove it from) :data:`ISIN`'s eligible holders."""
        ...

    async def set_depository(self, key: bytes) -> None:
        """Install the depository's 20-byte order key (once per endpoint)."""
        ...

    async def set_flow_limit(self, counterpart: LedgerId, limit: FlowLimit) -> None:
        """Set :data:`ISIN`'s lane limit to ``counterpart``."""
        ...

    async def parked(self, transfer_id: bytes) -> int:
        """Units parked for ``transfer_id`` and not released."""
        ...


@dataclass
class Terms:
    """Terms and certificates for a harness (kind-independent: words and digests only)."""

    h: KindHarness

    def outbound(self, sender: bytes, amount: int) -> TransferTerms:
        """``amount`` from ``sender`` here to a random holder on another ledger."""
        return TransferTerms(
            nonce=secrets.token_bytes(32),
            security=SECURITY.word,
            amount=amount,
            src_ledger=self.h.ledger.word,
            src_bridge=self.h.bridge_word,
            dst_ledger=OTHER.word,
            dst_bridge=secrets.token_bytes(32),
            sender=sender,
            recipient=bytes(12) + secrets.token_bytes(20),
            instructor=bytes(12) + BROKER.address,
            deadline=2_000_000_000,
        )

    def inbound(self, recipient: bytes, amount: int) -> TransferTerms:
        """``amount`` from a random holder on another ledger to ``recipient`` here."""
        return TransferTerms(
            nonce=secrets.token_bytes(32),
            security=SECURITY.word,
            amount=amount,
            src_ledger=OTHER.word,
            src_bridge=secrets.token_bytes(32),
            dst_ledger=self.h.ledger.word,
            dst_bridge=self.h.bridge_word,
            sender=bytes(12) + secrets.token_bytes(20),
            recipient=recipient,
            instructor=bytes(12) + BROKER.address,
            deadline=2_000_000_000,
        )

    def instruction(self, terms: TransferTerms) -> bytes:
        """The brokerage's instruction for a lock of ``terms`` on this ledger."""
        return BROKER.sign_digest(instruction_digest(self.h.network_word, terms))

    def cert(
        self,
        kind: ClaimKind,
        terms: TransferTerms,
        *,
        ledger: bytes | None = None,
        bridge: bytes | None = None,
        signers: Sequence[LocalKeySigner] | None = None,
    ) -> SignatureSet:
        """A certificate of ``kind`` for this endpoint (or another domain, to forge)."""
        domain = ClaimDomain(
            ledger or self.h.ledger.word,
            bridge or self.h.bridge_word,
            self.h.committee.epoch,
            self.h.network_word,
        )
        digest = claim_digest(domain, Claim(kind, terms.transfer_id, terms.terms_hash))
        chosen = list(signers if signers is not None else self.h.signers)
        sigs = [s.sign_digest(digest) for s in sorted(chosen, key=lambda s: s.address)]
        if signers is not None:
            return SignatureSet(self.h.committee.epoch, tuple(sigs))
        c = assemble_certificate(self.h.committee, digest, sigs)
        return SignatureSet(c.epoch, tuple(v.signature for v in c.votes))
