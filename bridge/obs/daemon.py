"""What a daemon's ``run`` calls to be observable: tracing, metrics, readiness (ADR 0016)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import grpc

from bridge.aio import stop_tasks
from bridge.logfields import get_logger
from bridge.obs import tracing
from bridge.obs.config import ObservabilityConfig
from bridge.obs.metrics import CommonMetrics, MetricsEndpoint, serve_metrics
from bridge.obs.readiness import HealthTarget, Probe, Readiness
from bridge.obs.rpc import ObservingInterceptor


class DaemonObservability:
    """Created first in a daemon's ``run`` (so channels made later carry trace context);
    :meth:`start` after the gRPC server started NOT_SERVING; :meth:`close` at stop.

    Guarantees: health stays NOT_SERVING until every gating probe passed once, and follows
    the probes afterwards; ``/metrics`` is served only when ``[metrics] listen`` is set.
    """

    def __init__(self, component: str, cfg: ObservabilityConfig) -> None:
        self.cfg = cfg
        self.component = component
        tracing.setup_tracing(cfg.tracing, component)
        self.metrics = CommonMetrics.create(component)
        self.interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = [
            ObservingInterceptor(self.metrics)
        ]
        self.endpoint: MetricsEndpoint | None = None
        self.readiness: Readiness | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(
        self,
        server: HealthTarget,
        probes: list[Probe],
        stop: asyncio.Event,
        *loops: Coroutine[Any, Any, None],
    ) -> None:
        """Serve ``/metrics``, run the first probe round (so health is decided before this
        returns), then keep probing and run ``loops`` (metric refreshers) until ``stop``."""
        self.endpoint = serve_metrics(self.cfg.metrics, self.metrics.registry)
        if self.endpoint is not None:
            get_logger().info("metrics served", port=self.endpoint.port)
        self.readiness = Readiness(
            server, probes, self.metrics, interval=self.cfg.metrics.probe_interval
        )
        await self.readiness.check_once()
        self._tasks = [asyncio.create_task(self.readiness.run(stop))]
        self._tasks += [asyncio.create_task(loop) for loop in loops]

    def add_loop(self, loop: Coroutine[Any, Any, None]) -> None:
        """Run one more loop (started after :meth:`start`) until :meth:`close`."""
        self._tasks.append(asyncio.create_task(loop))

    async def recheck(self) -> None:
        """Run one probe round now (health follows at once, not at the next interval)."""
        if self.readiness is not None:
            await self.readiness.check_once()

    async def close(self) -> None:
        """Stop the probes and loops, the ``/metrics`` server and the span exporter."""
        await stop_tasks(self._tasks)  # the caller's own cancel is never swallowed
        if self.endpoint is not None:
            self.endpoint.close()
        tracing.shutdown()
