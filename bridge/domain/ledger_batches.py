"""Batched ledger steps (issue 14 item 2, ADR 0025): what every ledger kind takes and answers.

One invocation (an EVM transaction, a chaincode invocation, a CometBFT transaction) applies
one action to many transfers: ``LOCK`` with each item's instruction, or ``PREPARE``,
``COMMIT``, ``ABORT`` with each item's inclusion proof under ONE batch certificate. The
ledger answers one :class:`BatchItemResult` per item, in item order. A refusal refuses
the whole invocation, nothing applied: ``LedgerRejected`` with its ``ErrorReason`` and,
where one item caused it, that item's index as the integer figure ``item``
(:func:`refused_item`), so the sender can drop that item and send the rest again.

Plain typed values shared by the ledger plugins, the relayer and the coordinator; no
ledger kind's encoding lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.domain.errors import LedgerRejected, Unavailable
from bridge.domain.legs import Action, Leg, LegState
from bridge.domain.terms import TransferTerms

__all__ = [
    "BATCHED_ACTIONS",
    "BatchAnswerMismatch",
    "BatchItem",
    "BatchItemResult",
    "BatchOutcome",
    "leg_of",
    "refused_item",
]

BATCHED_ACTIONS: frozenset[Action] = frozenset(
    {Action.LOCK, Action.PREPARE, Action.COMMIT, Action.ABORT}
)
"""The actions with a batched ledger function (MARK_EXPIRED has none)."""


class BatchAnswerMismatch(Unavailable):
    """A relayer answered a batched step with results that are not exactly the sent
    transfers and legs in order, or malformed: nothing of it is believed. Retryable like
    any Unavailable; the coordinator's batcher steps those items one by one instead."""


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One item of a batched step: its terms and, for LOCK, the instructor's signature
    (empty for a holder's own lock), otherwise its inclusion proof (sibling hashes, bottom
    up) under the certificate's root."""

    terms: TransferTerms
    instruction: bytes = b""
    proof: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchItemResult:
    """What one item's leg is after the invocation; ``skipped``: it already was (a replay,
    which moves nothing)."""

    transfer_id: bytes
    leg: Leg
    state: LegState
    terms_hash: bytes
    reason: int
    skipped: bool


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """A batched invocation that reached finality, and every item's result in item order."""

    tx_id: str
    height: int
    items: tuple[BatchItemResult, ...]

    @property
    def applied(self) -> int:
        """Items this invocation moved."""
        return sum(1 for i in self.items if not i.skipped)


def leg_of(action: Action, terms: TransferTerms, ledger_word: bytes) -> Leg:
    """Which leg ``action`` moves for ``terms`` on the ledger ``ledger_word``."""
    if action is Action.LOCK:
        return Leg.OUTBOUND
    if action is Action.PREPARE:
        return Leg.INBOUND
    return Leg.OUTBOUND if terms.src_ledger == ledger_word else Leg.INBOUND


def refused_item(refusal: LedgerRejected) -> int | None:
    """The index of the item a batch refusal names (its ``item`` figure), if any."""
    item = refusal.figures.get("item")
    return item if isinstance(item, int) and not isinstance(item, bool) else None
