"""Shared Prometheus plumbing: one registry per daemon, the ``/metrics`` HTTP endpoint.

Every metric is named ``kstb_*``. Labels come from closed sets only (ledger names of the
network file, securities registered there, state / reason enums, gRPC method names of our
own services): never a transfer id, address or free text, so cardinality stays bounded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

from bridge.obs.config import MetricsConfig

RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
PHASE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


@dataclass
class CommonMetrics:
    """Metrics every daemon exports: readiness, probe results and RPC latency."""

    registry: CollectorRegistry
    ready: Gauge
    probe_up: Gauge
    rpc_seconds: Histogram

    @classmethod
    def create(cls, component: str, registry: CollectorRegistry | None = None) -> CommonMetrics:
        """Register the common metrics on ``registry`` (a fresh one by default)."""
        reg = registry if registry is not None else CollectorRegistry()
        info = Gauge("kstb_build_info", "Constant 1, labelled with the component.", ["component"],
                     registry=reg)  # fmt: skip
        info.labels(component).set(1)
        return cls(
            registry=reg,
            ready=Gauge(
                "kstb_ready", "1 when the gRPC health status is SERVING, else 0.", registry=reg
            ),
            probe_up=Gauge(
                "kstb_probe_up",
                "1 when the readiness probe last succeeded, 0 when it failed.",
                ["probe"],
                registry=reg,
            ),
            rpc_seconds=Histogram(
                "kstb_rpc_server_seconds",
                "Server-side gRPC latency per method and status code.",
                ["method", "code"],
                buckets=RPC_BUCKETS,
                registry=reg,
            ),
        )


class MetricsEndpoint:
    """``/metrics`` served from a daemon thread (prometheus-client's WSGI server)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        """The bound port (useful when the configured port was 0)."""
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(cfg: MetricsConfig, registry: CollectorRegistry) -> MetricsEndpoint | None:
    """Start ``/metrics`` on ``cfg.listen``; None when metrics are off (``listen`` empty)."""
    if not cfg.listen:
        return None
    server, thread = start_http_server(cfg.port, addr=cfg.host, registry=registry)
    return MetricsEndpoint(server, thread)
