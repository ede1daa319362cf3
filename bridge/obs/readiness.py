"""Readiness: gRPC health follows what a daemon needs (store, ledger, peers) (ADR 0016).

A daemon starts NOT_SERVING; :class:`Readiness` runs its probes every ``interval`` seconds
and sets every service SERVING only while each *gating* probe passes, NOT_SERVING as soon
as one fails (its ledger or its store is lost), and SERVING again once they all recover.
Non-gating probes (a dependency the daemon can work around) are only reported in
``kstb_probe_up``. A probe is an awaitable that raises (or times out) on failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bridge.aio import wait_event, within
from bridge.logfields import ERROR, get_logger
from bridge.obs.metrics import CommonMetrics

ProbeFn = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Probe:
    """One readiness check: ``name`` (a metric label), the check, and whether it gates."""

    name: str
    check: ProbeFn
    gating: bool = True


class HealthTarget(Protocol):
    """What readiness drives: the daemon's :class:`bridge.rpc.server.BridgeServer`."""

    async def set_serving(self, serving: bool) -> None:
        """Set every service's health status."""
        ...


class Readiness:
    """Drives a server's health from probes; see the module docstring."""

    def __init__(
        self,
        server: HealthTarget,
        probes: list[Probe],
        metrics: CommonMetrics,
        interval: float = 2.0,
        timeout: float = 5.0,
    ) -> None:
        self._server = server
        self._probes = probes
        self._metrics = metrics
        self._interval = interval
        self._timeout = timeout
        self._serving: bool | None = None
        self._log = get_logger()

    @property
    def serving(self) -> bool:
        """The status last set (False before the first round)."""
        return bool(self._serving)

    async def _one(self, probe: Probe) -> str | None:
        try:
            await within(probe.check(), self._timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._metrics.probe_up.labels(probe.name).set(0)
            return f"{type(exc).__name__}: {str(exc)[:200]}"
        self._metrics.probe_up.labels(probe.name).set(1)
        return None

    async def check_once(self) -> bool:
        """Run every probe once, update health and metrics; return whether SERVING."""
        results = await asyncio.gather(*(self._one(p) for p in self._probes))
        failed = {p.name: r for p, r in zip(self._probes, results, strict=True) if r}
        serving = not any(p.gating and p.name in failed for p in self._probes)
        if serving != self._serving:
            await self._server.set_serving(serving)
            self._metrics.ready.set(1 if serving else 0)
            if serving:
                self._log.info("ready: health SERVING")
            else:
                self._log.warning("not ready: health NOT_SERVING", **{ERROR: failed})
        self._serving = serving
        return serving

    async def run(self, stop: asyncio.Event) -> None:
        """Probe until ``stop`` is set."""
        while not stop.is_set():
            await self.check_once()
            await wait_event(stop, self._interval)
