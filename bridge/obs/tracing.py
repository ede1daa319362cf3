"""OpenTelemetry spans across coordinator -> relayers -> verifiers (ADR 0016).

Off by default: until :func:`setup_tracing` (or :func:`install_provider`) activates it,
every helper here is a no-op costing one attribute read, and ``opentelemetry`` (the
optional ``[tracing]`` extra) is never imported. When active:

* the coordinator opens one root span per transfer step (``transfer.step``) carrying the
  transfer id and state as span attributes (never as metric labels);
* every outgoing internal gRPC call injects the W3C ``traceparent`` into its metadata
  (:func:`client_interceptors`), and every server continues the caller's trace in a span
  named after the method (:func:`server_span`);
* spans go to an OTLP/HTTP collector when ``[tracing] endpoint`` is set.

SECURITY: trace context from a caller is only a correlation id: it never changes what a
server decides, and the servers that take it are behind mutual TLS and the rule table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from bridge.obs.config import TracingConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

R = TypeVar("R")

EXPORT_DELAY_MS = 1000
"""How long finished spans wait in the batch before export."""

_tracer: Tracer | None = None
_provider: TracerProvider | None = None

TRACEPARENT = "traceparent"
ROOT_METHODS = ("/bridge.v1.TransferService/",)
"""Server methods that start a trace of their own when the caller sent none (the brokerage
API); every other server span only continues a caller's trace."""


def active() -> bool:
    """True when spans are being recorded in this process."""
    return _tracer is not None


def install_provider(provider: TracerProvider, component: str) -> None:
    """Record spans with ``provider`` (tests: an in-memory exporter)."""
    global _tracer, _provider  # noqa: PLW0603 - one tracer per process, set once at start-up
    _provider = provider
    _tracer = provider.get_tracer(f"kstb.{component}")


def setup_tracing(cfg: TracingConfig, component: str) -> bool:
    """Activate tracing as ``cfg`` says; return whether it is on.

    Raises ImportError with a clear message when enabled without the ``[tracing]`` extra.
    """
    if not cfg.enabled:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("[tracing] enabled but the kstb[tracing] extra is missing") from exc
    provider = TracerProvider(
        resource=Resource.create({"service.name": cfg.service_name or f"kstb-{component}"}),
        sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)),
    )
    if cfg.endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=cfg.endpoint), schedule_delay_millis=EXPORT_DELAY_MS
            )
        )
    install_provider(provider, component)
    return True


def shutdown() -> None:
    """Flush the spans still batched and stop the exporter (at daemon stop)."""
    global _tracer, _provider
    provider, _tracer, _provider = _provider, None, None
    if provider is not None:
        provider.shutdown()


async def step_span(
    advance: Callable[[Any], Awaitable[R]], record: Any, name: str = "transfer.step"
) -> R:
    """Run one coordinator step of ``record`` (a TransferRecord) inside a new root span."""
    if _tracer is None:
        return await advance(record)
    from opentelemetry import context as otel_context

    # One trace per step: detach from whatever context the driver task carries.
    with _tracer.start_as_current_span(
        name,
        context=otel_context.Context(),
        attributes={
            "kstb.transfer_id": "0x" + bytes(record.transfer_id).hex(),
            "kstb.state": str(record.state.name),
            "kstb.source_ledger": str(record.request.source_ledger),
            "kstb.target_ledger": str(record.request.target_ledger),
        },
    ):
        return await advance(record)


@contextlib.contextmanager
def server_span(method: str, metadata: Sequence[tuple[str, Any]] | None) -> Iterator[None]:
    """Continue the caller's trace (``traceparent`` in ``metadata``) in a server span."""
    if _tracer is None:
        yield
        return
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    carrier = {k: v for k, v in (metadata or ()) if isinstance(v, str)}
    if TRACEPARENT not in carrier and not method.startswith(ROOT_METHODS):
        # Not part of a traced step (a relayer's event poll, a health probe): no span,
        # so background traffic does not flood the collector with one-span traces.
        yield
        return
    with _tracer.start_as_current_span(method, context=extract(carrier), kind=SpanKind.SERVER):
        yield


if TYPE_CHECKING:
    _ClientBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
else:  # the runtime class is not subscriptable
    _ClientBase = grpc.aio.UnaryUnaryClientInterceptor


class _Inject(_ClientBase):
    """Adds the current trace context to every outgoing unary call, in a client span."""

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        if _tracer is None:
            return await continuation(client_call_details, request)
        from opentelemetry.propagate import inject
        from opentelemetry.trace import SpanKind, get_current_span

        if not get_current_span().get_span_context().is_valid:
            # Outside a traced step (event delivery, probes): pass through untraced.
            return await continuation(client_call_details, request)
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        with _tracer.start_as_current_span(name, kind=SpanKind.CLIENT):
            carrier: dict[str, str] = {}
            inject(carrier)
            metadata = list(client_call_details.metadata or ()) + list(carrier.items())
            details = client_call_details._replace(metadata=grpc.aio.Metadata(*metadata))
            call = await continuation(details, request)
            await call  # the span covers the whole call
            return call


def client_interceptors() -> Any:
    """Interceptors for an internal channel: None when tracing is off (zero cost)."""
    return [_Inject()] if _tracer is not None else None
