"""When a committee member may sign a claim, as a pure function of finalized leg states.

- LOCKED: the source leg is finalized LOCKED with these terms.
- COMMIT: the source leg is LOCKED (or already BURNED) and the target leg is PREPARED
  (or already MINTED), both with these terms.
- ABORT: the target leg is finalized REJECTED, EXPIRED or ABORTED, or the source leg is
  already RELEASED; never while the target is PREPARED or MINTED or the source BURNED.

Protocol v2: LOCKED and COMMIT need the lock to have been *instructed*: the terms'
instructor is an instruction key registered for the source ledger in the network file, or
(EVM source only) the sender itself. The ledger has already checked the instruction's
signature, so the member checks only the instructor's authority. An uninstructed lock may be
ABORTed (also while the target leg is still NONE) so the escrow returns to its holder.
"""

from __future__ import annotations

from bridge.domain.claims import ClaimKind
from bridge.domain.errors import PreconditionFailed
from bridge.domain.instructions import is_instructed
from bridge.domain.legs import LegState, LegStatus

__all__ = ["ClaimRefused", "UninstructedLock", "check_claim", "is_instructed"]


class ClaimRefused(PreconditionFailed):
    """The ledgers do not (yet) support the requested claim."""


def _matches(status: LegStatus, terms_hash: bytes, leg: str) -> None:
    # Every ledger stores the terms hash with any non-NONE leg state (including the
    # ABORTED tombstone), so anything else is a mismatch, never a wildcard.
    if status.state is not LegState.NONE and status.terms_hash != terms_hash:
        raise ClaimRefused(f"{leg} leg holds different terms for this transfer id")


class UninstructedLock(ClaimRefused):
    """The lock's instructor has no authority over the source ledger's accounts."""


def check_claim(
    kind: ClaimKind,
    terms_hash: bytes,
    source: LegStatus,
    target: LegStatus,
    *,
    instructed: bool,
) -> None:
    """Return if ``kind`` may be signed given both legs' finalized states; else ClaimRefused.

    ``instructed`` is :func:`is_instructed` of the terms: without it LOCKED and COMMIT are
    refused (UninstructedLock) and ABORT is also allowed while the target leg is NONE.
    """
    _matches(source, terms_hash, "source")
    _matches(target, terms_hash, "target")
    src, dst = source.state, target.state
    if not instructed:
        if kind is not ClaimKind.ABORT:
            raise UninstructedLock(
                "the lock's instructor is not an instruction key registered for the source"
                " ledger (nor the sender on an EVM source): no brokerage instructed it"
            )
        if src is LegState.BURNED or dst in (LegState.PREPARED, LegState.MINTED):
            raise ClaimRefused(
                f"cannot abort: source {src.name}, target {dst.name} (a prepared transfer commits)"
            )
        if src in (LegState.LOCKED, LegState.RELEASED):
            return
        raise ClaimRefused(f"source leg is {src.name}: nothing to abort")
    if kind is ClaimKind.LOCKED:
        if src is not LegState.LOCKED:
            raise ClaimRefused(f"source leg is {src.name} at height {source.height}, not LOCKED")
        return
    if kind is ClaimKind.COMMIT:
        if src not in (LegState.LOCKED, LegState.BURNED):
            raise ClaimRefused(f"source leg is {src.name} at height {source.height}")
        if dst not in (LegState.PREPARED, LegState.MINTED):
            raise ClaimRefused(f"target leg is {dst.name} at height {target.height}, not PREPARED")
        return
    if kind is ClaimKind.ABORT:
        if src is LegState.BURNED or dst in (LegState.PREPARED, LegState.MINTED):
            raise ClaimRefused(
                f"cannot abort: source {src.name}, target {dst.name} (a prepared transfer commits)"
            )
        if (
            dst in (LegState.REJECTED, LegState.EXPIRED, LegState.ABORTED)
            or src is LegState.RELEASED
        ):
            return
        raise ClaimRefused(
            f"target leg is {dst.name} at height {target.height}: nothing to abort on"
        )
    raise ClaimRefused(f"unknown claim kind {kind}")
