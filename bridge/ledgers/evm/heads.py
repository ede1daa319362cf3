"""Heads pushed by the node (``eth_subscribe("newHeads")`` over WebSocket; issue 14 item 4).

A :class:`HeadSubscription` feeds a :class:`~bridge.ledgers.evm.reads.HeadWatch` with hints,
so waiters wake on a new block without polling. On disconnect, a refused subscription or
silence longer than ``silence_s`` the watch falls back to polling and the subscription
reconnects with exponential backoff (tenacity); each change of state is logged once.

SECURITY: a pushed head is only a hint that a block may be new (:meth:`HeadWatch.hint`): the
head every waiter sees, and so finality and every leg or event read, still comes from an
ordinary ``eth_blockNumber`` read over the HTTP connection. A lying or replayed push can delay
a step, never make it look final earlier. The WebSocket connection gets the same TLS trust
(only the configured CA) and ``Authorization`` header as the HTTP one, and its chain id is
checked against the configured one before any hint from it is used.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from typing import Any, Protocol

from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from bridge.ledgers.evm.reads import HeadWatch
from bridge.logfields import ERROR, LEDGER, REASON, get_logger

WS_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, ValueError, KeyError)
"""What ends a session and triggers a reconnect (websockets' own errors are OSError or
ConnectionClosed, added below when websockets is importable)."""

try:  # the [evm] extra brings websockets
    from websockets.exceptions import WebSocketException

    WS_ERRORS = (*WS_ERRORS, WebSocketException)
except ImportError:  # pragma: no cover - the adapter needs the extra anyway
    pass


class WrongChain(Exception):
    """The WebSocket endpoint serves another chain than the configured one: never retried."""


class Socket(Protocol):
    """The part of a WebSocket client connection used here."""

    async def send(self, message: str) -> None: ...
    async def recv(self) -> str | bytes: ...
    async def close(self) -> None: ...


Connect = Callable[[], Any]
"""Opens one connection: an awaitable yielding a :class:`Socket`."""


def websocket_connector(
    url: str, ssl_context: ssl.SSLContext | None, headers: dict[str, str]
) -> Connect:
    """A :data:`Connect` for ``url`` with the HTTP connection's TLS trust and headers.

    SECURITY: ``ssl_context`` is the transport's (only the configured CA; None: the default
    verifying context for ``wss://``); the ``Authorization`` header is sent only over
    ``wss://`` (the config checks refuse a token with a ``ws://`` URL).
    """
    from websockets.asyncio.client import connect

    def opener() -> Any:
        kwargs: dict[str, Any] = {"additional_headers": headers, "open_timeout": 10}
        if url.startswith("wss://") and ssl_context is not None:
            kwargs["ssl"] = ssl_context
        return connect(url, max_size=2**20, ping_interval=20, **kwargs)

    return opener


class HeadSubscription:
    """One ``newHeads`` subscription feeding ``watch``; :meth:`run` until cancelled.

    Guarantees: ``watch.pushed`` is True only between a confirmed subscription on a node of
    ``chain_id`` and the end of that session (close, error, or ``silence_s`` without a
    message); reconnects back off exponentially up to ``max_backoff_s``; a wrong chain id
    stops the subscription for good (polling stays) and is logged as an error.
    """

    def __init__(
        self,
        connect: Connect,
        watch: HeadWatch,
        chain_id: int,
        silence_s: float,
        *,
        ledger: str = "",
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._connect = connect
        self._watch = watch
        self._chain_id = chain_id
        self._silence = silence_s
        self._min = min_backoff_s
        self._max = max_backoff_s
        self._log = get_logger(**{LEDGER: ledger})
        self.sessions = 0
        """Subscriptions confirmed so far."""
        self.heads = 0
        """Heads received so far."""
        watch.silence_s = silence_s

    async def run(self) -> None:
        """Subscribe, feed hints, fall back and reconnect, until cancelled."""
        try:
            while True:
                async for attempt in AsyncRetrying(
                    wait=wait_exponential(multiplier=self._min, max=self._max),
                    retry=retry_if_exception_type(WS_ERRORS),
                    reraise=True,
                ):
                    with attempt:
                        await self._session()
                # A confirmed session ended: pause briefly so a flapping node is not hammered.
                await asyncio.sleep(self._min)
        except WrongChain as exc:
            self._log.error("head subscription refused: wrong chain", **{ERROR: str(exc)})
        finally:
            if self._watch.pushed:
                self._log.info("head subscription stopped")
                self._watch.set_pushed(False)

    async def _session(self) -> None:
        """One connection: raises on a failed connect/subscribe (retried with backoff);
        returns after a confirmed subscription ends (reconnected at once)."""
        ws: Socket = await self._connect()
        try:
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}))
            chain = int(str(_reply(await _recv(ws, self._silence), 1)), 16)
            if chain != self._chain_id:
                raise WrongChain(f"ws endpoint serves chain {chain}, not {self._chain_id}")
            await ws.send(
                json.dumps(
                    {"jsonrpc": "2.0", "id": 2, "method": "eth_subscribe", "params": ["newHeads"]}
                )
            )
            sub = _reply(await _recv(ws, self._silence), 2)
            self.sessions += 1
            if not self._watch.pushed:
                self._log.info("heads pushed by subscription")
            self._watch.set_pushed(True)
            try:
                while True:
                    try:
                        raw = await _recv(ws, self._silence)
                    except TimeoutError:
                        self._fallback("silent")
                        return
                    msg = json.loads(raw)
                    params = msg.get("params") if isinstance(msg, dict) else None
                    if not isinstance(params, dict) or params.get("subscription") != sub:
                        continue
                    result = params.get("result")
                    # SECURITY: the node's message is untrusted: anything but a head object
                    # with a hex number is ignored, never a crash of the subscription.
                    number = result.get("number") if isinstance(result, dict) else None
                    if isinstance(number, str):
                        self.heads += 1
                        self._watch.hint(int(number, 16))
            except WS_ERRORS:
                self._fallback("lost")
                return
        finally:
            await ws.close()

    def _fallback(self, why: str) -> None:
        if self._watch.pushed:
            self._log.warning("head subscription ended, polling", **{REASON: why})
            self._watch.set_pushed(False)


async def _recv(ws: Socket, limit_s: float) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), limit_s)


def _reply(raw: str | bytes, want_id: int) -> Any:
    """The ``result`` of the JSON-RPC reply ``want_id``; ValueError for an error reply."""
    msg = json.loads(raw)
    if not isinstance(msg, dict) or msg.get("id") != want_id or "result" not in msg:
        raise ValueError(f"unexpected ws reply: {str(msg)[:200]}")
    return msg["result"]
