"""When a committee member may sign a claim, as a pure function of finalized leg states.

- LOCKED: the source leg is finalized LOCKED with these terms.
- COMMIT: the source leg is LOCKED (or already BURNED) and the target leg is PREPARED
  (or already MINTED), both with these terms.
- ABORT: the target leg is finalized REJECTED, EXPIRED or ABORTED, or the source leg is
  already RELEASED; never while the target is PREPARED or MINTED or the source BURNED.
"""

from __future__ import annotations

from bridge.domain.claims import ClaimKind
from bridge.domain.errors import PreconditionFailed
from bridge.domain.legs import LegState, LegStatus


class ClaimRefused(PreconditionFailed):
    """The ledgers do not (yet) support the requested claim."""


def _matches(status: LegStatus, terms_hash: bytes, leg: str) -> None:
    # Every ledger stores the terms hash with any non-NONE leg state (including the
    # ABORTED tombstone), so anything else is a mismatch, never a wildcard.
    if status.state is not LegState.NONE and status.terms_hash != terms_hash:
        raise ClaimRefused(f"{leg} leg holds different terms for this transfer id")


def check_claim(kind: ClaimKind, terms_hash: bytes, source: LegStatus, target: LegStatus) -> None:
    """Return if ``kind`` may be signed given both legs' finalized states; else ClaimRefused."""
    _matches(source, terms_hash, "source")
    _matches(target, terms_hash, "target")
    src, dst = source.state, target.state
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
