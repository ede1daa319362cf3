"""Brokerage transfer instructions (protocol v2): who may have a holder's units locked.

The brokerage that manages the sender's account builds the terms (nonce, deadline, itself
as ``instructor``) and signs the instruction digest of the terms hash on the source
ledger's network with its instruction key. The source ledger accepts a relayer's lock only
with that signature; verifiers certify LOCKED only when the instructor is registered for
the source ledger (or, on EVM, is the sender itself).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bridge.core import digests as core
from bridge.core import signatures as core_sig
from bridge.core.reasons import ProtocolError
from bridge.domain.errors import InvalidCertificate, InvalidInput
from bridge.domain.signer import Signer
from bridge.domain.terms import TransferTerms

__all__ = [
    "Instruction",
    "InvalidInstruction",
    "UnauthorisedInstructor",
    "instruction_digest",
    "instructor_word",
    "is_instructed",
    "make_nonce",
    "sign_instruction",
    "verify_instruction",
]


class InvalidInstruction(InvalidCertificate):
    """An instruction is missing or not a valid signature by the terms' instructor
    (PERMISSION_DENIED at the API). ``reason`` is MISSING_INSTRUCTION or INVALID_INSTRUCTION,
    what a ledger refuses such a lock with."""


class UnauthorisedInstructor(InvalidCertificate):
    """The instructor is not a key registered for the source ledger (PERMISSION_DENIED)."""


@dataclass(frozen=True, slots=True)
class Instruction:
    """What a brokerage sends with a transfer request: its chosen nonce and deadline, the
    instructor's 20-byte address and a 65-byte signature over the instruction digest."""

    nonce: bytes
    deadline: int
    instructor: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if len(self.nonce) != 32:
            raise InvalidInput("instruction.nonce must be 32 bytes")
        if len(self.instructor) != 20 or not any(self.instructor):
            raise InvalidInput("instruction.instructor must be a nonzero 20-byte address")
        if len(self.signature) != core_sig.SIGNATURE_LENGTH:
            raise InvalidInput("instruction.signature must be 65 bytes")
        if not 0 < self.deadline < core.UINT64_LIMIT:
            raise InvalidInput("instruction.deadline must be a positive uint64")


def instructor_word(address: bytes) -> bytes:
    """The terms' ``instructor`` word of a 20-byte address."""
    if len(address) != 20:
        raise InvalidInput("an instructor address is 20 bytes")
    return bytes(12) + address


def instruction_digest(network: bytes, terms: TransferTerms) -> bytes:
    """The digest the instructor signs: bound to the source network and the terms hash."""
    return core.instruction_digest(network, terms.terms_hash)


def make_nonce(idempotency_key: str, salt: bytes) -> bytes:
    """A brokerage's nonce for one request: SHA-256 of its idempotency key and a secret salt
    chosen once per key (a retry with the same key yields the same nonce, hence the same
    transfer id; nobody can predict it from the key alone)."""
    if len(salt) < 16:
        raise InvalidInput("the nonce salt must be at least 16 bytes")
    return hashlib.sha256(b"KSTB/nonce/v2\0" + idempotency_key.encode() + b"\0" + salt).digest()


def sign_instruction(signer: Signer, network: bytes, terms: TransferTerms) -> bytes:
    """Sign ``terms`` as their instructor; refuses terms that name another instructor."""
    if terms.instructor != instructor_word(signer.address):
        raise InvalidInput("the terms name another instructor than this signer")
    return signer.sign_digest(instruction_digest(network, terms))


def verify_instruction(network: bytes, terms: TransferTerms, signature: bytes) -> None:
    """Raise InvalidInstruction unless ``signature`` is the terms' instructor's over them.

    SECURITY: exactly the ledgers' rule (``bridge.core.signatures.check_instruction``).
    """
    try:
        core_sig.check_instruction(instruction_digest(network, terms), terms.instructor, signature)
    except ProtocolError as exc:
        raise InvalidInstruction(str(exc), exc.reason) from None


def is_instructed(
    instruction_keys: frozenset[bytes], holder_direct: bool, sender: bytes, instructor: bytes
) -> bool:
    """True when ``instructor`` (a terms word) may have instructed a lock of ``sender``'s units.

    SECURITY: a registered instruction key of the source ledger, or, where the source
    ledger's kind has holder-direct locks (``holder_direct``, from
    :func:`bridge.ledgers.kinds.holder_direct_locks`: the EVM endpoint's ``lock`` by the
    holder's own transaction), the sender itself.
    """
    if len(instructor) != 32 or any(instructor[:12]) or not any(instructor[12:]):
        return False
    if instructor[12:] in instruction_keys:
        return True
    return holder_direct and instructor == sender
