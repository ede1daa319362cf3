"""What a watch is told when its transfers change: which ones, and when to read them all.

The step engine announces every recorded state of a transfer to the transfer's watchers
(``EngineContext.notify``). A watch of one transfer needs only the wake-up; a watch of a
batch (``WatchBatch``, ADR 0023) also needs to know *which* of its transfers moved, so that
a wake reads those transfers only, not every unfinished item of the batch again.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection

__all__ = ["Changes", "WatchReads"]


class Changes:
    """One watch's subscription: the transfers marked since the watch last took them, and
    an event set on every mark.

    Guarantees: a mark is never lost between two ``take`` calls (a mark made while the watch
    reads lands in the next ``take``, with the event set); the marked set holds only ids the
    watch subscribed to, so it is bounded by the watch's own transfers."""

    __slots__ = ("_marked", "event")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self._marked: set[bytes] = set()

    def mark(self, tid: bytes) -> None:
        """Note that ``tid`` changed and wake the watch."""
        self._marked.add(tid)
        self.event.set()

    def take(self) -> set[bytes]:
        """The transfers marked since the last call (and clear the event)."""
        self.event.clear()
        marked, self._marked = self._marked, set()
        return marked


class WatchReads:
    """Which of a batch watch's unfinished transfers its next pass reads: those marked since
    the last pass, and all of them at the first pass and again ``sweep_s`` seconds after the
    end of the last such pass.

    SECURITY (helper-117 #5): a wake used to read every unfinished item of the batch, so one
    caller's four streams over batches of ``max_batch_items`` made every state change of any
    item cost thousands of row probes on the database thread all institutions share. A pass
    now reads what was announced; the periodic sweep bounds how late an update that was
    never announced (written by another process, or a notification missed) is reported,
    even while other items keep waking the stream."""

    __slots__ = ("_changes", "_clock", "_last_sweep", "_sweep_s", "_sweeping")

    def __init__(
        self,
        changes: Changes,
        sweep_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._changes = changes
        self._sweep_s = sweep_s
        self._clock = clock
        self._last_sweep = -math.inf
        self._sweeping = False

    def due(self, unfinished: Collection[bytes]) -> set[bytes]:
        """The transfers of ``unfinished`` to read now: all of them when a sweep is due,
        else those marked since the last call (the marks are taken either way)."""
        marked = self._changes.take()
        now = self._clock()
        if now - self._last_sweep >= self._sweep_s:
            self._last_sweep, self._sweeping = now, True
            return set(unfinished)
        return {tid for tid in marked if tid in unfinished}

    def passed(self) -> None:
        """The pass ended: after a sweep, the period to the next one starts now, so a sweep
        slower than the period (a busy database) is not followed at once by another
        (review helper-119 M1)."""
        if self._sweeping:
            self._last_sweep, self._sweeping = self._clock(), False

    def again(self, tids: Collection[bytes]) -> None:
        """Read ``tids`` at the next pass as well (their page stopped at its row limit)."""
        for tid in tids:
            self._changes.mark(tid)

    def wait_s(self) -> float:
        """How long the watch may wait for a mark before the next sweep is due."""
        return max(0.0, self._last_sweep + self._sweep_s - self._clock())
