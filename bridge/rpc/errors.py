"""Map domain errors to gRPC statuses with machine-readable details, and back (ADR 0015).

Server side: every :class:`BridgeError` becomes a status whose code follows
:data:`STATUS_OF` and whose ``grpc-status-details-bin`` trailer is a ``google.rpc.Status``
holding one ``google.rpc.ErrorInfo`` (``reason``: an ``ErrorReason`` member name or a
``BridgeReason``; ``domain``: :data:`DOMAIN`; ``metadata``: ``retryable``, ``ledger``,
``error`` (the contract's error name), ``detail`` and the refusal's figures) and, where a
wait is known, a ``google.rpc.RetryInfo``.

Client side: :func:`error_from_rpc` turns a failed call back into the typed error from those
details alone; a missing, garbled or foreign payload yields ``UNKNOWN`` (never trusted,
never a crash).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from bridge.core.reasons import ErrorReason
from bridge.domain.errors import (
    BridgeError,
    BridgeReason,
    Conflict,
    Figure,
    InvalidCertificate,
    InvalidInput,
    LedgerRejected,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    ResourceExhausted,
    Unavailable,
    public_text,
    reason_name,
)
from bridge.logfields import ERROR, get_logger

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
Context = grpc.aio.ServicerContext[Any, Any]
"""The servicer context type every handler takes."""

STATUS_OF: tuple[tuple[type[BridgeError], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (PreconditionFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (LedgerRejected, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidCertificate, grpc.StatusCode.PERMISSION_DENIED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),  # ---- batchfix
)


def status_for(exc: BridgeError) -> grpc.StatusCode:
    """The status code a domain error maps to."""
    for kind, code in STATUS_OF:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


DOMAIN = "kstb.bridge"
"""``ErrorInfo.domain`` of every error the bridge reports."""
DETAILS_KEY = "grpc-status-details-bin"
_MAX_META = 512
"""Longest metadata value sent or accepted (a peer cannot make us hold a huge string)."""
_MAX_FIGURES = 4
_MAX_FIGURE_DIGITS = 79  # a uint256 and its sign
_FIGURE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")

RETRYABLE_REASONS: frozenset[ErrorReason | BridgeReason] = frozenset(
    {
        ErrorReason.TOO_EARLY,
        ErrorReason.FLOW_LIMIT_EXCEEDED,
        ErrorReason.SECURITY_HALTED,
        ErrorReason.TOKEN_PAUSED,
        ErrorReason.WRONG_EPOCH,
        ErrorReason.EPOCH_NOT_ACTIVE,
        ErrorReason.TRANSACTION_TIME_SKEWED,
        ErrorReason.CHAINCODE_INTERNAL,
        ErrorReason.UNKNOWN_REFUSAL,
        BridgeReason.UNAVAILABLE,
        BridgeReason.HALTED,
        BridgeReason.FLOW_LIMIT_QUEUED,
        BridgeReason.INTERNAL,
        BridgeReason.NOT_LEADER,
        BridgeReason.UNKNOWN,
        BridgeReason.DATABASE_UNAVAILABLE,
        BridgeReason.RESOURCE_EXHAUSTED,  # ---- batchfix: once the caller released one
    }
)
"""Reasons after which the same request may succeed later unchanged (``retryable=true``)."""


def reason_of(exc: BridgeError) -> ErrorReason | BridgeReason:
    """The closed-set reason ``exc`` reports: its ledger reason if any, else its class's."""
    if isinstance(exc, LedgerRejected):
        return exc.reason
    if isinstance(exc, InvalidCertificate | PreconditionFailed) and exc.reason is not None:
        return exc.reason
    return exc.kind


def status_details(exc: BridgeError, now: float | None = None) -> status_pb2.Status:
    """The ``google.rpc.Status`` (code, message, ErrorInfo, RetryInfo) for ``exc``."""
    reason = reason_of(exc)
    meta: dict[str, str] = {"retryable": "true" if reason in RETRYABLE_REASONS else "false"}
    if isinstance(reason, ErrorReason):
        meta["error"] = reason.value
    ledger = getattr(exc, "ledger", "")
    if isinstance(ledger, str) and ledger:
        meta["ledger"] = ledger[:_MAX_META]
    leader = getattr(exc, "leader_address", "")
    if isinstance(leader, str) and leader:
        meta["leader"] = leader[:_MAX_META]  # ---- active/passive coordinators (ADR 0017)
    if isinstance(exc, LedgerRejected):
        if exc.detail:
            meta["detail"] = exc.detail[:_MAX_META]
        meta.update(_wire_figures(exc.figures))
    info = error_details_pb2.ErrorInfo(reason=reason_name(reason), domain=DOMAIN, metadata=meta)
    details = [info]
    retry: error_details_pb2.RetryInfo | None = None
    if isinstance(exc, LedgerRejected) and exc.not_before is not None:
        wait = max(0, exc.not_before - int(now if now is not None else time.time()))
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=wait))
    packed = []
    for d in [*details, *([retry] if retry is not None else [])]:
        item = any_pb2.Any()
        item.Pack(d)
        packed.append(item)
    code = status_for(exc)
    # SECURITY: the caller may be another organisation: an error's public text, when it has
    # one, never a peer's own words (BridgeError.public).
    return status_pb2.Status(
        code=code.value[0], message=public_text(exc)[:_MAX_META], details=packed
    )


def _wire_figures(figures: Mapping[str, Figure]) -> dict[str, str]:
    """``figure_<name>`` metadata for at most ``_MAX_FIGURES`` integer figures with short
    identifier names and values of at most 78 digits (a uint256); anything else (hex words,
    addresses, long names) is not sent (ADR 0015).

    SECURITY (review 2 finding 7): a trailer is built from a ledger's refusal; it stays
    bounded whatever the ledger (or a peer relaying it) put there."""
    out: dict[str, str] = {}
    for name, value in figures.items():
        if len(out) >= _MAX_FIGURES:
            break
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        text = str(value)
        if _figure_kept(name, text):
            out[f"figure_{name}"] = text
    return out


def _figure_kept(name: str, text: str) -> bool:
    """The rule for a figure sent or received: an identifier name, at most
    :data:`_MAX_FIGURE_DIGITS` characters of value."""
    return bool(_FIGURE_NAME.fullmatch(name)) and len(text) <= _MAX_FIGURE_DIGITS


async def abort_reason(
    context: Context, code: grpc.StatusCode, reason: BridgeReason, message: str
) -> None:
    """Abort with ``code`` and an ErrorInfo of a bridge-level ``reason`` (e.g. the
    authorisation interceptor's PERMISSION_DENIED / UNAUTHENTICATED)."""
    meta = {"retryable": "true" if reason in RETRYABLE_REASONS else "false"}
    item = any_pb2.Any()
    item.Pack(error_details_pb2.ErrorInfo(reason=reason.value, domain=DOMAIN, metadata=meta))
    message = message[:_MAX_META]
    status = status_pb2.Status(code=code.value[0], message=message, details=[item])
    context.set_trailing_metadata(((DETAILS_KEY, status.SerializeToString()),))
    await context.abort(code, message)


async def abort_with(context: Context, exc: BridgeError) -> None:
    """Abort the call with ``exc``'s status code, message and details trailer."""
    status = status_details(exc)
    context.set_trailing_metadata(((DETAILS_KEY, status.SerializeToString()),))
    await context.abort(status_for(exc), status.message)


@dataclass(frozen=True)
class ReceivedError:
    """What a peer's status details say, validated: the reason is always in a closed set.

    ``reason`` is ``BridgeReason.UNKNOWN`` when the details are absent, undecodable, from
    another domain or name a reason outside both sets.
    """

    reason: ErrorReason | BridgeReason
    retryable: bool
    ledger: str
    detail: str
    figures: Mapping[str, Figure]
    retry_after_s: int | None
    leader: str = ""
    """NOT_LEADER: the leader's address the standby named ('' unknown). A hint only: the
    client still checks the leader's certificate like any coordinator's."""


_BY_NAME: dict[str, ErrorReason | BridgeReason] = {
    **{r.name: r for r in ErrorReason},
    **{r.value: r for r in BridgeReason},
}
_UNKNOWN = ReceivedError(BridgeReason.UNKNOWN, False, "", "", {}, None)


def _meta_text(value: str) -> str:
    return value[:_MAX_META]


def received_error(trailing: Iterable[tuple[str, str | bytes]] | None) -> ReceivedError:
    """Decode and validate the ``google.rpc.Status`` details a peer sent; never raises.

    SECURITY: a peer's details are data, not authority: the reason is looked up in the closed
    sets (anything else is UNKNOWN), the contract error name must agree with it, figures are
    kept only when they are decimal integers, and every string is bounded.
    """
    raw = next((v for k, v in (trailing or ()) if k == DETAILS_KEY and isinstance(v, bytes)), None)
    if raw is None:
        return _UNKNOWN
    try:
        status = status_pb2.Status.FromString(raw)
        infos = []
        retry_after: int | None = None
        for item in status.details:
            if item.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                item.Unpack(info)
                infos.append(info)
            elif item.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                item.Unpack(retry)
                retry_after = max(0, int(retry.retry_delay.seconds))
    except Exception:
        return _UNKNOWN
    if len(infos) != 1 or infos[0].domain != DOMAIN:
        return _UNKNOWN
    info = infos[0]
    reason = _BY_NAME.get(info.reason)
    meta = dict(info.metadata)
    if reason is None:
        return _UNKNOWN
    if isinstance(reason, ErrorReason) and meta.get("error") != reason.value:
        return _UNKNOWN
    figures: dict[str, Figure] = {}
    for key, value in sorted(meta.items()):
        name = key.removeprefix("figure_")
        # SECURITY (review helper-115 M1): the rule the sender applies (_wire_figures):
        # identifier names, decimal integers of at most 79 digits, at most four. A peer's
        # figure names are shown to other organisations (a refusal's rebuilt detail).
        if name == key or len(figures) >= _MAX_FIGURES:
            continue
        if value.isdecimal() and _figure_kept(name, value):
            figures[name] = int(value)
    return ReceivedError(
        reason=reason,
        retryable=meta.get("retryable") == "true",
        ledger=_meta_text(meta.get("ledger", "")),
        detail=_meta_text(meta.get("detail", "")),
        figures=figures,
        retry_after_s=retry_after,
        leader=_meta_text(meta.get("leader", "")),
    )


def describe_rpc_error(exc: grpc.RpcError) -> str:
    """``CODE [REASON]: message`` for a failed call, the reason from its validated details."""
    call = cast(Any, exc)
    got = received_error(call.trailing_metadata())
    return f"{call.code().name} [{reason_name(got.reason)}]: {call.details()}"


def _name_ledger(servicer: Any, exc: BridgeError) -> None:
    """Fill a ledger refusal's ``ledger`` from a servicer that serves one ledger
    (``error_ledger``), when the adapter that raised it did not name one."""
    ledger = getattr(servicer, "error_ledger", "")
    if isinstance(exc, LedgerRejected) and not exc.ledger and isinstance(ledger, str):
        exc.ledger = ledger


def grpc_errors(method: F) -> F:
    """Decorate a servicer method: domain errors become statuses, anything else INTERNAL.

    Unexpected exceptions are logged with their traceback server-side; the caller gets a
    short message, never a traceback.
    """

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Context) -> Any:
        try:
            return await method(self, request, context)
        except BridgeError as exc:
            _name_ledger(self, exc)
            await abort_with(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            get_logger().exception("unhandled error in rpc", **{ERROR: repr(exc)})
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    return cast(F, wrapper)


S = TypeVar("S", bound=Callable[..., AsyncIterator[Any]])


def grpc_stream_errors(method: S) -> S:
    """:func:`grpc_errors` for server-streaming methods (async generators)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            async for item in method(self, request, context):
                yield item
        except BridgeError as exc:
            _name_ledger(self, exc)
            await abort_with(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            get_logger().exception("unhandled error in stream", **{ERROR: repr(exc)})
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    return cast(S, wrapper)
