"""Committee membership, secp256k1 signatures and t-of-n certificates.

Signatures are 65 bytes ``r || s || v`` (v in {27, 28}, low s) over a raw 32-byte digest,
exactly what EVM ``ecrecover`` and coincurve verify. A certificate lists signatures in
strictly ascending signer-address order, which makes duplicate signers impossible to hide.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from coincurve import PublicKey

from bridge.domain.errors import InvalidCertificate, InvalidInput
from bridge.domain.hashing import keccak256

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SIGNATURE_LENGTH = 65


def address_of_public_key(uncompressed: bytes) -> bytes:
    """Return the 20-byte EVM address of a 65-byte uncompressed secp256k1 public key."""
    if len(uncompressed) != 65 or uncompressed[0] != 4:
        raise InvalidInput("expected a 65-byte uncompressed public key")
    return keccak256(uncompressed[1:])[12:]


def recover_signer(digest: bytes, signature: bytes) -> bytes:
    """Return the signer address of ``signature`` over ``digest``, applying the EVM rules.

    Raises InvalidCertificate for a malformed signature, a high ``s`` or a bad ``v``.
    """
    if len(digest) != 32:
        raise InvalidCertificate("digest must be 32 bytes")
    if len(signature) != SIGNATURE_LENGTH:
        raise InvalidCertificate("signature must be 65 bytes")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v not in (27, 28):
        raise InvalidCertificate("signature v must be 27 or 28")
    if not (0 < r < SECP256K1_N and 0 < s <= SECP256K1_N // 2):
        raise InvalidCertificate("signature r/s out of range (high-s signatures are refused)")
    try:
        pub = PublicKey.from_signature_and_message(
            signature[:64] + bytes([v - 27]), digest, hasher=None
        )
    except Exception as exc:
        raise InvalidCertificate("signature does not recover to a public key") from exc
    return address_of_public_key(pub.format(compressed=False))


@dataclass(frozen=True, slots=True)
class Committee:
    """One epoch of the verifier committee: n member addresses and a threshold t."""

    epoch: int
    threshold: int
    members: tuple[bytes, ...]

    def __post_init__(self) -> None:
        n = len(self.members)
        if len(set(self.members)) != n:
            raise InvalidInput("committee members must be distinct")
        if any(len(m) != 20 for m in self.members):
            raise InvalidInput("committee members are 20-byte addresses")
        if not 0 < self.threshold <= n:
            raise InvalidInput("threshold must be in 1..n")
        if 2 * self.threshold <= n:
            raise InvalidInput("threshold must exceed n/2 so COMMIT and ABORT quorums intersect")
        if self.epoch <= 0:
            raise InvalidInput("epoch starts at 1")

    @property
    def max_faulty(self) -> int:
        """The largest f with 2t - n > f: faults under which conflicting quorums cannot form."""
        return 2 * self.threshold - len(self.members) - 1

    def is_member(self, address: bytes) -> bool:
        """True when ``address`` is a member of this epoch."""
        return address in self.members


@dataclass(frozen=True, slots=True)
class SignedVote:
    """One member's signature over one digest, with the address it recovers to."""

    signer: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Certificate:
    """t or more committee signatures over one claim digest, ascending by signer."""

    epoch: int
    digest: bytes
    votes: tuple[SignedVote, ...]

    @property
    def signatures_blob(self) -> bytes:
        """Concatenated 65-byte signatures, the form the EVM contract takes."""
        return b"".join(v.signature for v in self.votes)


def verify_vote(committee: Committee, digest: bytes, signature: bytes) -> SignedVote:
    """Check one signature against the committee; return it with its recovered signer."""
    signer = recover_signer(digest, signature)
    if not committee.is_member(signer):
        raise InvalidCertificate(
            f"signer 0x{signer.hex()} is not in committee epoch {committee.epoch}"
        )
    return SignedVote(signer=signer, signature=signature)


def assemble_certificate(
    committee: Committee, digest: bytes, signatures: Iterable[bytes]
) -> Certificate:
    """Build a certificate from any signatures: invalid, foreign or duplicate ones are dropped.

    Raises InvalidCertificate when fewer than t valid distinct members signed.
    """
    by_signer: dict[bytes, SignedVote] = {}
    for sig in signatures:
        try:
            vote = verify_vote(committee, digest, sig)
        except InvalidCertificate:
            continue
        by_signer.setdefault(vote.signer, vote)
    if len(by_signer) < committee.threshold:
        raise InvalidCertificate(
            f"only {len(by_signer)} valid signatures, threshold is {committee.threshold}"
        )
    chosen = sorted(by_signer.values(), key=lambda v: v.signer)[: committee.threshold]
    return Certificate(epoch=committee.epoch, digest=digest, votes=tuple(chosen))


def verify_certificate(
    committee: Committee, digest: bytes, epoch: int, blob: Sequence[bytes]
) -> None:
    """Apply exactly the contracts' acceptance rule to a list of signatures; raise if it fails.

    The rule: current epoch, at least t signatures, each from a member, strictly ascending
    signer addresses (so no duplicates), every signature valid over ``digest``.
    """
    if epoch != committee.epoch:
        raise InvalidCertificate(
            f"certificate epoch {epoch} is not the current epoch {committee.epoch}"
        )
    if len(blob) < committee.threshold:
        raise InvalidCertificate(f"{len(blob)} signatures, threshold is {committee.threshold}")
    previous = b""
    for sig in blob:
        vote = verify_vote(committee, digest, sig)
        if vote.signer <= previous:
            raise InvalidCertificate("signers must be strictly ascending (duplicate signer?)")
        previous = vote.signer
