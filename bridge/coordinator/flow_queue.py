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


QUEUE_RECHECK_MAX_S = 60.0
"""The longest a transfer waiting on flow limits sleeps between reads of its lane when its
own estimate is far off (issue 14): a limit raised on a ledger is seen within this. (A
transfer ahead that fails wakes the lane's queue: ``FlowLimits``.)"""

LAST_LOOK_S = 3.0
"""A queued transfer whose sleep would cross its deadline reads its lane this long before
it, for a last chance to lock in time (a lock sent then still lands in a block or two of
1 s before the deadline)."""


def recheck_in(
    retry_in: float, max_backoff: float, recheck_max: float, to_deadline: float | None
) -> float:
    """Seconds a transfer waiting on flow limits sleeps before it reads its lane again.

    ``retry_in``: the wait's own estimate (:attr:`Admission.retry_in`, or a held leg's
    remaining delay); ``to_deadline``: seconds until the transfer's deadline for a wait
    before its lock, None for a locked transfer held by a delay (it waits past it).

    Guarantees: an estimate within ``max_backoff`` is slept as before (``max_backoff`` at
    most; at least 0.5 s unless ``max_backoff`` is less); a longer one sleeps half of it,
    at least ``max_backoff`` and at most ``recheck_max`` (never less than ``max_backoff``),
    so a deep queue's reads per second follow its lane's throughput, not its depth, and
    the sleeps close in on the estimate. Before the lock the deadline bounds every sleep: a
    sleep that would cross it ends :data:`LAST_LOOK_S` before it (a last read while a lock
    is still in time), or, when less than :data:`LAST_LOOK_S` + 0.5 s remain, one second
    after it (the gate then ends it FAILED); past it already, the sleep is at most 0.5 s.
    """
    if retry_in <= max_backoff:
        delay = min(max_backoff, max(0.5, retry_in))
    else:
        delay = min(max(max_backoff, retry_in / 2), max(max_backoff, recheck_max))
    if to_deadline is None or delay < to_deadline:
        return delay
    if to_deadline <= 0:
        return min(delay, 0.5)
    look = to_deadline - LAST_LOOK_S
    return look if look >= 0.5 else to_deadline + 1.0
