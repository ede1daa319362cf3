"""A gRPC server interceptor timing every call and continuing the caller's trace."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc

from bridge.obs import tracing
from bridge.obs.metrics import CommonMetrics


def _code(context: Any, default: str) -> str:
    try:
        code = context.code()
    except Exception:  # pragma: no cover - depends on the grpc version
        return default
    if code is None:
        return default
    return str(getattr(code, "name", code))


if TYPE_CHECKING:
    _Base = grpc.aio.ServerInterceptor[Any, Any]
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:  # the runtime classes are not subscriptable
    _Base = grpc.aio.ServerInterceptor
    _Handler = grpc.RpcMethodHandler


class ObservingInterceptor(_Base):
    """Records ``kstb_rpc_server_seconds{method,code}`` for every call, including the ones
    the authorisation interceptor refuses (it sits outside it), and opens a server span
    when tracing is on. The method label is the full gRPC method name: a closed set."""

    def __init__(self, metrics: CommonMetrics) -> None:
        self._hist = metrics.rpc_seconds

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        hist = self._hist
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                start = time.perf_counter()
                code = "OK"
                try:
                    with tracing.server_span(method, metadata):
                        return await inner(request, context)
                except grpc.aio.AbortError:
                    code = _code(context, "UNKNOWN")
                    raise
                except Exception:
                    code = "INTERNAL"
                    raise
                finally:
                    if code == "OK":
                        code = _code(context, "OK")
                    hist.labels(method, code).observe(time.perf_counter() - start)

            return handler._replace(unary_unary=unary)  # type: ignore[attr-defined, no-any-return]
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: Any) -> None:
                # The inner handler is an async generator, or (wrapped by the authorisation
                # interceptor) a coroutine writing with ``context.write``: serve both.
                start = time.perf_counter()
                code = "OK"
                try:
                    with tracing.server_span(method, metadata):
                        result = inner_stream(request, context)
                        if hasattr(result, "__aiter__"):
                            async for item in cast(AsyncIterator[Any], result):
                                await context.write(item)
                        else:
                            await cast(Awaitable[None], result)
                except grpc.aio.AbortError:
                    code = _code(context, "UNKNOWN")
                    raise
                except Exception:
                    code = "INTERNAL"
                    raise
                finally:
                    hist.labels(method, code).observe(time.perf_counter() - start)

            return handler._replace(unary_stream=stream)  # type: ignore[attr-defined, no-any-return]
        return handler
