"""---- flow limits (ADR 0010): when a transfer may lock, given the lanes' capacity.

Pure decisions, no I/O: the engine reads the two ledgers' flow status (through the
relayers) and the lane's backlog (from the store) and asks :func:`admit`.

The rule is FIFO per lane (security, source ledger, target ledger): a transfer may lock
only if it fits in what is available *after* every transfer submitted before it on the
same lane that has not consumed its capacity yet. Prefix sums are monotone, so a
transfer never overtakes an earlier one, and several may still be in flight at once.
The ledgers enforce the limits whatever the coordinator does; this only decides the
order and tells the brokerage why it waits.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.domain.flow import Bucket, FlowStatus, WaitReason
from bridge.domain.transfer import TransferState

AHEAD_AT_SOURCE: tuple[TransferState, ...] = (TransferState.QUEUED, TransferState.SUBMITTED)
"""Earlier transfers of the lane that have not consumed source outbound capacity yet (a
SUBMITTED one may be locking right now)."""

AHEAD_AT_TARGET: tuple[TransferState, ...] = (*AHEAD_AT_SOURCE, TransferState.SOURCE_LOCKED)
"""Earlier transfers of the lane that have not consumed target inbound capacity yet
(inbound capacity is consumed at prepare, after the lock)."""


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict for one transfer: go (lock now), or wait with a reason."""

    go: bool
    reason: WaitReason = WaitReason.NONE
    retry_in: int = 0
    """Seconds until refill alone could make room (0: re-check soon)."""
    detail: str = ""


def never_fits(amount: int, source: FlowStatus, target: FlowStatus) -> str | None:
    """Why ``amount`` can never pass the lane (above a capacity itself), or None.

    Guarantees: None whenever some wait would let it through; a refusal names the ledger,
    the direction and the capacity, so the brokerage knows the largest amount that can go.
    """
    if source.outbound.never_fits(amount):
        return (
            f"amount {amount} exceeds the outbound capacity {source.outbound.capacity} of"
            f" {source.security} on {source.ledger} towards {source.counterpart}: no wait can"
            " let it through; submit at most that much per transfer"
        )
    if target.inbound.never_fits(amount):
        return (
            f"amount {amount} exceeds the inbound capacity {target.inbound.capacity} of"
            f" {target.security} on {target.ledger} from {target.counterpart}: no wait can"
            " let it through; submit at most that much per transfer"
        )
    return None


def _check(
    amount: int, ahead: int, bucket: Bucket, short: WaitReason, where: str
) -> Admission | None:
    if not bucket.limited or ahead + amount <= bucket.available:
        return None
    behind = amount <= bucket.available  # it alone would fit: earlier transfers go first
    reason = WaitReason.BEHIND_EARLIER_TRANSFER if behind else short
    detail = (
        f"queued behind {ahead} units submitted earlier on this lane ({where}: {bucket.available}"
        f" of {bucket.capacity} available)"
        if behind
        else f"{where}: {bucket.available} of {bucket.capacity} available, needs"
        f" {amount}{f' after {ahead} units queued before it' if ahead else ''}; refills"
        f" {bucket.capacity} per {bucket.window} s"
    )
    return Admission(False, reason, bucket.seconds_until(ahead + amount), detail)


def admit(
    amount: int, ahead_source: int, ahead_target: int, source: FlowStatus, target: FlowStatus
) -> Admission:
    """Whether a transfer of ``amount`` may lock now.

    ``ahead_source``/``ahead_target``: units of earlier transfers on the lane not yet
    counted in the source's outbound / the target's inbound bucket (see AHEAD_AT_*).
    Guarantees: go only if the amount fits both buckets after everything ahead of it; an
    unlimited lane always goes; a wait names the binding bucket (source first).
    """
    out = _check(
        amount,
        ahead_source,
        source.outbound,
        WaitReason.SOURCE_OUTBOUND_CAPACITY,
        f"outbound on {source.ledger}",
    )
    if out is not None:
        return out
    inn = _check(
        amount,
        ahead_target,
        target.inbound,
        WaitReason.TARGET_INBOUND_CAPACITY,
        f"inbound on {target.ledger}",
    )
    if inn is not None:
        return inn
    return Admission(True)
