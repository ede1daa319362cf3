"""The wire form of a refused ``SignClaims`` (ADR 0025): a FAILED_PRECONDITION status whose
``google.rpc.Status`` details hold the usual ErrorInfo (reason CLAIM_REFUSED) and a
``SignClaimsRefusal`` listing every refused item with its typed reason.

Server side :func:`with_item_refusals` sends it; client side :func:`refused_items` reads it
back from the trailer, validating every reason against the closed sets (a peer's details
are data, not authority).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

from google.rpc import status_pb2

from bridge.core.reasons import ErrorReason
from bridge.domain.claim_batches import ClaimsRefused, RefusedItem
from bridge.domain.errors import BridgeReason, PreconditionFailed
from bridge.rpc.errors import (
    DETAILS_KEY,
    RETRYABLE_REASONS,
    Context,
    reason_of,
    status_details,
    status_for,
    wire_reason,
)
from bridge.v1 import verifier_pb2

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_REASONS: dict[str, ErrorReason | BridgeReason] = {
    **{r.name: r for r in ErrorReason},
    **{r.value: r for r in BridgeReason},
}
"""Every ``ErrorInfo.reason`` of the closed sets, by its wire name (ADR 0015)."""

MAX_MESSAGE = 200
"""Longest per-item message sent or kept (a refusal of 5,000 items stays small)."""


def refused_item(index: int, exc: PreconditionFailed) -> RefusedItem:
    """``exc`` (a refusal of item ``index``) with the reason ``SignClaim`` would report."""
    reason = reason_of(exc)
    return RefusedItem(index, reason, reason in RETRYABLE_REASONS, str(exc)[:MAX_MESSAGE])


def refusal_status(exc: ClaimsRefused) -> status_pb2.Status:
    """The ``google.rpc.Status`` of ``exc``: its ErrorInfo, then a SignClaimsRefusal."""
    status = status_details(exc)
    detail = verifier_pb2.SignClaimsRefusal(
        items=[
            verifier_pb2.RefusedClaim(
                index=i.index,
                reason=wire_reason(i.reason),
                retryable=i.retryable,
                message=i.message[:MAX_MESSAGE],
            )
            for i in exc.items
        ]
    )
    status.details.add().Pack(detail)
    return status


def with_item_refusals(method: F) -> F:
    """Decorate a servicer method (inside ``@grpc_errors``): a ClaimsRefused aborts the call
    with :func:`refusal_status`; every other error goes on unchanged."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Context) -> Any:
        try:
            return await method(self, request, context)
        except ClaimsRefused as exc:
            status = refusal_status(exc)
            context.set_trailing_metadata(((DETAILS_KEY, status.SerializeToString()),))
            await context.abort(status_for(exc), status.message)

    return cast(F, wrapper)


def refused_items(trailing: Iterable[tuple[str, str | bytes]] | None) -> tuple[RefusedItem, ...]:
    """The refused items a peer's SignClaims refusal lists; () when there is none or the
    details are garbled. Never raises.

    SECURITY: each reason is looked up in the closed sets (anything else is UNKNOWN) and
    every message is bounded; indices are returned as sent, the caller checks their range.
    """
    raw = next((v for k, v in (trailing or ()) if k == DETAILS_KEY and isinstance(v, bytes)), None)
    if raw is None:
        return ()
    out: list[RefusedItem] = []
    try:
        status = status_pb2.Status.FromString(raw)
        for any_ in status.details:
            if any_.Is(verifier_pb2.SignClaimsRefusal.DESCRIPTOR):
                detail = verifier_pb2.SignClaimsRefusal()
                any_.Unpack(detail)
                for item in detail.items:
                    reason = _REASONS.get(item.reason, BridgeReason.UNKNOWN)
                    out.append(
                        RefusedItem(
                            int(item.index),
                            reason,
                            bool(item.retryable),
                            item.message[:MAX_MESSAGE],
                        )
                    )
    except Exception:
        return ()
    return tuple(out)


def refusal_of(exc: Any) -> tuple[RefusedItem, ...]:
    """:func:`refused_items` of a failed call (a ``grpc.aio.AioRpcError``)."""
    return refused_items(cast(Any, exc).trailing_metadata())
