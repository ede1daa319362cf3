"""Transfer ids, terms hashes and claim digests: what ledgers store and committees sign.

``transfer_id = keccak256(abi.encode(TRANSFER_TAG, src_ledger, src_bridge, nonce))``;
``terms_hash`` binds every economic term and the transfer id; a claim digest binds the
protocol version, the verifying ledger, its bridge contract and the committee epoch to one
claim about one transfer's terms hash, so a signature cannot be replayed anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .hashing import encode, keccak256, tag, uint, word32

PROTOCOL_VERSION = 1
TRANSFER_TAG = tag("KSTB/transfer-id/v1")
TERMS_TAG = tag("KSTB/terms/v1")
CLAIM_TAG = tag("KSTB/claim/v1")

CLAIM_LOCKED = 1
CLAIM_COMMIT = 2
CLAIM_ABORT = 3

UINT64_LIMIT = 2**64
UINT256_LIMIT = 2**256


class TermsFields(Protocol):
    """Anything with the fields of ``BridgeTypes.Terms`` (the core's and the domain's terms)."""

    @property
    def nonce(self) -> bytes: ...
    @property
    def security(self) -> bytes: ...
    @property
    def amount(self) -> int: ...
    @property
    def src_ledger(self) -> bytes: ...
    @property
    def src_bridge(self) -> bytes: ...
    @property
    def dst_ledger(self) -> bytes: ...
    @property
    def dst_bridge(self) -> bytes: ...
    @property
    def sender(self) -> bytes: ...
    @property
    def recipient(self) -> bytes: ...
    @property
    def deadline(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Terms:
    """``BridgeTypes.Terms``: the words are 32 bytes, ``amount`` < 2**256, ``deadline`` < 2**64.

    Construction checks only the encoding bounds (what ``abi.encode`` could represent);
    the semantic rules (nonzero amount, distinct ledgers) belong to the layers above.
    """

    nonce: bytes
    security: bytes
    amount: int
    src_ledger: bytes
    src_bridge: bytes
    dst_ledger: bytes
    dst_bridge: bytes
    sender: bytes
    recipient: bytes
    deadline: int

    def __post_init__(self) -> None:
        for name in WORD_FIELDS:
            word32(getattr(self, name))
        uint(self.amount)
        uint(self.deadline, 64)

    @property
    def transfer_id(self) -> bytes:
        """``BridgeTypes.transferId``."""
        return transfer_id(self.src_ledger, self.src_bridge, self.nonce)

    @property
    def terms_hash(self) -> bytes:
        """``BridgeTypes.termsHash(t, transferId(t))``."""
        return terms_hash(self)


WORD_FIELDS = (
    "nonce",
    "security",
    "src_ledger",
    "src_bridge",
    "dst_ledger",
    "dst_bridge",
    "sender",
    "recipient",
)
"""The ``bytes32`` fields of :class:`Terms`, in declaration order."""


def transfer_id(src_ledger: bytes, src_bridge: bytes, nonce: bytes) -> bytes:
    """``keccak256(abi.encode(TRANSFER_TAG, srcLedgerId, srcBridge, nonce))``."""
    return keccak256(encode(TRANSFER_TAG, word32(src_ledger), word32(src_bridge), word32(nonce)))


def terms_hash(t: TermsFields) -> bytes:
    """``keccak256(abi.encode(TERMS_TAG, id, security, amount, src, srcBridge, dst,
    dstBridge, sender, recipient, uint64 deadline))``."""
    return keccak256(
        encode(
            TERMS_TAG,
            transfer_id(t.src_ledger, t.src_bridge, t.nonce),
            word32(t.security),
            uint(t.amount),
            word32(t.src_ledger),
            word32(t.src_bridge),
            word32(t.dst_ledger),
            word32(t.dst_bridge),
            word32(t.sender),
            word32(t.recipient),
            uint(t.deadline, 64),
        )
    )


def claim_digest(
    ledger: bytes, bridge: bytes, epoch: int, kind: int, tid: bytes, thash: bytes
) -> bytes:
    """``BridgeTypes.claimDigest``: what a committee member signs for one endpoint."""
    return keccak256(
        encode(
            CLAIM_TAG,
            uint(PROTOCOL_VERSION, 16),
            word32(ledger),
            word32(bridge),
            uint(epoch, 64),
            uint(kind, 8),
            word32(tid),
            word32(thash),
        )
    )
