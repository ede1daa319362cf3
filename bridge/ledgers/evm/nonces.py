"""One nonce owner per sending key: serialised sends, each nonce read from the node."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class NonceManager:
    """Serialises one account's sends and takes every nonce from the node's pending count.

    Holding :attr:`lock` from reading the nonce until the node has accepted the transaction
    means this process never uses a nonce twice; reading the node's count for every send
    (rather than counting locally) means a transaction the node lost, or one sent by a
    call whose caller gave up, can never leave a gap that later transactions queue behind.
    """

    def __init__(self, fetch_pending_count: Callable[[], Awaitable[int]]) -> None:
        self._fetch = fetch_pending_count
        self.lock = asyncio.Lock()

    async def next_nonce(self) -> int:
        """The nonce the next send must use (call with :attr:`lock` held)."""
        return await self._fetch()
