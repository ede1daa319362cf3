"""Blocks pushed by a CometBFT node (a ``subscribe`` to ``tm.event='NewBlockHeader'`` on its
``/websocket``; issue 14 item 4): the CometBFT :class:`~bridge.ledgers.heads.HeadFeed` and an
aiohttp WebSocket connector (the kind's HTTP client; no further dependency).

The node publishes ``NewBlockHeader`` after the application has committed the block, so the
``abci_info`` read a hint triggers already answers that height.

SECURITY: a pushed header is only a hint (:meth:`~bridge.ledgers.heads.HeadWatch.hint`): the
height every waiter sees is the ``abci_info`` read over the HTTP connection. The node's
``status`` must name the configured chain id before any hint from it is used.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

from bridge.ledgers.heads import Connect, Socket, WrongChain, receive, reply

__all__ = ["QUERY", "NewBlockHeaders", "websocket_connector", "websocket_url"]

QUERY = "tm.event='NewBlockHeader'"
"""The subscription's event query."""

MAX_MESSAGE = 2**20
"""Largest message accepted from the node (a header event is a few KiB)."""
CONNECT_S = 10.0
"""Longest wait for a connection and its WebSocket upgrade."""


def websocket_url(rpc_url: str) -> str:
    """The node's WebSocket endpoint for its JSON-RPC URL: ``http(s)://host:port[/path]`` to
    ``ws(s)://host:port[/path]/websocket``; ValueError for another scheme."""
    url = rpc_url.rstrip("/")
    for http, ws in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(http):
            return ws + url[len(http) :] + "/websocket"
    raise ValueError(f"cometbft rpc_url {rpc_url!r} is not http:// or https://")


class _Socket:
    """An aiohttp WebSocket as a :class:`~bridge.ledgers.heads.Socket`: every fault or close
    is a ConnectionError (an OSError, so the subscription reconnects)."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._session = session
        self._ws = ws

    async def send(self, message: str) -> None:
        try:
            await self._ws.send_str(message)
        except (aiohttp.ClientError, RuntimeError) as exc:  # RuntimeError: already closing
            raise ConnectionError(f"cometbft websocket send: {exc!r}") from exc

    async def recv(self) -> str | bytes:
        msg = await self._ws.receive()
        if msg.type is aiohttp.WSMsgType.TEXT:
            return str(msg.data)
        if msg.type is aiohttp.WSMsgType.BINARY:
            return bytes(msg.data)
        raise ConnectionError(f"cometbft websocket {msg.type.name.lower()}")

    async def close(self) -> None:
        try:
            await self._ws.close()
        finally:
            await self._session.close()


def websocket_connector(url: str) -> Connect:
    """A :data:`~bridge.ledgers.heads.Connect` for the node's ``url`` (from
    :func:`websocket_url`): a fresh session per connection, :data:`CONNECT_S` for the
    connection and its upgrade, a ping every 20 s; ``wss://`` verifies the node with the
    default trust, as the HTTP client."""

    async def opener() -> _Socket:
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=10))
        try:
            async with asyncio.timeout(CONNECT_S):  # review s23: the upgrade answer too
                ws = await session.ws_connect(url, heartbeat=20, max_msg_size=MAX_MESSAGE)
        except (aiohttp.ClientError, TimeoutError) as exc:
            await session.close()
            raise ConnectionError(f"cometbft websocket {url}: {exc!r}") from exc
        except BaseException:
            await session.close()
            raise
        return _Socket(session, ws)

    return opener


class NewBlockHeaders:
    """``NewBlockHeader`` events of a CometBFT node of ``chain_id`` (a
    :class:`~bridge.ledgers.heads.HeadFeed`).

    Guarantees: no subscription on a node whose ``status`` names another network
    (:class:`~bridge.ledgers.heads.WrongChain`); only an event of this subscription carrying
    a header with a decimal ``height`` is a head; an error the node sends for the
    subscription (CometBFT cancels slow subscribers that way) ends the session, so the
    watch polls and the subscription reconnects.
    """

    _STATUS_ID = 1
    _SUBSCRIBE_ID = 2

    def __init__(self, chain_id: str) -> None:
        self._chain_id = chain_id

    async def subscribe(self, ws: Socket, limit_s: float) -> object:
        """Check ``status.node_info.network``, then ``subscribe`` to :data:`QUERY`; the id
        the node's events for it carry."""
        await ws.send(
            json.dumps({"jsonrpc": "2.0", "id": self._STATUS_ID, "method": "status", "params": {}})
        )
        status = reply(await receive(ws, limit_s), self._STATUS_ID)
        info = status.get("node_info") if isinstance(status, dict) else None
        network = info.get("network") if isinstance(info, dict) else None
        if not isinstance(network, str):
            raise ValueError(f"cometbft status without node_info.network: {str(status)[:200]}")
        if network != self._chain_id:
            raise WrongChain(f"ws endpoint serves chain {network[:64]!r}, not {self._chain_id!r}")
        await ws.send(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": self._SUBSCRIBE_ID,
                    "method": "subscribe",
                    "params": {"query": QUERY},
                }
            )
        )
        reply(await receive(ws, limit_s), self._SUBSCRIBE_ID)
        return self._SUBSCRIBE_ID

    def head_of(self, message: object, subscription: object) -> int | None:
        """The ``height`` of a header pushed on ``subscription``; None for anything else;
        ValueError when the node ends the subscription with an error."""
        if not isinstance(message, dict) or message.get("id") != subscription:
            return None
        if "error" in message:
            raise ValueError(f"cometbft ended the subscription: {str(message['error'])[:200]}")
        result = message.get("result")
        # SECURITY: the node's message is untrusted: anything but a NewBlockHeader event of
        # our query with a decimal height is ignored, never a crash of the subscription.
        if not isinstance(result, dict) or result.get("query") != QUERY:
            return None
        data = result.get("data")
        value = data.get("value") if isinstance(data, dict) else None
        header = value.get("header") if isinstance(value, dict) else None
        height = header.get("height") if isinstance(header, dict) else None
        if not isinstance(height, str) or not (height.isascii() and height.isdigit()):
            return None
        return int(height) if len(height) <= 19 else None  # int64, as CometBFT's heights
