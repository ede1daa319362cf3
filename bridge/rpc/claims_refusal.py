"""The wire form of a refused ``SignClaims`` (ADR 0025): a FAILED_PRECONDITION status whose
``google.rpc.Status`` details hold the usual ErrorInfo (reason CLAIM_REFUSED) and a
``SignClaimsRefusal`` listing every refused item with its typed reason, grouped by reason
as bitmaps so that the trailer stays a few KB for any batch.

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
from bridge.domain.errors import BridgeReason, PreconditionFailed, reason_name
from bridge.rpc.errors import (
    DETAILS_KEY,
    RETRYABLE_REASONS,
    Context,
    reason_of,
    status_details,
    status_for,
)
from bridge.v1 import verifier_pb2

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_REASONS: dict[str, ErrorReason | BridgeReason] = {
    **{r.name: r for r in ErrorReason},
    **{r.value: r for r in BridgeReason},
}
"""Every ``ErrorInfo.reason`` of the closed sets, by its wire name (ADR 0015)."""

MAX_MESSAGE = 200
"""Longest message sent or kept per reason group (a refusal stays small)."""


def refused_item(index: int, exc: PreconditionFailed) -> RefusedItem:
    """``exc`` (a refusal of item ``index``) with the reason ``SignClaim`` would report."""
    reason = reason_of(exc)
    return RefusedItem(index, reason, reason in RETRYABLE_REASONS, str(exc)[:MAX_MESSAGE])


def refusal_status(exc: ClaimsRefused) -> status_pb2.Status:
    """The ``google.rpc.Status`` of ``exc``: its ErrorInfo, then a SignClaimsRefusal with
    one group per reason (a bitmap of the items, the first item's message).

    Guarantees a bounded size whatever the batch: one bitmap of ``ceil(n / 8)`` bytes per
    distinct reason (5,000 items: 625 bytes a reason) plus :data:`MAX_MESSAGE` of text,
    so the trailer stays far below gRPC's 8 KB metadata limit.
    """
    status = status_details(exc)
    size = max(i.index for i in exc.items) + 1
    groups: dict[str, tuple[RefusedItem, bytearray]] = {}
    for item in exc.items:
        name = reason_name(item.reason)
        if name not in groups:
            groups[name] = (item, bytearray((size + 7) // 8))
        groups[name][1][item.index // 8] |= 1 << (item.index % 8)
    detail = verifier_pb2.SignClaimsRefusal(
        groups=[
            verifier_pb2.RefusedClaims(
                reason=name,
                retryable=first.retryable,
                items=bytes(bitmap),
                message=first.message[:MAX_MESSAGE],
            )
            for name, (first, bitmap) in groups.items()
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


def refused_items(
    trailing: Iterable[tuple[str, str | bytes]] | None, count: int
) -> tuple[RefusedItem, ...]:
    """The refused items (sorted by index) a peer's SignClaims refusal lists for a request
    of ``count`` items; () when there is none or the details are garbled. Never raises.

    SECURITY: each reason is looked up in the closed sets (anything else is UNKNOWN), bits
    at or beyond ``count`` are ignored, an item in two groups keeps the first, and every
    message is bounded; a peer's list can only name items of this request.
    """
    raw = next((v for k, v in (trailing or ()) if k == DETAILS_KEY and isinstance(v, bytes)), None)
    if raw is None:
        return ()
    out: dict[int, RefusedItem] = {}
    try:
        status = status_pb2.Status.FromString(raw)
        for any_ in status.details:
            if not any_.Is(verifier_pb2.SignClaimsRefusal.DESCRIPTOR):
                continue
            detail = verifier_pb2.SignClaimsRefusal()
            any_.Unpack(detail)
            for group in detail.groups:
                reason = _REASONS.get(group.reason, BridgeReason.UNKNOWN)
                message = group.message[:MAX_MESSAGE]
                bitmap = bytes(group.items)[: (count + 7) // 8]
                for index in range(min(count, len(bitmap) * 8)):
                    if bitmap[index // 8] >> (index % 8) & 1 and index not in out:
                        out[index] = RefusedItem(index, reason, bool(group.retryable), message)
    except Exception:
        return ()
    return tuple(out[i] for i in sorted(out))


def refusal_of(exc: Any, count: int) -> tuple[RefusedItem, ...]:
    """:func:`refused_items` of a failed call (a ``grpc.aio.AioRpcError``) of ``count``
    items."""
    return refused_items(cast(Any, exc).trailing_metadata(), count)
