"""Client channels for the bridge's internal gRPC calls (mutual TLS, reloaded from disk)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import grpc

from bridge.obs import tracing
from bridge.rpc.tls import INSECURE_ENV, ClientIdentity, PlaintextRefused

CONNECT_TIMEOUT_MS = 20_000
"""How long one connection attempt (TCP connect, TLS handshake, HTTP/2 preface) may take.

gRPC names this ``grpc.min_reconnect_backoff_ms`` (the MIN_CONNECT_TIMEOUT of its
connection-backoff protocol, not a backoff: the subchannel's connect deadline is
``max(now + this, next backoff)``). It must cover a mutual-TLS handshake on a loaded host:
at 100 ms a client cut its own handshakes short ("Handshake read failed (Endpoint
closing)", UNAVAILABLE) whenever the server was slow to answer. A refused peer still fails
at once (connection refused, or the server closing the handshake); only a peer that is
slow to answer is waited for, and each call's own deadline still bounds the wait."""

# A peer that restarts should be reachable again within about a second, not after
# gRPC's default exponential reconnect backoff (which grows to two minutes).
INTERNAL_OPTIONS: list[tuple[str, str | int]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),  # the connect timeout, see above
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]

RELOAD_CHECK_S = 1.0
"""How often (at most) a client looks at its certificate files for a change."""
OLD_CHANNEL_GRACE_S = 30.0
"""How long calls already running on a replaced channel may take to finish."""


def _plaintext_or_refuse(target: str) -> None:
    if os.environ.get(INSECURE_ENV) != "1":
        raise PlaintextRefused(
            f"refusing a plaintext channel to {target}: no TLS identity and {INSECURE_ENV} unset"
        )


def internal_channel(target: str, identity: ClientIdentity | None = None) -> grpc.aio.Channel:
    """An asyncio channel to another bridge component.

    With ``identity``: mutual TLS, the server checked against the CAs and server name of
    the role it must hold. Without: plaintext, refused unless the development flag is set.
    """
    if identity is None:
        _plaintext_or_refuse(target)
        return grpc.aio.insecure_channel(
            target, options=INTERNAL_OPTIONS, interceptors=tracing.client_interceptors()
        )
    return grpc.aio.secure_channel(
        target,
        identity.credentials(),
        options=INTERNAL_OPTIONS + identity.options(),
        interceptors=tracing.client_interceptors(),  # ---- observability (ADR 0016)
    )


def sync_channel(target: str, identity: ClientIdentity | None = None) -> grpc.Channel:
    """:func:`internal_channel` for synchronous callers (CLI, scripts, tests)."""
    if identity is None:
        _plaintext_or_refuse(target)
        return grpc.insecure_channel(target, options=INTERNAL_OPTIONS)
    return grpc.secure_channel(
        target, identity.credentials(), options=INTERNAL_OPTIONS + identity.options()
    )


T = TypeVar("T")


class ReloadingStub(Generic[T]):
    """A stub on an asyncio channel that is rebuilt when the client's TLS files change.

    Guarantees: :meth:`get` returns a stub on a channel built from the files as they are
    (checked at most every :data:`RELOAD_CHECK_S`); calls already running on a replaced
    channel get :data:`OLD_CHANNEL_GRACE_S` to finish before it is closed.
    """

    def __init__(
        self,
        target: str,
        identity: ClientIdentity | None,
        make_stub: Callable[[grpc.aio.Channel], T],
    ) -> None:
        self._target = target
        self._identity = identity
        self._make_stub = make_stub
        self._stamp = identity.stamp() if identity else ()
        self._checked = time.monotonic()
        self._channel = internal_channel(target, identity)
        self._stub = make_stub(self._channel)
        self._retired: set[asyncio.Task[None]] = set()

    def get(self) -> T:
        """The current stub."""
        if self._identity is not None and time.monotonic() - self._checked >= RELOAD_CHECK_S:
            self._checked = time.monotonic()
            stamp = self._identity.stamp()
            if stamp != self._stamp:
                self._rebuild(stamp)
        return self._stub

    def _rebuild(self, stamp: tuple[tuple[str, int, int], ...]) -> None:
        try:
            channel = internal_channel(self._target, self._identity)
        except (OSError, ValueError):
            return  # a file caught half-written: keep the old channel, look again later
        old, self._channel, self._stamp = self._channel, channel, stamp
        self._stub = self._make_stub(channel)
        task = asyncio.get_running_loop().create_task(old.close(OLD_CHANNEL_GRACE_S))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    @property
    def channel(self) -> grpc.aio.Channel:
        """The current channel."""
        self.get()
        return self._channel

    async def close(self) -> None:
        """Close the current channel (and any retired one still draining)."""
        await self._channel.close(None)
        for task in list(self._retired):
            task.cancel()
