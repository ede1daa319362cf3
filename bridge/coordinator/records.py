"""The coordinator's durable records (plain dataclasses; the store persists them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from bridge.domain.batch_certified import LedgerCertificate
from bridge.domain.claims import ClaimKind
from bridge.domain.flow import WaitReason
from bridge.domain.terms import TransferTerms
from bridge.domain.transfer import TransferState


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """A validated SubmitTransfer request, in domain terms."""

    idempotency_key: str
    security: str
    source_ledger: str
    target_ledger: str
    sender: str
    recipient: str
    amount: int

    def fingerprint(self) -> str:
        """A canonical text of every field but the key, to detect key reuse."""
        return "|".join(
            [self.security, self.source_ledger, self.target_ledger, self.sender.lower(),
             self.recipient.lower(), str(self.amount)]
        )  # fmt: skip


class TransferOrigin(StrEnum):
    """How the coordinator learned of a transfer (durable; decides whether it may lock)."""

    SUBMITTED = "submitted"
    """A brokerage called SubmitTransfer: the driver locks the source units itself."""
    ADOPTED = "adopted"
    """Adopted from a LOCKED ledger event after the coordinator read the lock on the ledger
    (a holder locking directly): the driver never submits a LOCK for it."""


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """One transfer as the coordinator has durably recorded it."""

    transfer_id: bytes
    request: TransferRequest
    terms: TransferTerms
    state: TransferState
    reason: str
    created_at: float
    updated_at: float
    decision: ClaimKind | None = None
    transactions: Mapping[str, str] = field(default_factory=dict)
    origin: TransferOrigin = TransferOrigin.SUBMITTED
    instruction: bytes = b""
    """The instructor's signature over the terms, passed to the source ledger's LOCK."""
    # ---- parking
    parked_reason: int = 0
    """0, or why the target parked the committed units (2 not eligible, 3 frozen)."""

    # ---- flow limits (ADR 0010)
    wait_reason: WaitReason = WaitReason.NONE
    """Why it waits on a flow limit (NONE when it does not)."""
    not_before: float = 0.0
    """With a wait reason: when the wait may end (Unix seconds; 0 when unknown)."""


@dataclass(frozen=True, slots=True)
class StateChange:
    """One state write asked of the store (:meth:`TransferStore.set_states`): the
    transfer's new ``state`` and ``reason``, and the ``detail`` its history entry records
    when the state changes."""

    transfer_id: bytes
    state: TransferState
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class StateWrite:
    """What one state write recorded: the transfer as stored after it, and the state and
    ``updated_at`` the store held just before it, read in the same transaction (row-locked).

    ``previous`` is the store's truth, not the caller's copy of the record, which may be
    stale (the stepper ends a transfer FAILED with the record it read when its step
    began)."""

    record: TransferRecord
    previous: TransferState
    previous_at: float


@dataclass(frozen=True, slots=True)
class TransferUpdate:
    """One entry of a transfer's history (sequence starts at 1)."""

    transfer_id: bytes
    sequence: int
    state: TransferState
    detail: str
    at: float


@dataclass(frozen=True, slots=True)
class Decision:
    """A committee-certified decision with its per-ledger certificates: each either a
    single-claim ``SignatureSet`` or, certified in a batch, a ``BatchCertified`` (the batch
    certificate and this transfer's proof)."""

    kind: ClaimKind
    certificates: Mapping[str, LedgerCertificate]
    # Why the committee decided so, for people (e.g. "target rejected: ...").
    cause: str = ""


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    """A committee member caught signing what it was not asked to, with the evidence.

    ``signature`` over ``signed_digest`` recovers to ``member`` (empty when it recovers to
    no one), so anyone can check the evidence without trusting the coordinator.
    """

    member: bytes
    endpoint: str
    kind: str
    subject: str
    detail: str
    expected_digest: bytes
    signed_digest: bytes
    signature: bytes
    at: float
