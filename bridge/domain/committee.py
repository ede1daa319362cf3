"""Committee membership, secp256k1 signatures and t-of-n certificates.

Signatures are 65 bytes ``r || s || v`` (v in {27, 28}, low s) over a raw 32-byte digest,
exactly what EVM ``ecrecover`` and coincurve verify. A certificate lists signatures in
strictly ascending signer-address order, which makes duplicate signers impossible to hide.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bridge.core import digests, epochs
from bridge.core import signatures as core
from bridge.core.reasons import ErrorReason, ProtocolError
from bridge.core.signatures import SECP256K1_N, SIGNATURE_LENGTH
from bridge.domain.claims import ClaimDomain
from bridge.domain.errors import InvalidCertificate, InvalidInput

__all__ = [
    "SECP256K1_N",
    "SIGNATURE_LENGTH",
    "Certificate",
    "Committee",
    "CommitteeRotation",
    "EpochWindow",
    "SignedVote",
    "address_of_public_key",
    "assemble_certificate",
    "recover_signer",
    "verify_certificate",
    "verify_vote",
]


def address_of_public_key(uncompressed: bytes) -> bytes:
    """Return the 20-byte EVM address of a 65-byte uncompressed secp256k1 public key."""
    try:
        return core.address_of_public_key(uncompressed)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def recover_signer(digest: bytes, signature: bytes) -> bytes:
    """Return the signer address of ``signature`` over ``digest``, applying the EVM rules.

    Raises InvalidCertificate for a malformed signature, a high ``s`` or a bad ``v``.
    """
    try:
        return core.recover_signer(digest, signature)
    except ProtocolError as exc:
        raise InvalidCertificate(exc.detail, exc.reason) from None


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

    The rule is the core's (:func:`bridge.core.signatures.check_certificate`): current epoch,
    at least t signatures, then each valid over ``digest``, its signer strictly above the
    previous one (so no duplicates) and a member. Raises InvalidCertificate whose
    ``reason`` is the endpoint error the contracts would revert with.
    """
    try:
        core.check_certificate(
            digest, epoch, committee.epoch, committee.threshold, committee.members, list(blob)
        )
    except ProtocolError as exc:
        raise InvalidCertificate(_describe(exc, committee, epoch, len(blob)), exc.reason) from None


def _describe(exc: ProtocolError, committee: Committee, epoch: int, count: int) -> str:
    if exc.reason is ErrorReason.WRONG_EPOCH:
        return f"certificate epoch {epoch} is not the current epoch {committee.epoch}"
    if exc.reason is ErrorReason.TOO_FEW_SIGNATURES:
        return f"{count} signatures, threshold is {committee.threshold}"
    if exc.reason is ErrorReason.SIGNERS_NOT_ASCENDING:
        return f"signers must be strictly ascending (duplicate signer?), {exc.detail}"
    if exc.reason is ErrorReason.NOT_COMMITTEE_MEMBER:
        return f"{exc.detail} is not in committee epoch {committee.epoch}"
    return str(exc)


# ---- committee rotation


@dataclass(frozen=True, slots=True)
class CommitteeRotation:
    """What t members of ``epoch`` certify to install ``next`` (epoch + 1) on an endpoint.

    Guarantees on construction (InvalidInput otherwise): ``next.epoch == epoch + 1``; the new
    members are strictly ascending (the order every endpoint requires and the digest binds);
    ``0 < overlap <= MAX_OVERLAP``; ``0 <= activation < 2**64``. ``activation`` (unix seconds)
    is when ``next`` starts verifying; the old epoch keeps verifying for ``overlap`` seconds
    after ``max(activation, installation time)`` (ADR 0008).
    """

    epoch: int
    next: Committee
    activation: int
    overlap: int

    def __post_init__(self) -> None:
        if type(self.epoch) is not int or not 0 < self.epoch < 2**64 - 1:
            raise InvalidInput("rotation epoch must be in 1..2**64-2")
        if self.next.epoch != self.epoch + 1:
            raise InvalidInput(f"next epoch {self.next.epoch} must be epoch + 1 = {self.epoch + 1}")
        if list(self.next.members) != sorted(self.next.members):
            raise InvalidInput("the new committee's members must be strictly ascending")
        if self.next.threshold > 255:
            raise InvalidInput("threshold must fit uint8")
        if type(self.overlap) is not int or not 0 < self.overlap <= epochs.MAX_OVERLAP:
            raise InvalidInput(f"overlap must be in 1..{epochs.MAX_OVERLAP} seconds")
        if type(self.activation) is not int or not 0 <= self.activation < 2**64:
            raise InvalidInput("activation must be unix seconds in uint64 range")

    def digest(self, domain: ClaimDomain) -> bytes:
        """The rotation digest for the endpoint ``domain`` names (its network, ledger and
        contract; ``domain.epoch`` is ignored: the signing epoch is ``self.epoch``)."""
        return digests.rotation_digest(
            domain.network,
            domain.ledger,
            domain.contract,
            self.epoch,
            self.next.epoch,
            self.next.threshold,
            self.next.members,
            self.activation,
            self.overlap,
        )


@dataclass(frozen=True, slots=True)
class EpochWindow:
    """One installed epoch and when it verifies on one endpoint: from ``active_from`` (unix
    seconds, inclusive) until ``active_until`` (exclusive; None: no end)."""

    committee: Committee
    active_from: int
    active_until: int | None

    def verifies_at(self, now: int) -> bool:
        """True when a certificate of this epoch verifies at ledger time ``now``."""
        return self.active_from <= now and (self.active_until is None or now < self.active_until)
