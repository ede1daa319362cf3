"""When a committee member may sign a claim, as a pure function of finalized leg states.

- LOCKED: the source leg is finalized LOCKED with these terms.
- COMMIT: the source leg is LOCKED (or already BURNED) and the target leg is PREPARED
  (or already MINTED), both with these terms.
- ABORT: the target leg is finalized REJECTED, EXPIRED or ABORTED, or the source leg is
  already RELEASED; never while the target is PREPARED or MINTED or the source BURNED.

Protocol v2: LOCKED needs the lock to have been *instructed*: the terms' instructor is an
instruction key registered for the source ledger in the network file, or (EVM source only)
the sender itself. The ledger has already checked the instruction's signature (and, since
the on-chain registry, that the key is registered there), so the member checks only the
instructor's authority (defence in depth). An uninstructed lock may be ABORTed (also while
the target leg is still NONE) so the escrow returns to its holder. COMMIT does not re-check
the instructor: a PREPARED target already proves t members certified LOCKED, i.e. the
instruction, and a key removed from the network file while the transfer is in flight must
not leave it neither committable nor abortable.

Unknown target (:func:`check_abort_unknown_target`): a source LOCKED whose target ledger or
bridge is not in this member's network file may be ABORTed on the source alone. No honest
member with the same network file can have signed LOCKED for that target (a member signs
LOCKED only through its reader of the target), so no certificate can have prepared it and
nothing can ever commit it; the vote log still keeps this member from signing COMMIT later.

Committee rotation (ADR 0009): a member of a new epoch has no vote log of what the old epoch
signed. COMMIT and ABORT stay exclusive anyway, because the rules above depend only on the
finalized legs: COMMIT needs the target PREPARED/MINTED, and ABORT is never signed while the
target is PREPARED/MINTED or the source BURNED. A PREPARED target leaves that state only with
a COMMIT certificate or an ABORT certificate, and the latter needs t members to sign ABORT
while it is PREPARED, which none following these rules does; REJECTED, EXPIRED, ABORTED and
RELEASED never lead to a mint. (The exceptions above keep this: an uninstructed lock and an
unknown target can never be PREPARED, since no member signs LOCKED for them.) So whichever
epoch a member belongs to, the claim it may sign for a transfer is fixed by the ledgers.
"""

from __future__ import annotations

from bridge.domain.claims import ClaimKind
from bridge.domain.errors import BridgeReason, PreconditionFailed
from bridge.domain.instructions import is_instructed
from bridge.domain.legs import LegState, LegStatus

__all__ = [
    "ClaimRefused",
    "CommitTooEarly",
    "check_commit_delay",
    "UninstructedLock",
    "check_abort_unknown_target",
    "check_claim",
    "is_instructed",
]


class ClaimRefused(PreconditionFailed):
    """The ledgers do not (yet) support the requested claim."""

    kind = BridgeReason.CLAIM_REFUSED


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

    ``instructed`` is :func:`is_instructed` of the terms: without it LOCKED is refused
    (UninstructedLock), COMMIT is refused (UninstructedLock) unless the target is already
    PREPARED or MINTED (then t members certified the lock when it was instructed), and ABORT
    is also allowed while the target leg is NONE.
    """
    _matches(source, terms_hash, "source")
    _matches(target, terms_hash, "target")
    src, dst = source.state, target.state
    # SECURITY: a PREPARED/MINTED target already proves a LOCKED certificate, so COMMIT
    # needs no instructor check (which would strand a transfer whose key was removed).
    prepared = dst in (LegState.PREPARED, LegState.MINTED)
    if not instructed and not (kind is ClaimKind.COMMIT and prepared):
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


def check_abort_unknown_target(terms_hash: bytes, source: LegStatus) -> None:
    """Return if ABORT may be signed, for the source ledger only, for terms whose target
    ledger or bridge is not in this member's network file; else ClaimRefused.

    Allowed while the source leg holds these terms LOCKED (or already RELEASED); refused
    for NONE (nothing to abort) and BURNED (a COMMIT certificate exists).
    SECURITY: sound because a member signs LOCKED only for a target it reads, so no honest
    member signed LOCKED for this target and no PREPARE there can carry a certificate; the
    caller still records the ABORT in the vote log (never COMMIT after it).
    """
    _matches(source, terms_hash, "source")
    src = source.state
    if src in (LegState.LOCKED, LegState.RELEASED):
        return
    raise ClaimRefused(
        f"source leg is {src.name} at height {source.height}: nothing to abort"
        " towards an unknown target"
    )


# ---- flow limits (ADR 0010)
class CommitTooEarly(ClaimRefused):
    """A leg of a large transfer is still inside its ledger's delay (its ``notBefore``)."""


def check_commit_delay(source: LegStatus, target: LegStatus, now: float) -> None:
    """Return if COMMIT may be signed as far as large-transfer delays go; else CommitTooEarly.

    Guarantees: no COMMIT signature before the later of the source leg's and the target
    leg's ``not_before`` (each ledger's own delay, read at finality), by this member's clock.
    SECURITY: the source ledger can hold only its burn; by refusing COMMIT, honest members
    make the source's delay hold the mint on the target too, so a delay configured on the
    ledger the value leaves protects it as well as one on the ledger it enters.
    """
    at = max(source.not_before, target.not_before)
    if now < at:
        raise CommitTooEarly(f"TooEarly: notBefore={at}, nowTs={int(now)}")


# ---- store restore (ADR 0022)
def outcome_applied(kind: ClaimKind, source: LegStatus, target: LegStatus) -> bool:
    """True when a ledger already shows decision ``kind`` applied for the transfer: COMMIT
    by a BURNED source or a MINTED target, ABORT by a RELEASED source or an ABORTED target.

    SECURITY: these states follow only from a committee certificate of that decision that
    the ledger verified, so the outcome is fixed; a quarantined member (restored vote log)
    may sign it without risking a contradiction that could change anything."""
    if kind is ClaimKind.COMMIT:
        return source.state is LegState.BURNED or target.state is LegState.MINTED
    if kind is ClaimKind.ABORT:
        return source.state is LegState.RELEASED or target.state is LegState.ABORTED
    return False
