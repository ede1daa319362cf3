"""Transfer ids, terms hashes, claim and instruction digests (protocol version 2).

- ``transfer_id = keccak256(abi.encode(TRANSFER_TAG, src_ledger, src_bridge, sender,
  instructor, nonce))``: bound to the sender and the instructing brokerage, so nobody else
  can occupy (squat) a transfer id that a brokerage will use for its client;
- ``terms_hash`` binds every term, the instructor included, and the transfer id;
- a claim digest binds the protocol version, the network (EVM chain id, Fabric channel
  genesis hash), the verifying ledger, its bridge contract and the committee epoch to one
  claim about one terms hash, so a signature cannot be replayed anywhere else, not even on
  a staging deployment that reused names and keys;
- an instruction digest binds the protocol version and the source ledger's network to a
  terms hash: the brokerage's instruction key signs it to authorise the lock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .hashing import encode, keccak256, tag, uint, word32

PROTOCOL_VERSION = 2
TRANSFER_TAG = tag("KSTB/transfer-id/v2")
TERMS_TAG = tag("KSTB/terms/v2")
CLAIM_TAG = tag("KSTB/claim/v2")
INSTRUCTION_TAG = tag("KSTB/instruction/v2")
ROTATION_TAG = tag("KSTB/committee-rotation/v2")

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
    def instructor(self) -> bytes: ...
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
    instructor: bytes
    deadline: int

    def __post_init__(self) -> None:
        for name in WORD_FIELDS:
            word32(getattr(self, name))
        uint(self.amount)
        uint(self.deadline, 64)

    @property
    def transfer_id(self) -> bytes:
        """``BridgeTypes.transferId``."""
        return transfer_id(
            self.src_ledger, self.src_bridge, self.sender, self.instructor, self.nonce
        )

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
    "instructor",
)
"""The ``bytes32`` fields of :class:`Terms`, in declaration order."""


def transfer_id(
    src_ledger: bytes, src_bridge: bytes, sender: bytes, instructor: bytes, nonce: bytes
) -> bytes:
    """``keccak256(abi.encode(TRANSFER_TAG, srcLedgerId, srcBridge, sender, instructor,
    nonce))``."""
    return keccak256(
        encode(
            TRANSFER_TAG,
            word32(src_ledger),
            word32(src_bridge),
            word32(sender),
            word32(instructor),
            word32(nonce),
        )
    )


def terms_hash(t: TermsFields) -> bytes:
    """``keccak256(abi.encode(TERMS_TAG, id, security, amount, src, srcBridge, dst,
    dstBridge, sender, recipient, instructor, uint64 deadline))``."""
    return keccak256(
        encode(
            TERMS_TAG,
            transfer_id(t.src_ledger, t.src_bridge, t.sender, t.instructor, t.nonce),
            word32(t.security),
            uint(t.amount),
            word32(t.src_ledger),
            word32(t.src_bridge),
            word32(t.dst_ledger),
            word32(t.dst_bridge),
            word32(t.sender),
            word32(t.recipient),
            word32(t.instructor),
            uint(t.deadline, 64),
        )
    )


def claim_digest(
    network: bytes, ledger: bytes, bridge: bytes, epoch: int, kind: int, tid: bytes, thash: bytes
) -> bytes:
    """``BridgeTypes.claimDigest``: what a committee member signs for one endpoint.

    ``keccak256(abi.encode(CLAIM_TAG, uint16 2, network, ledger, bridge, uint64 epoch,
    uint8 kind, transferId, termsHash))``.
    """
    return keccak256(
        encode(
            CLAIM_TAG,
            uint(PROTOCOL_VERSION, 16),
            word32(network),
            word32(ledger),
            word32(bridge),
            uint(epoch, 64),
            uint(kind, 8),
            word32(tid),
            word32(thash),
        )
    )


def instruction_digest(network: bytes, thash: bytes) -> bytes:
    """What the instructing brokerage signs to authorise a lock of the terms ``thash``.

    ``keccak256(abi.encode(INSTRUCTION_TAG, uint16 2, network, termsHash))`` where
    ``network`` is the SOURCE ledger's network word; signed raw (no EIP-191 prefix), with
    the same signature rules as committee signatures.
    """
    return keccak256(
        encode(INSTRUCTION_TAG, uint(PROTOCOL_VERSION, 16), word32(network), word32(thash))
    )


# ---- committee rotation


def members_hash(members: Sequence[bytes]) -> bytes:
    """``keccak256(abi.encodePacked(address[] members))``: each 20-byte address left-padded to
    one word (array elements are padded even in packed encoding), concatenated."""
    out = []
    for m in members:
        if not isinstance(m, bytes | bytearray) or len(m) != 20:
            raise ValueError("a committee member is a 20-byte address")
        out.append(bytes(12) + bytes(m))
    return keccak256(b"".join(out))


def rotation_digest(
    network: bytes,
    ledger: bytes,
    bridge: bytes,
    epoch: int,
    next_epoch: int,
    threshold: int,
    members: Sequence[bytes],
    activation: int,
    overlap: int,
) -> bytes:
    """``BridgeTypes.rotationDigest``: what t members of ``epoch`` sign to install
    ``next_epoch`` on one endpoint.

    ``keccak256(abi.encode(ROTATION_TAG, uint16 2, network, ledger, bridge, uint64 epoch,
    uint64 nextEpoch, uint8 threshold, keccak256(abi.encodePacked(members)), uint64
    activation, uint64 overlap))``. Bound to the network, ledger and bridge contract like a
    claim, so a rotation certificate installs nothing anywhere else; bound to every member
    (in the given order: endpoints require strictly ascending members), the threshold and
    both times, so no part of the new committee can be substituted.
    """
    return keccak256(
        encode(
            ROTATION_TAG,
            uint(PROTOCOL_VERSION, 16),
            word32(network),
            word32(ledger),
            word32(bridge),
            uint(epoch, 64),
            uint(next_epoch, 64),
            uint(threshold, 8),
            members_hash(members),
            uint(activation, 64),
            uint(overlap, 64),
        )
    )


def init_parameters_digest(args: Sequence[str]) -> str:
    """SHA-256 (hex) of a Fabric endpoint's ``Init`` arguments, as pinned in each
    organisation's chaincode server (``KSTB_INIT_PARAMS_SHA256``): the JSON array of the
    arguments, compact, ASCII."""
    text = json.dumps(list(args), separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()
