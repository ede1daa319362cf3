"""Committee claims and their domain-separated digests.

A claim is signed once per verifying ledger: the digest binds the protocol version, the
network, the ledger id, the bridge contract on that ledger and the committee epoch, so a
signature can never be replayed on another network, ledger, contract or committee.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bridge.core import digests as core
from bridge.core.digests import CLAIM_TAG, PROTOCOL_VERSION

__all__ = ["CLAIM_TAG", "PROTOCOL_VERSION", "Claim", "ClaimDomain", "ClaimKind", "claim_digest"]


class ClaimKind(enum.IntEnum):
    """What the committee asserts; values are shared with the contracts."""

    LOCKED = core.CLAIM_LOCKED
    COMMIT = core.CLAIM_COMMIT
    ABORT = core.CLAIM_ABORT


@dataclass(frozen=True, slots=True)
class ClaimDomain:
    """Where a signature is valid: one bridge contract on one ledger of one network, one
    committee epoch. ``network`` is the ledger's network word (EVM: the chain id as a word;
    Fabric: the channel's genesis block hash)."""

    ledger: bytes
    contract: bytes
    epoch: int
    network: bytes


@dataclass(frozen=True, slots=True)
class Claim:
    """An assertion about one transfer, bound to the transfer's terms hash."""

    kind: ClaimKind
    transfer_id: bytes
    terms_hash: bytes


def claim_digest(domain: ClaimDomain, claim: Claim) -> bytes:
    """Return the 32-byte digest a committee member signs for ``claim`` in ``domain``."""
    return core.claim_digest(
        domain.network,
        domain.ledger,
        domain.contract,
        domain.epoch,
        int(claim.kind),
        claim.transfer_id,
        claim.terms_hash,
    )
