"""Heads pushed by an EVM node (``eth_subscribe("newHeads")`` over WebSocket; issue 14 item
4): the EVM :class:`~bridge.ledgers.heads.HeadFeed` and the WebSocket connector with the HTTP
connection's TLS trust and token.

SECURITY: a pushed head is only a hint (:meth:`~bridge.ledgers.heads.HeadWatch.hint`); the
node's chain id is checked against the configured one before any hint from it is used.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

from bridge.ledgers.evm.quantities import MAX_HEAD, quantity
from bridge.ledgers.heads import Connect, Socket, WrongChain, receive, reply

__all__ = ["NewHeads", "websocket_connector"]


def websocket_connector(
    url: str, ssl_context: ssl.SSLContext | None, headers: dict[str, str]
) -> Connect:
    """A :data:`~bridge.ledgers.heads.Connect` for ``url`` with the HTTP connection's TLS
    trust and headers.

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


class NewHeads:
    """``newHeads`` of an EVM node of ``chain_id`` (a :class:`~bridge.ledgers.heads.HeadFeed`).

    Guarantees: no subscription on a node whose ``eth_chainId`` is another chain
    (:class:`~bridge.ledgers.heads.WrongChain`); only a message of this subscription with a
    head object and a strict hex ``number`` (at most MAX_HEAD) is a head."""

    def __init__(self, chain_id: int) -> None:
        self._chain_id = chain_id

    async def subscribe(self, ws: Socket, limit_s: float) -> object:
        """Check ``eth_chainId``, then ``eth_subscribe("newHeads")``: its subscription id."""
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}))
        # Not a quantity (ValueError, in WS_ERRORS): this session ends and another is tried;
        # only a well-formed other chain id stops the subscription for good.
        chain = quantity(reply(await receive(ws, limit_s), 1))
        if chain != self._chain_id:
            raise WrongChain(f"ws endpoint serves chain {chain}, not {self._chain_id}")
        await ws.send(
            json.dumps(
                {"jsonrpc": "2.0", "id": 2, "method": "eth_subscribe", "params": ["newHeads"]}
            )
        )
        return reply(await receive(ws, limit_s), 2)

    def head_of(self, message: object, subscription: object) -> int | None:
        """The ``number`` of a head pushed on ``subscription``; None for anything else."""
        params = message.get("params") if isinstance(message, dict) else None
        if not isinstance(params, dict) or params.get("subscription") != subscription:
            return None
        result = params.get("result")
        # SECURITY: the node's message is untrusted: anything but a head object whose number
        # is a JSON-RPC quantity (strictly ``0x`` hex: no sign, space or underscore, which
        # ``int(x, 16)`` takes) no higher than MAX_HEAD is ignored, never a crash of the
        # subscription. Even a valid one is only a hint (it wakes an ordinary head read).
        number = result.get("number") if isinstance(result, dict) else None
        if not isinstance(number, str):
            return None
        try:
            head = quantity(number)
        except ValueError:
            return None
        return head if head <= MAX_HEAD else None
