"""A gRPC server with health checking and reflection, bound to one address."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

Registrar = Callable[[grpc.aio.Server], None]

# ---- batchfix: our clients ping every 20 s on a quiet connection
# (``bridge.rpc.channels.INTERNAL_OPTIONS``). With gRPC's server default (one ping at most
# every 5 minutes without data, then GOAWAY "too_many_pings" after 2 strikes) a call that
# sends nothing for about a minute (a large SubmitTransfers, a quiet WatchBatch or
# WatchTransfer) was cut UNAVAILABLE. Allow a ping every 10 s (half the clients' interval).
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.so_reuseport", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


@dataclass(frozen=True)
class ServerSecurity:
    """How a server authenticates and authorises: TLS credentials (None: development
    plaintext) and the interceptor applying the rule table."""

    credentials: grpc.ServerCredentials | None
    interceptor: grpc.aio.ServerInterceptor[Any, Any]


class BridgeServer:
    """An asyncio gRPC server that serves health (per service) and server reflection."""

    def __init__(
        self,
        listen: str,
        service_names: Iterable[str],
        registrars: Iterable[Registrar],
        security: ServerSecurity | None = None,
        observers: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
        gates: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    ):
        """Bind ``listen``: with mutual TLS and the authorisation interceptor when
        ``security`` is given, else plaintext (callers decide that only through
        :func:`bridge.rpc.security.server_security`, which refuses it outside development).
        ``gates`` run inside each call after authorisation (a standby coordinator's)."""
        self._listen = listen
        self._names = list(service_names)
        self.server = grpc.aio.server(
            options=SERVER_OPTIONS,
            interceptors=[*observers, *([security.interceptor] if security else []), *gates]
            or None,
        )
        for register in registrars:
            register(self.server)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # untyped re-export
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self._names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        if security is not None and security.credentials is not None:
            self.port = self.server.add_secure_port(listen, security.credentials)
        else:
            self.port = self.server.add_insecure_port(listen)
        if self.port == 0:
            raise OSError(f"cannot bind {listen}")

    async def start(self, serving: bool = True) -> None:
        """Start serving; mark every service SERVING, or NOT_SERVING when ``serving`` is
        False (a daemon whose readiness probes decide, :mod:`bridge.obs.readiness`)."""
        await self.server.start()
        await self.set_serving(serving)

    async def set_serving(self, serving: bool) -> None:
        """Set the health status of every service (and of the server as a whole)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in [*self._names, ""]:
            await self.health.set(name, status)

    async def stop(self, grace: float = 3.0) -> None:
        """Mark NOT_SERVING, then stop accepting and drain in-flight calls."""
        for name in [*self._names, ""]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)


def install_stop_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
