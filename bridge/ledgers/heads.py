"""New blocks without polling, for every ledger kind whose node can push them (issue 14
item 4): one shared head poll (:class:`HeadWatch`) and a WebSocket subscription that wakes it
(:class:`HeadSubscription`), with the kind's subscription protocol as a :class:`HeadFeed`
(EVM ``newHeads``: :mod:`bridge.ledgers.evm.heads`; CometBFT ``NewBlockHeader``:
:mod:`bridge.ledgers.cometbft.heads`).

On disconnect, a refused subscription, or a subscription that stays silent while the chain
moves on (:class:`HeadSubscription`), the watch falls back to polling and the subscription
reconnects with exponential backoff (tenacity); each change of state is logged once.

SECURITY: a pushed head is only a hint that a block may be new (:meth:`HeadWatch.hint`): the
head every waiter sees, and so finality and every leg or event read, still comes from an
ordinary read over the kind's request connection. A lying or replayed push can delay a step,
never make it look final earlier. A feed checks the node's chain before any hint from it is
used (:class:`WrongChain` stops the subscription for good; polling stays).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from bridge.aio import retrieve, wait_event, within
from bridge.logfields import ERROR, LEDGER, REASON, get_logger

__all__ = [
    "WS_ERRORS",
    "Connect",
    "HeadFeed",
    "HeadSubscription",
    "HINT_GAP_S",
    "HeadWatch",
    "Socket",
    "WrongChain",
    "receive",
    "reply",
]

WS_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    ValueError,
    KeyError,
    RecursionError,  # review s23: json.loads of deeply nested input from the node
)
"""What ends a session and triggers a reconnect (a connector raises OSError, or the
websockets library's own errors, added below when it is importable)."""

HINT_GAP_S = 0.05
"""Least time between two reads a push triggers (a flood of pushes: 20 reads a second)."""

try:  # the [evm] extra brings websockets; the CometBFT connector raises OSError only
    from websockets.exceptions import WebSocketException

    WS_ERRORS = (*WS_ERRORS, WebSocketException)
except ImportError:  # pragma: no cover - without it only the CometBFT connector exists
    pass


class HeadWatch:
    """One chain-head poll for every waiter of a process's connection to a node.

    Guarantees: while anyone waits, exactly one poller reads the head every ``poll_s``
    seconds (never one request per waiter), unless another request of the process reported
    the head within that interval (:meth:`observe`), which then serves instead;
    :meth:`wait_above` returns the first head it sees above the height given, so a waiter
    learns of a block at most ``poll_s`` (plus one request) after the node has it, as with
    its own polling; a failed poll is raised to every waiter of that poll (as its own request
    would have failed); with no waiter the poller stops. A head value is only ever a head the
    node reported, possibly up to ``poll_s`` old: a finality wait built on it can be later,
    never earlier, than one built on a fresh read.
    """

    def __init__(self, read_head: Callable[[], Awaitable[int]], poll_s: float) -> None:
        self._read = read_head
        self._poll = poll_s
        self.pushed = False
        """True while a head subscription (:class:`HeadSubscription`) is live: the poller
        then reads only when :meth:`hint` says a block may be new, or
        after ``silence_s`` without one (fallback read)."""
        self.silence_s = 10 * poll_s
        self._hinted = asyncio.Event()
        self.head: int | None = None
        """The last head the node reported (None before the first poll)."""
        self.seen_at = 0.0
        """``time.monotonic()`` of :attr:`head`'s poll."""
        self._tick: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._read_at = 0.0  # loop time of the last read
        self._waiters = 0
        self.polls = 0

    def observe(self, head: int) -> None:
        """A head the node reported to another request of this process (a fresh read, a lens
        call at ``latest``): the poller uses it instead of asking while it is under one poll
        interval old, and a head above :attr:`head` wakes the waiters at once (they would
        otherwise sleep until the next poll, and the push of that block, no longer above
        :attr:`head`, would not wake them). An older value than :attr:`head` is ignored (an
        earlier request that answered late)."""
        if self.head is None or head >= self.head:
            higher = self.head is None or head > self.head
            self.head, self.seen_at = head, time.monotonic()
            tick = self._tick
            if higher and tick is not None and not tick.done():
                self._tick = None  # waiters re-check, and the next wait takes a new tick
                tick.set_result(None)

    def hint(self, head: int) -> None:
        """A head the node pushed (EVM ``newHeads``, CometBFT ``NewBlockHeader``): only a
        hint that a block may be new.

        SECURITY: the pushed number is never stored as :attr:`head` nor given to a waiter; it
        only makes the poller read the head now (``eth_blockNumber``, ``abci_info``) instead
        of at its next tick, and
        waiters see what that read returns. A lying push (a head beyond the node's) costs one
        read and changes nothing; a replayed or stale push (not above :attr:`head`) is
        ignored. Finality and every leg or event read therefore stay answered by ordinary
        reads: a push can delay a step (by silencing the poller until ``silence_s``), never
        make it look final earlier than a read would.
        """
        if self.head is None or head > self.head:
            self._hinted.set()

    async def read_now(self) -> int:
        """Read the head now (one ordinary read over the kind's request connection), keep it
        as :meth:`observe` does and return it; the read's own exception when it fails."""
        head = await self._read()
        self.observe(head)
        return head

    def recent(self, max_age_s: float) -> int | None:
        """:attr:`head` if it was polled at most ``max_age_s`` ago, else None."""
        if self.head is None or time.monotonic() - self.seen_at > max_age_s:
            return None
        return self.head

    async def wait_above(self, height: int, deadline: float) -> int:
        """The first head the poller sees above ``height``; TimeoutError once the loop's
        clock passes ``deadline``; a failed poll's exception."""
        loop = asyncio.get_running_loop()
        self._waiters += 1
        try:
            while self.head is None or self.head <= height:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                tick = self._ensure_poller()
                await within(asyncio.shield(tick), remaining)
            return self.head
        finally:
            self._waiters -= 1

    def _ensure_poller(self) -> asyncio.Future[None]:
        if self._tick is None:
            self._tick = asyncio.get_running_loop().create_future()
            self._tick.add_done_callback(retrieve)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        return self._tick

    async def _run(self) -> None:
        hinted = False
        while self._waiters > 0:
            tick = self._tick
            self._tick = None
            if not hinted and self.recent(self._poll) is not None:
                # Another request just saw the head: as new as a poll would be.
                if tick is not None and not tick.done():
                    tick.set_result(None)
                hinted = await self._pause()
                continue
            self.polls += 1
            self._read_at = asyncio.get_running_loop().time()
            try:
                head = await self._read()
            except Exception as exc:  # every waiter of this poll sees it
                if tick is not None and not tick.done():
                    tick.set_exception(exc)
            else:
                self.head, self.seen_at = head, time.monotonic()
                if tick is not None and not tick.done():
                    tick.set_result(None)
            hinted = await self._pause()

    async def _pause(self) -> bool:
        """Until the next read: ``poll_s`` when polling; while :attr:`pushed`, until a
        :meth:`hint` or ``silence_s`` (then one fallback read). True when a hint ended it
        (the next read is then made even if another request saw a head just now)."""
        if not self.pushed:
            self._hinted.clear()
            await asyncio.sleep(self._poll)
            return False
        hinted = await wait_event(self._hinted, self.silence_s)
        if hinted:
            # SECURITY (review s23): a node pushing ever-higher heads must not turn the
            # watch into back-to-back reads: at most one hinted read per HINT_GAP_S (far
            # below a block interval, so a real block is not delayed in practice).
            gap = self._read_at + HINT_GAP_S - asyncio.get_running_loop().time()
            if gap > 0:
                await asyncio.sleep(gap)
        self._hinted.clear()
        return hinted

    def set_pushed(self, live: bool) -> None:
        """Switch between pushed heads (a subscription is live) and polling; switching
        wakes the poller so a fallback to polling takes effect at once."""
        self.pushed = live
        self._hinted.set()

    async def close(self) -> None:
        """Stop the poller."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None


class WrongChain(Exception):
    """The WebSocket endpoint serves another chain than the configured one: never retried."""


class Socket(Protocol):
    """The part of a WebSocket client connection used here."""

    async def send(self, message: str) -> None: ...
    async def recv(self) -> str | bytes: ...
    async def close(self) -> None: ...


Connect = Callable[[], Any]
"""Opens one connection: an awaitable yielding a :class:`Socket`."""


class HeadFeed(Protocol):
    """One kind's head subscription protocol over a WebSocket."""

    async def subscribe(self, ws: Socket, limit_s: float) -> object:
        """Check the node's chain (:class:`WrongChain` when it is another), subscribe, and
        return what identifies the subscription's messages; raise one of
        :data:`WS_ERRORS` when the node answers otherwise (the session is retried)."""
        ...

    def head_of(self, message: object, subscription: object) -> int | None:
        """The height a parsed message of ``subscription`` pushes, or None for anything else;
        one of :data:`WS_ERRORS` only when the node ends the subscription (the session ends).
        SECURITY: the message is untrusted; anything malformed is None, never a crash."""
        ...


class HeadSubscription:
    """One subscription feeding ``watch`` with hints; :meth:`run` until cancelled.

    Guarantees: ``watch.pushed`` is True only between a confirmed subscription on a node of
    the configured chain and the end of that session: a close or error, or a subscription
    that missed a block. The session reads the head when it begins and after each
    ``silence_s`` without a message (:meth:`HeadWatch.read_now`); when the head read at the
    previous silence is still above every head pushed and the head read at the start, the
    node has had a block the subscription did not push for at least ``silence_s``, and the
    session ends ("silent"). A chain that makes no block (CometBFT without empty blocks, a
    geth authority filling a block) keeps its session however long it is silent, at one read
    per ``silence_s``. A failed read keeps the session (polling would read the same failing
    side) and counts as no evidence. A pushed head the node does not serve a silence later
    was a lie: the floor falls back to the head read, so one lying push cannot keep a dead
    session alive. Reconnects back off exponentially up to ``max_backoff_s``; a wrong chain
    stops the subscription for good (:attr:`refused`; polling stays) and is logged as an
    error once.
    """

    def __init__(
        self,
        connect: Connect,
        watch: HeadWatch,
        feed: HeadFeed,
        silence_s: float,
        *,
        ledger: str = "",
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._connect = connect
        self._watch = watch
        self._feed = feed
        self._silence = silence_s
        self._min = min_backoff_s
        self._max = max_backoff_s
        self._log = get_logger(**{LEDGER: ledger})
        self.refused = False
        """True once the node served another chain: :meth:`run` returned for good, and its
        owner must not start it again (review s23: one error, not one per restart)."""
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
            self.refused = True
            self._log.error("head subscription refused: wrong chain", **{ERROR: str(exc)[:300]})
        finally:
            if self._watch.pushed:
                self._log.info("head subscription stopped")
                self._watch.set_pushed(False)

    async def _session(self) -> None:
        """One connection: raises on a failed connect/subscribe (retried with backoff);
        returns after a confirmed subscription ends (reconnected at once)."""
        ws: Socket = await self._connect()
        try:
            sub = await self._feed.subscribe(ws, self._silence)
            self.sessions += 1
            if not self._watch.pushed:
                self._log.info("heads pushed by subscription")
            self._watch.set_pushed(True)
            covered = await self._head_or_none()  # pushes are for blocks after this one
            unpushed: int | None = None  # the head read at the last silence, if above covered
            try:
                while True:
                    try:
                        raw = await receive(ws, self._silence)
                    except TimeoutError:
                        if unpushed is not None and (covered is None or unpushed > covered):
                            self._fallback("silent")  # a block unpushed for silence_s
                            return
                        read = await self._head_or_none()
                        if read is None:  # the request side fails: polling would fail alike;
                            continue  # the session stays and is judged at the next silence
                        if covered is None or covered > read:
                            # The start is unknown, or a head was pushed that the node still
                            # does not serve a silence later (a lie): count from this read.
                            covered = read
                        unpushed = read if read > covered else None
                        continue
                    head = self._feed.head_of(json.loads(raw), sub)
                    if head is not None:
                        self.heads += 1
                        self._watch.hint(head)
                        covered = head if covered is None else max(covered, head)
            except WS_ERRORS:
                self._fallback("lost")
                return
        finally:
            await ws.close()

    async def _head_or_none(self) -> int | None:
        """The head read now, or None when the read fails (at the start, the first silence's
        read then takes its place; at a silence, it is no evidence either way)."""
        try:
            return await self._watch.read_now()
        except Exception:  # the subscription's liveness only: a waiter's read raises its own
            return None

    def _fallback(self, why: str) -> None:
        if self._watch.pushed:
            self._log.warning("head subscription ended, polling", **{REASON: why})
            self._watch.set_pushed(False)


async def receive(ws: Socket, limit_s: float) -> str | bytes:
    """The next message, or TimeoutError after ``limit_s``."""
    return await within(ws.recv(), limit_s)


def reply(raw: str | bytes, want_id: int) -> Any:
    """The ``result`` of the JSON-RPC reply ``want_id``; ValueError for an error reply or
    anything else."""
    msg = json.loads(raw)
    if not isinstance(msg, dict) or msg.get("id") != want_id or "result" not in msg:
        raise ValueError(f"unexpected ws reply: {str(msg)[:200]}")
    return msg["result"]
