"""Map domain errors to precise gRPC status codes at the server boundary."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc

from bridge.domain.errors import (
    BridgeError,
    Conflict,
    InvalidCertificate,
    InvalidInput,
    LedgerRejected,
    NotFound,
    PreconditionFailed,
    Unavailable,
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
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_for(exc: BridgeError) -> grpc.StatusCode:
    """The status code a domain error maps to."""
    for kind, code in STATUS_OF:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


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
            await context.abort(status_for(exc), str(exc))
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
            await context.abort(status_for(exc), str(exc))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            get_logger().exception("unhandled error in stream", **{ERROR: repr(exc)})
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    return cast(S, wrapper)
