"""Node-side rules of committee rotation (ADR 0009): proposals, their bounds, the epochs a
ledger accepts, and the chain of certified rotations a depository verifies.

The ledgers decide which epochs verify (``LedgerReader.committees``); this module holds what
the nodes decide on top of that: what a member may sign, which epoch the coordinator gathers
certificates of, and how a subscriber whose trust anchor is the network file's epoch checks
that a later committee descends from it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bridge.core.digests import rotation_digest
from bridge.core.epochs import MAX_OVERLAP
from bridge.domain.committee import (
    Committee,
    CommitteeRotation,
    EpochWindow,
    assemble_certificate,
    verify_certificate,
)
from bridge.domain.errors import InvalidCertificate, InvalidInput, PreconditionFailed

__all__ = [
    "RotationBounds",
    "RotationProposal",
    "RotationRefused",
    "CertifiedRotation",
    "accepted_epochs",
    "check_proposal",
    "chain_committees",
    "member_epochs",
    "preferred_epoch",
]


class RotationRefused(PreconditionFailed):
    """A rotation proposal this node will not sign, store or install (state forbids it)."""


@dataclass(frozen=True, slots=True)
class RotationProposal:
    """Epoch ``next_epoch`` with ``members`` and ``threshold``, verifying from
    ``activation`` (ledger seconds); the epoch before keeps verifying ``overlap`` seconds
    after max(activation, install time).

    Guarantees on construction: members distinct 20-byte addresses in strictly ascending
    order (what endpoints require and the digest binds), 0 < t <= n, 2t > n, next_epoch >= 2
    (epoch 1 is the genesis, installed at deployment), 0 < overlap <= MAX_OVERLAP.
    """

    next_epoch: int
    threshold: int
    members: tuple[bytes, ...]
    activation: int
    overlap: int

    def __post_init__(self) -> None:
        if self.next_epoch < 2:
            raise InvalidInput("a rotation installs epoch 2 or later (epoch 1 is the genesis)")
        if not 0 <= self.activation < 2**64:
            raise InvalidInput("activation is unix seconds in uint64 range")
        if not 0 < self.overlap <= MAX_OVERLAP:
            raise InvalidInput(f"overlap must be in 1..{MAX_OVERLAP} seconds")
        if list(self.members) != sorted(self.members):
            raise InvalidInput("members must be in ascending address order")
        self.as_rotation()  # validates distinct members, 2t > n and the rotation's rules

    @property
    def committee(self) -> Committee:
        """The new epoch as a committee (raises InvalidInput unless sound)."""
        return Committee(self.next_epoch, self.threshold, tuple(self.members))

    @property
    def certifying_epoch(self) -> int:
        """The epoch whose t members must certify this rotation."""
        return self.next_epoch - 1

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 over every field: what the rotation vote log binds to ``next_epoch``."""
        h = hashlib.sha256(b"KSTB/rotation-proposal/v1\x00")
        for v in (self.next_epoch, self.threshold, self.activation, self.overlap):
            h.update(v.to_bytes(8, "big"))
        h.update(len(self.members).to_bytes(4, "big"))
        for m in self.members:
            h.update(m)
        return h.digest()

    def as_rotation(self) -> CommitteeRotation:
        """The ledger adapters' form of this proposal."""
        return CommitteeRotation(
            epoch=self.certifying_epoch,
            next=self.committee,
            activation=self.activation,
            overlap=self.overlap,
        )

    def digest(self, network: bytes, ledger: bytes, bridge: bytes) -> bytes:
        """The rotation digest members of the certifying epoch sign for one ledger."""
        return rotation_digest(
            network,
            ledger,
            bridge,
            self.certifying_epoch,
            self.next_epoch,
            self.threshold,
            list(self.members),
            self.activation,
            self.overlap,
        )


@dataclass(frozen=True, slots=True)
class RotationBounds:
    """What a member accepts: activation at most ``max_activation_delay`` seconds ahead of
    its clock (and not more than ``max_activation_lag`` behind it), overlap within
    [``min_overlap``, ``max_overlap``]."""

    min_overlap: int = 10
    max_overlap: int = 7 * 24 * 3600
    max_activation_delay: int = 30 * 24 * 3600
    max_activation_lag: int = 3600


def check_proposal(
    proposal: RotationProposal,
    installed: Sequence[EpochWindow],
    bounds: RotationBounds,
    now: float,
    signer: bytes | None = None,
) -> Committee:
    """Return the certifying committee if ``proposal`` may be signed on a ledger whose
    installed epochs are ``installed``; else raise RotationRefused.

    SECURITY: the next epoch is the latest installed epoch + 1 as read from the ledger (a
    caller cannot make a member certify a fork of an older epoch); ``signer`` (when given)
    must be a member of that latest epoch; the activation and overlap are in bounds, so a
    proposal cannot end the old epoch at once nor park the new one far in the future.
    """
    if not installed:
        raise RotationRefused("the ledger shows no installed committee epoch")
    latest = max(installed, key=lambda w: w.committee.epoch)
    if proposal.next_epoch != latest.committee.epoch + 1:
        raise RotationRefused(
            f"next epoch {proposal.next_epoch} is not the latest installed epoch"
            f" {latest.committee.epoch} + 1"
        )
    if signer is not None and not latest.committee.is_member(signer):
        raise RotationRefused(f"0x{signer.hex()} is not a member of epoch {latest.committee.epoch}")
    if not bounds.min_overlap <= proposal.overlap <= bounds.max_overlap:
        raise RotationRefused(
            f"overlap {proposal.overlap}s is outside [{bounds.min_overlap}, {bounds.max_overlap}]s"
        )
    if proposal.activation > now + bounds.max_activation_delay:
        raise RotationRefused(
            f"activation {proposal.activation} is more than {bounds.max_activation_delay}s ahead"
        )
    if proposal.activation and proposal.activation < now - bounds.max_activation_lag:
        raise RotationRefused(
            f"activation {proposal.activation} is more than {bounds.max_activation_lag}s ago"
        )
    return latest.committee


def member_epochs(windows: Iterable[EpochWindow], member: bytes) -> tuple[Committee, ...]:
    """The epochs ``member`` belongs to among ``windows`` (what a ledger accepts now or
    will), newest first; a key may be in both epochs of an overlap. The ledger, not this
    node's clock, decides when an epoch stops verifying, so none is filtered by time."""
    mine = [w.committee for w in windows if w.committee.is_member(member)]
    return tuple(sorted(mine, key=lambda c: c.epoch, reverse=True))


ACTIVATION_MARGIN_S = 5
"""An epoch is preferred only this long after its activation (ledger clocks lag ours)."""


def preferred_epoch(windows: Sequence[EpochWindow], now: float) -> Committee:
    """The newest epoch that verifies at ``now`` (the coordinator gathers certificates of
    it: it verifies longest), counting a new epoch as active only
    :data:`ACTIVATION_MARGIN_S` after its activation while an older one still verifies.
    Raises RotationRefused when none does."""
    t = int(now)
    live = [w for w in windows if w.verifies_at(t)]
    if not live:
        raise RotationRefused("no committee epoch verifies on this ledger now")
    settled = [w for w in live if w.verifies_at(t - ACTIVATION_MARGIN_S)]
    return max(settled or live, key=lambda w: w.committee.epoch).committee


def accepted_epochs(windows: Sequence[EpochWindow], now: float) -> tuple[Committee, ...]:
    """The epochs that verify at ``now``, :func:`preferred_epoch` first, then the others
    newest first: the order in which the coordinator takes a certificate."""
    first = preferred_epoch(windows, now)
    t = int(now)
    rest = sorted(
        (w.committee for w in windows if w.verifies_at(t) and w.committee != first),
        key=lambda c: c.epoch,
        reverse=True,
    )
    return (first, *rest)


@dataclass(frozen=True, slots=True)
class CertifiedRotation:
    """One ledger's certified rotation: its words, the proposal and t signatures of the
    certifying epoch over its rotation digest."""

    ledger_id: str
    network: bytes
    ledger: bytes
    bridge: bytes
    proposal: RotationProposal
    signatures: tuple[bytes, ...]

    @property
    def digest(self) -> bytes:
        """The rotation digest the signatures are over."""
        return self.proposal.digest(self.network, self.ledger, self.bridge)


def certify(
    committee: Committee, rotation: RotationProposal, digest: bytes, signatures: Iterable[bytes]
) -> tuple[bytes, ...]:
    """t valid signatures of ``committee`` over ``digest`` ascending by signer, or
    InvalidCertificate (foreign, invalid and duplicate signatures are dropped)."""
    if committee.epoch != rotation.certifying_epoch:
        raise InvalidCertificate(
            f"epoch {committee.epoch} does not certify epoch {rotation.next_epoch}"
        )
    cert = assemble_certificate(committee, digest, signatures)
    return tuple(v.signature for v in cert.votes)


def chain_committees(
    anchor: Committee, rotations: Iterable[CertifiedRotation]
) -> dict[int, Committee]:
    """Every epoch reachable from the trust ``anchor`` through ``rotations``, by epoch.

    SECURITY: each rotation to epoch e+1 counts only with t valid, ascending, distinct
    signatures of epoch e's members over its recomputed digest, epoch e itself reached from
    the anchor the same way; a rotation that does not verify raises InvalidCertificate (a
    forged chain is refused outright, never skipped). Rotations of epochs at or below the
    anchor are ignored; two different committees for one epoch are refused.
    """
    known: dict[int, Committee] = {anchor.epoch: anchor}
    for r in sorted(rotations, key=lambda r: r.proposal.next_epoch):
        nxt = r.proposal.next_epoch
        if nxt <= anchor.epoch:
            continue
        previous = known.get(nxt - 1)
        if previous is None:
            raise InvalidCertificate(f"rotation to epoch {nxt} does not follow a known epoch")
        verify_certificate(previous, r.digest, previous.epoch, r.signatures)
        committee = r.proposal.committee
        if nxt in known and known[nxt] != committee:
            raise InvalidCertificate(f"two different committees certified for epoch {nxt}")
        known[nxt] = committee
    return known
