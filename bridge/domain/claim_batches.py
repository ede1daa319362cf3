"""Batched claims (issue 14, ADR 0025): how a member refuses a batch, item by item.

A member signs a batch of claims only if it would sign every item alone (``SignClaim``'s
check); otherwise it signs nothing and reports each refused item with the typed reason
``SignClaim`` would have given it, so the coordinator can drop those items and ask again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import BridgeReason, PreconditionFailed

__all__ = ["ClaimsRefused", "RefusedItem"]


@dataclass(frozen=True, slots=True)
class RefusedItem:
    """One refused item of a batch: its index in the request and why (a reason of the
    closed sets, never text to parse)."""

    index: int
    reason: ErrorReason | BridgeReason
    retryable: bool
    message: str


class ClaimsRefused(PreconditionFailed):
    """A batch of claims was refused as a whole because of ``items`` (sorted by index,
    at least one); nothing was signed and no vote recorded."""

    kind = BridgeReason.CLAIM_REFUSED

    def __init__(self, items: Sequence[RefusedItem]) -> None:
        ordered = tuple(sorted(items, key=lambda i: i.index))
        if not ordered:
            raise ValueError("a refused batch names at least one refused item")
        first = ordered[0]
        super().__init__(
            f"{len(ordered)} of the batch's items refused, nothing signed; first: item"
            f" {first.index}: {first.message}"
        )
        self.items = ordered
