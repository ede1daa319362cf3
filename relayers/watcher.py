"""Watch one ledger's bridge events at finality and deliver them, at least once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import grpc

from bridge.aio import wait_event
from bridge.domain.errors import PermissionDenied, Unavailable
from bridge.domain.legs import EventPosition, LedgerEvent
from bridge.ledgers.adapter import LedgerReader
from bridge.logfields import COUNT, ERROR, HEIGHT, LEDGER, get_logger
from relayers.checkpoint import END_OF_BLOCK, CheckpointStore

BATCH = 256
"""Events per delivery call."""
PAGE_BLOCKS = 5_000
"""Blocks per read: the most one ``events`` call scans (bounded pages, checkpointed each)."""
HEAD_WAIT_RETRY_S = 600.0
"""After the ledger refuses head waits (``PermissionDenied``), the watcher polls each
``poll_interval`` for this long before it asks to wait again (an operator may have granted
the right meanwhile)."""


class EventSink(Protocol):
    """Where events go (the coordinator). Returning means durably accepted."""

    async def deliver(
        self, ledger: str, events: Sequence[LedgerEvent], scanned_height: int
    ) -> None:
        """Hand over events; raise if they were not accepted."""
        ...


class HeadWaiter(Protocol):
    """A reader that can wait for a new block (the EVM adapter: pushed heads, polling as
    the fallback; issue 14 item 4)."""

    async def wait_new_head(self, above: int, timeout_s: float) -> int | None:
        """A head above ``above`` from an ordinary read, or None after ``timeout_s``.
        ``PermissionDenied`` when the ledger refuses this identity the wait (the watcher
        then polls instead, and asks again after ``HEAD_WAIT_RETRY_S``)."""
        ...


class EventWatcher:
    """Scans finalized blocks from the checkpoint, delivers, then advances the checkpoint.

    A crash between delivery and checkpoint re-delivers the same events (the coordinator
    deduplicates them); a crash before delivery loses nothing because the checkpoint
    has not moved.
    """

    def __init__(
        self,
        reader: LedgerReader,
        sink: EventSink,
        checkpoints: CheckpointStore,
        poll_interval: float,
        max_backoff: float = 5.0,
        page_blocks: int = PAGE_BLOCKS,
    ) -> None:
        self._reader = reader
        self._sink = sink
        self._checkpoints = checkpoints
        self._poll = poll_interval
        self._max_backoff = max_backoff
        self._page_blocks = max(1, page_blocks)
        self._log = get_logger(**{LEDGER: reader.ledger.name})
        self.delivered = 0
        wait = getattr(reader, "wait_new_head", None)
        self._heads: HeadWaiter | None = reader if callable(wait) else None  # type: ignore[assignment]
        self._seen = -1
        self._heads_refused_until: float | None = None  # loop time; None: waits not refused

    async def step(self) -> int:
        """Deliver everything newly final once, in pages of at most ``page_blocks`` blocks,
        each checkpointed when delivered; return how many events went out.

        Guarantees: memory is bounded by one page however far behind the checkpoint is (a
        relayer back from a long outage), and a crash loses at most the page in flight,
        which is delivered again (the coordinator deduplicates)."""
        position = self._checkpoints.load()
        final = await self._reader.finalized_height()
        # The next head wait is for a block after this one (review s23: a wait for an older
        # height answers at once without asking the ledger whether it may wait). An EVM
        # head wait answers raw heads, at least this finalized height: max keeps the larger.
        self._seen = max(self._seen, final)
        if position is not None and final <= position.height and position.index == END_OF_BLOCK:
            return 0
        total = 0
        while True:
            scanned = 0 if position is None else position.height
            up_to = min(final, scanned + self._page_blocks)
            events = await self._reader.events(position, up_to)
            for start in range(0, len(events), BATCH):
                chunk = events[start : start + BATCH]
                last = chunk[-1].position
                await self._sink.deliver(self._reader.ledger.name, chunk, last.height)
                self._checkpoints.save(last)
            position = EventPosition(up_to, END_OF_BLOCK)
            self._checkpoints.save(position)
            total += len(events)
            if up_to >= final:
                break
        if not total:  # still report progress, so the coordinator can say what it waits for
            await self._sink.deliver(self._reader.ledger.name, [], final)
        if total:
            self._log.info("events delivered", **{COUNT: total, HEIGHT: final})
        self.delivered += total
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Loop until ``stop`` is set, backing off while the ledger or coordinator is down.

        After a successful scan, a reader that can wait for a new block (:class:`HeadWaiter`)
        is waited on instead of sleeping ``poll_interval`` (the wait itself falls back to
        polling when heads are not pushed); the scan itself reads finality as always. A
        reader that refuses the wait (``PermissionDenied``) is polled each ``poll_interval``
        instead, with one warning, and asked again after ``HEAD_WAIT_RETRY_S``."""
        backoff = self._poll
        while not stop.is_set():
            try:
                await self.step()
                backoff = self._poll
                if self._heads is not None and self._may_wait_for_heads():
                    await self._next_head(stop)
                    continue
            except (Unavailable, grpc.aio.AioRpcError, OSError) as exc:
                self._log.warning("delivery paused, will retry", **{ERROR: str(exc)[:300]})
                backoff = min(self._max_backoff, backoff * 2)
            except Exception:
                # Never skip past an event we could not handle: the checkpoint stays put.
                self._log.exception("event scan failed, will retry")
                backoff = min(self._max_backoff, backoff * 2)
            await wait_event(stop, backoff)

    def _may_wait_for_heads(self) -> bool:
        """False while a refusal of head waits is recent (the watcher polls meanwhile)."""
        if self._heads_refused_until is None:
            return True
        return asyncio.get_running_loop().time() >= self._heads_refused_until

    async def _next_head(self, stop: asyncio.Event) -> None:
        """Until a head above the last one seen, ``stop``, or a bounded wait (then rescan)."""
        assert self._heads is not None
        waiter = asyncio.ensure_future(
            self._heads.wait_new_head(self._seen, max(1.0, 20 * self._poll))
        )
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not waiter.done():
                waiter.cancel()
        if waiter.done() and not waiter.cancelled():
            try:
                head = waiter.result()
            except PermissionDenied as exc:
                # Not a failure of the ledger: this identity may not wait (e.g. a Fabric
                # channel's event/FilteredBlock ACL stricter than Readers). Poll instead.
                if self._heads_refused_until is None:
                    self._log.warning(
                        "the ledger refuses head waits; polling each poll_interval, asking"
                        f" again every {HEAD_WAIT_RETRY_S:.0f} s",
                        **{ERROR: str(exc)[:300]},
                    )
                self._heads_refused_until = asyncio.get_running_loop().time() + HEAD_WAIT_RETRY_S
                return
            except Exception as exc:  # the next scan reports it; do not spin meanwhile
                self._log.warning("head wait failed", **{ERROR: str(exc)[:300]})
                await wait_event(stop, self._poll)
                return
            if self._heads_refused_until is not None:
                self._heads_refused_until = None
                self._log.info("the ledger accepts head waits again")
            if head is not None:
                self._seen = head
