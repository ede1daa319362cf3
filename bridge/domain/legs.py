"""Ledger-side facts: leg states, bridge events and holder standing, for any ledger kind."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bridge.domain.terms import TransferTerms


class Leg(enum.IntEnum):
    """Which side of a transfer a ledger holds (values match the proto enum)."""

    OUTBOUND = 1
    INBOUND = 2


class LegState(enum.IntEnum):
    """One leg's state on its ledger (values match the proto enum)."""

    NONE = 0
    LOCKED = 1
    BURNED = 2
    RELEASED = 3
    PREPARED = 4
    REJECTED = 5
    EXPIRED = 6
    MINTED = 7
    ABORTED = 8


OUTBOUND_STATES = (LegState.NONE, LegState.LOCKED, LegState.BURNED, LegState.RELEASED)
INBOUND_STATES = (
    LegState.NONE,
    LegState.PREPARED,
    LegState.REJECTED,
    LegState.EXPIRED,
    LegState.MINTED,
    LegState.ABORTED,
)


def leg_state_from_ledger(leg: Leg, raw: int) -> LegState:
    """Map a contract's per-leg enum value (OutState / InState) to a LegState."""
    table = OUTBOUND_STATES if leg is Leg.OUTBOUND else INBOUND_STATES
    if not 0 <= raw < len(table):
        raise ValueError(f"unknown {leg.name.lower()} state {raw}")
    return table[raw]


class RejectReason(enum.IntEnum):
    """Why a target ledger refused to prepare (0 means it did not)."""

    NONE = 0
    UNKNOWN_SECURITY = 1
    RECIPIENT_NOT_ELIGIBLE = 2
    RECIPIENT_FROZEN = 3
    TOKEN_PAUSED = 4
    INVALID_RECIPIENT = 5

    @classmethod
    def describe(cls, value: int) -> str:
        """A human-readable reason, tolerant of codes this version does not know."""
        try:
            return cls(value).name.lower().replace("_", " ")
        except ValueError:
            return f"reason code {value}"


class Action(enum.IntEnum):
    """A protocol step applied on one ledger (values match the proto enum)."""

    LOCK = 1
    PREPARE = 2
    MARK_EXPIRED = 3
    COMMIT = 4
    ABORT = 5


_PAST_PREPARE = frozenset(
    {LegState.PREPARED, LegState.REJECTED, LegState.EXPIRED, LegState.MINTED, LegState.ABORTED}
)

STEP_DONE: dict[tuple[Action, Leg], frozenset[LegState]] = {
    (Action.LOCK, Leg.OUTBOUND): frozenset({LegState.LOCKED, LegState.BURNED, LegState.RELEASED}),
    (Action.PREPARE, Leg.INBOUND): _PAST_PREPARE,
    (Action.MARK_EXPIRED, Leg.INBOUND): _PAST_PREPARE,
    (Action.COMMIT, Leg.OUTBOUND): frozenset({LegState.BURNED}),
    (Action.COMMIT, Leg.INBOUND): frozenset({LegState.MINTED}),
    (Action.ABORT, Leg.OUTBOUND): frozenset({LegState.RELEASED}),
    (Action.ABORT, Leg.INBOUND): frozenset({LegState.ABORTED}),
}
"""For each step and the leg it acts on, the leg states in which it has nothing left to do.

Every adapter consults this before sending anything: it is what makes steps idempotent.
A step absent from the table does not apply to that leg.
"""


@dataclass(frozen=True, slots=True)
class LegStatus:
    """A leg as seen at a finalized height."""

    state: LegState
    terms_hash: bytes
    reason: int
    height: int
    not_before: int = 0
    """---- flow limits (ADR 0010): for a LOCKED (outbound) or PREPARED (inbound) leg, the
    ledger time before which it may not commit (a large transfer's delay); 0: none."""

    # ---- parking
    @property
    def parked(self) -> bool:
        """A committed inbound leg whose units the target parked instead of paying the
        recipient (frozen or made ineligible after prepare): MINTED with a nonzero reason."""
        return self.state is LegState.MINTED and self.reason != 0


@dataclass(frozen=True, slots=True, order=True)
class EventPosition:
    """Where an event sits in its ledger's total order."""

    height: int
    index: int


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """A bridge leg transition observed at finality; LOCKED events carry the full terms."""

    ledger: str
    position: EventPosition
    block_hash: bytes
    tx_id: str
    transfer_id: bytes
    leg: Leg
    state: LegState
    reason: int
    terms_hash: bytes
    terms: TransferTerms | None = None


@dataclass(frozen=True, slots=True)
class HolderStatus:
    """A holder's standing for one security on one ledger."""

    security_registered: bool
    balance: int
    receive_status: int
    eligible: bool
    frozen: bool
    paused: bool


@dataclass(frozen=True, slots=True)
class SignatureSet:
    """A certificate as a ledger takes it: the epoch and signatures ascending by signer."""

    epoch: int
    signatures: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class TxOutcome:
    """The result of applying a step: where it landed, or that it was already applied."""

    tx_id: str
    height: int
    already_applied: bool
