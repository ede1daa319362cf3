"""One nonce owner per sending key: serialised allocation, resync on nonce errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class NonceManager:
    """Hands out consecutive nonces for one account; the only writer of that account.

    A nonce is consumed only when the send that used it succeeded; :meth:`resync`
    re-reads the ledger's pending count after a "nonce too low" / "already known" error.
    """

    def __init__(self, fetch_pending_count: Callable[[], Awaitable[int]]) -> None:
        self._fetch = fetch_pending_count
        self._next: int | None = None
        self.lock = asyncio.Lock()

    async def current(self) -> int:
        """The nonce the next send must use (call with :attr:`lock` held)."""
        if self._next is None:
            self._next = await self._fetch()
        return self._next

    def suspect(self) -> None:
        """A sent transaction went missing: re-read the count before the next send."""
        self._next = None

    def consumed(self) -> None:
        """Record that the current nonce was accepted by the ledger."""
        assert self._next is not None
        self._next += 1

    async def resync(self) -> int:
        """Forget the local counter and re-read it from the ledger."""
        self._next = await self._fetch()
        return self._next
