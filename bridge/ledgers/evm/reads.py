"""Fewer JSON-RPC requests for the same answers (issue 14 item 4): coalesced reads, batched
reads and fee fields per block (the head poll every waiter shares is
:class:`bridge.ledgers.heads.HeadWatch`).

Pure asyncio and tenacity, no ``web3``: the adapter (:mod:`bridge.ledgers.evm.adapter`) gives
each helper the request it would otherwise have sent once per caller.

The rule every helper keeps: an answer is never older than the one the caller would have got
by sending its own request when it called. :class:`FreshRead` and :class:`Batcher` only let a
caller share a request that *starts after* the caller asked; :class:`FeeCache` is the one
value reused across callers, and only within the block it was read for. And a lens answer is
used only for the block it was asked for (:func:`read_at_block`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from bridge.aio import retrieve
from bridge.domain.errors import Unavailable
from bridge.logfields import ERROR, get_logger

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class FreshRead(Generic[T]):
    """One value read for many concurrent callers, never staler than each caller's own read.

    Guarantees: every caller gets the result (or the exception) of a fetch that started after
    the caller called :meth:`get`; at most one fetch runs at a time, and callers arriving while
    one runs share the single next fetch. So N concurrent callers cost at most two requests
    instead of N, and a caller never sees a value read before it asked (the chain head a
    relayer just reported final is never older for a member asking afterwards).
    """

    def __init__(self, fetch: Callable[[], Awaitable[T]]) -> None:
        self._fetch = fetch
        self._current: asyncio.Future[T] | None = None
        self._started = False
        self._next: asyncio.Future[T] | None = None
        self._task: asyncio.Future[None] | None = None
        self.fetches = 0
        """Fetches started (for tests and counters)."""

    async def get(self) -> T:
        """The value from a fetch started at or after this call."""
        if self._current is not None and not self._started:
            fut = self._current  # its request is not sent yet: as fresh as our own
        else:
            if self._next is None:
                self._next = asyncio.get_running_loop().create_future()
                self._next.add_done_callback(retrieve)
            fut = self._next
            if self._current is None:
                self._launch()
        return await asyncio.shield(fut)

    def _launch(self) -> None:
        fut, self._next = self._next, None
        assert fut is not None
        self._current, self._started = fut, False
        self.fetches += 1
        self._task = asyncio.ensure_future(self._run(fut))

    async def _run(self, fut: asyncio.Future[T]) -> None:
        self._started = True  # from here on, a new caller waits for the next fetch
        try:
            value = await self._fetch()
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
        finally:
            self._current = None
            if self._next is not None:  # callers that came during this fetch
                self._launch()


class Batcher(Generic[K, V]):
    """Many concurrent keyed reads answered by one ``fetch(keys)`` per batch.

    Guarantees: each :meth:`get` is answered by a ``fetch`` call that started after it
    (callers queued while a batch runs go in the next one, so freshness is as if each had
    read alone); a batch holds each distinct key once and at most ``max_items`` keys (larger
    queues are split into concurrent fetches); ``fetch`` must return one value per key, in
    order, else every caller of that batch gets ``ValueError``; a failing ``fetch`` fails only
    the callers of its own batch, with its exception. No delay is added: a caller alone is
    fetched at once (after one turn of the event loop, so callers of the same turn share).
    """

    def __init__(self, fetch: Callable[[list[K]], Awaitable[Sequence[V]]], max_items: int) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self._fetch = fetch
        self._max = max_items
        self._queue: list[tuple[K, asyncio.Future[V]]] = []
        self._busy = False
        self._task: asyncio.Future[None] | None = None
        self.batches = 0
        """Fetches made (for tests and counters)."""

    async def get(self, key: K) -> V:
        """The value for ``key`` from a batch fetched after this call."""
        (fut,) = self._enqueue((key,))
        return await asyncio.shield(fut)

    async def get_many(self, keys: Sequence[K]) -> list[V]:
        """The value of each of ``keys``, in order, each as :meth:`get` would answer it
        (from a batch fetched after this call), without a task per key (issue 14: a
        batch's legs were one coroutine, task and shield each). The first failed key's
        exception is raised (as ``asyncio.gather`` would), after every key is answered."""
        futures = self._enqueue(keys)
        if futures:
            await asyncio.shield(asyncio.wait(futures))
        return [f.result() for f in futures]

    def _enqueue(self, keys: Sequence[K]) -> list[asyncio.Future[V]]:
        """Queue ``keys`` for the next batch (starting its drain if none runs)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[V]] = []
        for key in keys:
            fut: asyncio.Future[V] = loop.create_future()
            fut.add_done_callback(retrieve)
            self._queue.append((key, fut))
            futures.append(fut)
        if futures and not self._busy:
            self._busy = True
            self._task = asyncio.ensure_future(self._drain())
        return futures

    async def _drain(self) -> None:
        queued: list[tuple[K, asyncio.Future[V]]] = []
        try:
            await asyncio.sleep(0)  # callers of this same turn join the first batch
            while self._queue:
                queued, self._queue = self._queue, []
                keys = list(dict.fromkeys(k for k, _ in queued))
                chunks = [keys[i : i + self._max] for i in range(0, len(keys), self._max)]
                results = await asyncio.gather(
                    *(self._fetch_chunk(c) for c in chunks), return_exceptions=True
                )
                answers: dict[K, V | BaseException] = {}
                for chunk, result in zip(chunks, results, strict=True):
                    if isinstance(result, BaseException):
                        # A fetch cancelled from within: its callers were not cancelled.
                        error = (
                            Unavailable("batched read cancelled")
                            if isinstance(result, asyncio.CancelledError)
                            else result
                        )
                        answers.update((k, error) for k in chunk)
                    else:
                        answers.update(zip(chunk, result, strict=True))
                for key, fut in queued:
                    if fut.done():
                        continue
                    answer = answers[key]
                    if isinstance(answer, BaseException):
                        fut.set_exception(answer)
                    else:
                        fut.set_result(answer)
                queued = []
        except BaseException as exc:
            # A failure outside the fetch (an unusable key) or the drain cancelled: every
            # caller taken from the queue is answered, never left waiting (review
            # helper-133 L1). A failure is theirs to see; a cancellation, Unavailable.
            failure = exc if isinstance(exc, Exception) else Unavailable("batched read cancelled")
            for _, fut in queued:
                if not fut.done():
                    fut.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._busy = False
            if self._queue:  # a caller came between the last check and here
                self._busy = True
                self._task = asyncio.ensure_future(self._drain())

    async def _fetch_chunk(self, keys: list[K]) -> Sequence[V]:
        self.batches += 1
        values = await self._fetch(keys)
        if len(values) != len(keys):
            raise ValueError(f"batched read returned {len(values)} answers for {len(keys)} keys")
        return values


@dataclass(frozen=True, slots=True)
class _Fees:
    block: int
    fields: dict[str, int]


class FeeCache:
    """A transaction's fee fields, read once per block and reused for every send in it.

    Guarantees: :meth:`get` returns fields only for the block number they were computed from
    (the caller passes the head it knows; no head known: nothing); :meth:`invalidate` (on any
    refused send) forgets them, so the next send reads the node again.

    SECURITY: a cached value can be one block stale, never more: the head passed in is one the
    node reported within two poll intervals (a fifth of a block at most). Staleness can only
    underprice by at most one block's base-fee change (12.5 % on Ethereum, none on Kaia's
    fixed base fee), which the fee cap of twice the base fee covers; the configured
    ``max_gas_price_gwei`` cap is applied before caching, so a cached value never exceeds it.
    """

    def __init__(self) -> None:
        self._fees: _Fees | None = None

    def get(self, head: int | None) -> dict[str, int] | None:
        """The fields read at block ``head``, or None."""
        if head is None or self._fees is None or self._fees.block != head:
            return None
        return dict(self._fees.fields)

    def put(self, block: int, fields: dict[str, int]) -> None:
        """Remember ``fields`` as read at ``block``."""
        self._fees = _Fees(block, dict(fields))

    def invalidate(self) -> None:
        """Forget the cached fields."""
        self._fees = None


LENS_READ_ATTEMPTS = 3
"""How many times a lens read at an explicit block is sent when the node answers for another
block (:func:`read_at_block`)."""


def _log_wrong_block(state: RetryCallState) -> None:
    """Every repeated lens read is logged: a node often answering for another block (a
    load balancer over nodes at different heights) shows in the logs, not only in latency."""
    error = state.outcome.exception() if state.outcome is not None else None
    get_logger().warning(
        "a lens answer reported another block than asked; asking again",
        attempt=state.attempt_number,
        **{ERROR: str(error)},
    )


class WrongBlock(Unavailable):
    """A lens answer dated another block than the one asked: never used (UNAVAILABLE)."""


async def read_at_block(
    read: Callable[[], Awaitable[Sequence[Any]]],
    asked: int | None,
    *,
    ledger: str,
    attempts: int = LENS_READ_ATTEMPTS,
) -> tuple[int, Sequence[Any]]:
    """One lens view read at block ``asked`` (None: the latest): the block the answer reports
    (its first field) and the rest of the answer.

    SECURITY: an answer that reports another block than ``asked`` is never returned; the
    figures in it are another block's. A node answering a call at its head while it mines
    the next block can report that next block (seen on anvil), so the read, which changes
    nothing, is sent again, up to ``attempts`` times in all; then :class:`WrongBlock`
    (an :class:`Unavailable`). Any other error is raised at once, unretried.
    """
    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts),
        retry=retry_if_exception_type(WrongBlock),
        before_sleep=_log_wrong_block,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            answer = await read()
            number = int(answer[0])
            if asked is not None and number != asked:
                raise WrongBlock(f"ledger {ledger}: a read of block {asked} answered {number}")
            return number, answer[1:]
    raise AssertionError("unreachable")  # pragma: no cover - tenacity returns or raises
