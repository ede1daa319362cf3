"""The coordinator's view of a transfer: its public state and the next protocol step.

The coordinator is level-triggered: from the two legs' finalized states and its durable
decision it derives what to do next, so re-running after any crash is safe.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bridge.domain.claims import ClaimKind
from bridge.domain.legs import Action, LegState


class TransferState(enum.IntEnum):
    """What a brokerage sees (values match the proto enum)."""

    SUBMITTED = 1
    SOURCE_LOCKED = 2
    TARGET_PREPARED = 3
    COMMITTING = 4
    COMMITTED = 5
    ABORTING = 6
    ABORTED = 7
    FAILED = 8
    QUEUED = 9
    """---- flow limits (ADR 0010): not yet locked, waiting for a lane's capacity."""

    @property
    def terminal(self) -> bool:
        """True for COMMITTED, ABORTED and FAILED."""
        return self in (TransferState.COMMITTED, TransferState.ABORTED, TransferState.FAILED)


TARGET_REFUSED = frozenset({LegState.REJECTED, LegState.EXPIRED, LegState.ABORTED})


class StepKind(enum.Enum):
    """What the coordinator must do next."""

    LOCK = "lock"  # ask the source relayer to lock
    PREPARE = "prepare"  # LOCKED certificate, then prepare on the target (or mark expired)
    CERTIFY = "certify"  # gather a COMMIT or ABORT certificate and record the decision
    APPLY = "apply"  # apply the recorded decision on the legs that still need it
    DONE = "done"  # terminal


@dataclass(frozen=True, slots=True)
class NextStep:
    """The derived state and the next step, with the legs it concerns."""

    state: TransferState
    step: StepKind
    claim: ClaimKind | None = None
    source_action: Action | None = None
    target_action: Action | None = None


def next_step(decision: ClaimKind | None, source: LegState, target: LegState) -> NextStep:
    """Derive the public state and the next step from the decision and both legs.

    Safety does not rest on this function (ledgers and verifiers enforce the rules);
    it only chooses the step that makes progress.
    """
    if decision is ClaimKind.COMMIT:
        src_done, dst_done = source is LegState.BURNED, target is LegState.MINTED
        if src_done and dst_done:
            return NextStep(TransferState.COMMITTED, StepKind.DONE)
        return NextStep(
            TransferState.COMMITTING,
            StepKind.APPLY,
            source_action=None if src_done else Action.COMMIT,
            target_action=None if dst_done else Action.COMMIT,
        )
    if decision is ClaimKind.ABORT:
        src_done = source in (LegState.RELEASED, LegState.NONE)
        dst_done = target is LegState.ABORTED
        if src_done and dst_done:
            return NextStep(TransferState.ABORTED, StepKind.DONE)
        return NextStep(
            TransferState.ABORTING,
            StepKind.APPLY,
            source_action=None if src_done else Action.ABORT,
            target_action=None if dst_done else Action.ABORT,
        )
    # No decision recorded yet.
    if source is LegState.NONE:
        return NextStep(TransferState.SUBMITTED, StepKind.LOCK, source_action=Action.LOCK)
    if source is LegState.BURNED or target in (LegState.PREPARED, LegState.MINTED):
        state = (
            TransferState.TARGET_PREPARED if source is LegState.LOCKED else TransferState.COMMITTING
        )
        return NextStep(state, StepKind.CERTIFY, claim=ClaimKind.COMMIT)
    if source is LegState.RELEASED or target in TARGET_REFUSED:
        return NextStep(TransferState.SOURCE_LOCKED, StepKind.CERTIFY, claim=ClaimKind.ABORT)
    return NextStep(TransferState.SOURCE_LOCKED, StepKind.PREPARE, target_action=Action.PREPARE)
