"""The words a transfer's ``reason`` is written in: bounded, and never a ledger's free text.

Pure functions of their arguments; the coordinator's layers (``admission.py``,
``flow_limits.py``, ``stepper.py``, ``supervision.py``, ``engine.py``) use them so a
brokerage reads the same wording whichever layer wrote it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from bridge.domain.errors import LedgerRejected, PreconditionFailed
from bridge.domain.legs import LegState, RejectReason

# SECURITY (review 2 finding 6): a transfer's ``reason`` is read by brokerages. A ledger's
# refusal is reported by its typed reason and ledger only, never its free text (a Fabric
# peer's MSP and address, a chaincode exception's message); any other text is bounded.
# The full detail is in the coordinator's log.
_REASON_MAX = 240

LOCKING = "locking units on the source ledger"
"""The reason of a SUBMITTED transfer whose lock is under way (admission writes it, the
stepper repeats it, and a brokerage of the target ledger reads it in place of the source
side's reason)."""

NOT_LOCKED_PAST_DEADLINE = "not locked: its deadline passed before the lock, nothing moved"
"""Why a transfer that was let go to its lock after its deadline ended FAILED (the flow
gate and the lock step say it alike)."""


def generic(exc: LedgerRejected, ledger: str = "") -> str:
    """``exc`` as a brokerage may read it: the ledger (``exc``'s, else ``ledger``) and the
    typed reason."""
    where = exc.ledger or ledger or "the ledger"
    return f"{where} refused the step ({exc.reason.value})"


def generic_refusal(exc: LedgerRejected, ledger: str = "") -> PreconditionFailed:
    """``exc`` as a brokerage may receive it when it refuses a request: :func:`generic`'s
    words, with the typed reason and the ledger (``exc``'s, else ``ledger``: the one that
    was asked) as the error's ``reason`` and ``ledger`` (its ErrorInfo), so the caller acts
    on the reason without reading it out of the text. The refusal's own text and figures
    stay with ``exc`` (the cause it is raised from), never in what the caller receives."""
    return PreconditionFailed(generic(exc, ledger), exc.reason, exc.ledger or ledger)


def bounded(text: str) -> str:
    """``text`` cut to at most 240 characters (an ellipsis marks a cut)."""
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


def refusal(target: LegState, reason_code: int) -> str:
    """Why a target leg refused, in words ('' when it did not)."""
    if target is LegState.REJECTED or reason_code:
        return f"target rejected: {RejectReason.describe(reason_code)}"
    if target is LegState.EXPIRED:
        return "target did not prepare before the deadline"
    return ""


def iso(ts: float) -> str:
    """``ts`` (seconds since the epoch) as a UTC ISO-8601 timestamp to the second."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
