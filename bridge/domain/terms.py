"""Transfer terms and the identifiers and hashes derived from them.

``transfer_id = keccak256(abi.encode(TRANSFER_TAG, src_ledger, src_bridge, sender,
instructor, nonce))`` makes a transfer globally unique by its source ledger and bridge, its
sender, the brokerage that instructed it and that brokerage's nonce (protocol v2).
``terms_hash`` binds every economic term; claims sign the terms hash, so a certificate
for one transfer can never authorise different terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from bridge.core import digests as core
from bridge.core.digests import TERMS_TAG, TRANSFER_TAG
from bridge.domain.errors import InvalidInput

__all__ = ["TERMS_TAG", "TRANSFER_TAG", "UINT256_MAX", "UINT64_MAX", "TransferTerms", "transfer_id"]
UINT256_MAX = 2**256 - 1
UINT64_MAX = 2**64 - 1


def _word(name: str, value: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise InvalidInput(f"{name} must be 32 bytes")
    return bytes(value)


@dataclass(frozen=True, slots=True)
class TransferTerms:
    """Everything the ledgers and the committee agree on for one transfer (immutable)."""

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
    """12 zero bytes + the address of the key that instructed the transfer (protocol v2)."""
    deadline: int

    def __post_init__(self) -> None:
        for name in core.WORD_FIELDS:
            value = getattr(self, name)
            word = _word(name, value)
            if type(value) is not bytes:  # a bytearray or memoryview: kept as bytes, hashable
                object.__setattr__(self, name, word)
        if not 0 < self.amount <= UINT256_MAX:
            raise InvalidInput("amount must be between 1 and 2**256-1")
        if not 0 <= self.deadline <= UINT64_MAX:
            raise InvalidInput("deadline must fit in uint64")
        if self.src_ledger == self.dst_ledger:
            raise InvalidInput("source and target ledger must differ")

    @property
    def transfer_id(self) -> bytes:
        """The globally unique transfer id."""
        return _transfer_id_of(self)

    @property
    def terms_hash(self) -> bytes:
        """The digest binding every term; what the committee signs."""
        return _terms_hash_of(self)

    def as_abi_tuple(
        self,
    ) -> tuple[bytes, bytes, int, bytes, bytes, bytes, bytes, bytes, bytes, bytes, int]:
        """The Solidity ``Terms`` struct as a tuple, in declaration order."""
        return (
            self.nonce,
            self.security,
            self.amount,
            self.src_ledger,
            self.src_bridge,
            self.dst_ledger,
            self.dst_bridge,
            self.sender,
            self.recipient,
            self.instructor,
            self.deadline,
        )


def transfer_id(
    src_ledger: bytes, src_bridge: bytes, sender: bytes, instructor: bytes, nonce: bytes
) -> bytes:
    """Return the transfer id for a source ledger and bridge, sender, instructor and nonce."""
    return core.transfer_id(src_ledger, src_bridge, sender, instructor, nonce)


# Both digests are keccak over the terms, asked for on every step, read and claim of a
# transfer (5 % of the coordinator's CPU under batched load, from objects rebuilt from the
# store each time): the last answers are kept per terms value. Terms are immutable and
# compared by every field, so equal terms have equal digests.
_DIGESTS_KEPT = 1 << 15


@lru_cache(maxsize=_DIGESTS_KEPT)
def _transfer_id_of(t: TransferTerms) -> bytes:
    return transfer_id(t.src_ledger, t.src_bridge, t.sender, t.instructor, t.nonce)


@lru_cache(maxsize=_DIGESTS_KEPT)
def _terms_hash_of(t: TransferTerms) -> bytes:
    return core.terms_hash(t)
