"""Waking a lane's queued transfers when one ahead of them leaves it without its capacity
(issue 14, ADR 0010 amendment "a deep queue sleeps toward its estimate").

A QUEUED transfer far from room sleeps toward its own estimate, which counts every earlier
transfer of its lane that has not taken its capacity yet. When one of those ends FAILED
before its lock (its deadline, a lowered capacity, a refused lock), the ones behind it
may go sooner than they estimated: :class:`LaneWakes` wakes them. Pure bookkeeping and
timers on the running event loop; the drivers do the reading.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.coordinator.lane_backlogs import MAX_AGE_S, Lane

__all__ = ["FRESH_AFTER_S", "LaneWakes"]

FRESH_AFTER_S = MAX_AGE_S + 0.05
"""How long after a transfer left a lane every kept read of the lane's backlog postdates
it (the store keeps one for :data:`~bridge.coordinator.lane_backlogs.MAX_AGE_S`), so a
woken gate no longer counts it."""


@dataclass(slots=True)
class _Departures:
    """The departures of one lane not yet followed by a wake that saw them."""

    last_at: float  # monotonic time of the latest
    from_created: float  # the earliest ``created_at`` among them


class LaneWakes:
    """Which transfers sleep in which lane's queue, and their wakes after a departure.

    Guarantees:

    - After a transfer of a lane leaves without its capacity (:meth:`freed`), every
      transfer sleeping in that lane's queue created at or after it is woken, no sooner
      than :data:`FRESH_AFTER_S` after the departure (its gate then reads a backlog without
      it) and about ``min_interval`` + :data:`FRESH_AFTER_S` after it at the latest.
    - SECURITY: a lane is woken at most once per ``min_interval`` (the drivers'
      ``max_backoff``), however many transfers leave it: a brokerage failing its own queued
      transfers (a near deadline) causes no more reads than every queued transfer reading
      its lane every ``max_backoff`` did before the deep-queue sleeps. A departure while a
      wake is pending never postpones it; one too recent for it gets one wake more.
    - A transfer whose driver is gone (``wake`` answers False) is forgotten at its lane's
      next wake; :meth:`close` cancels every timer and forgets everything.
    """

    def __init__(
        self,
        wake: Callable[[bytes], bool],
        min_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wake = wake
        self._min_interval = min_interval
        self._clock = clock
        self._queued: dict[Lane, dict[bytes, float]] = {}  # transfer id -> created_at
        self._departures: dict[Lane, _Departures] = {}
        self._woken_at: dict[Lane, float] = {}
        self._timers: dict[Lane, asyncio.TimerHandle] = {}

    def sleeps(self, lane: Lane, tid: bytes, created_at: float) -> None:
        """``tid`` (created at ``created_at``) sleeps in ``lane``'s queue."""
        self._queued.setdefault(lane, {})[tid] = created_at

    def leaves(self, lane: Lane, tid: bytes) -> None:
        """``tid`` left ``lane``'s queue taking its capacity (it goes to its lock)."""
        queued = self._queued.get(lane)
        if queued is not None:
            queued.pop(tid, None)
            if not queued:
                del self._queued[lane]

    def freed(self, lane: Lane, tid: bytes, created_at: float) -> None:
        """``tid`` left ``lane`` without its capacity (FAILED before its prepare): wake the
        transfers queued behind it (see the class guarantees)."""
        self.leaves(lane, tid)
        if lane not in self._queued:
            return
        now = self._clock()
        seen = self._departures.get(lane)
        if seen is None:
            self._departures[lane] = _Departures(now, created_at)
        else:
            seen.last_at = now
            seen.from_created = min(seen.from_created, created_at)
        if lane not in self._timers:
            self._arm(lane)

    @property
    def queued(self) -> int:
        """How many transfers are held as sleeping in a queue (for tests and metrics)."""
        return sum(len(q) for q in self._queued.values())

    def close(self) -> None:
        """Cancel every pending wake and forget every queue (the drivers are stopped)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._queued.clear()
        self._departures.clear()
        self._woken_at.clear()

    def _arm(self, lane: Lane) -> None:
        at = max(
            self._departures[lane].last_at + FRESH_AFTER_S,
            self._woken_at.get(lane, float("-inf")) + self._min_interval,
        )
        delay = max(0.0, at - self._clock())
        self._timers[lane] = asyncio.get_running_loop().call_later(delay, self._fire, lane)

    def _fire(self, lane: Lane) -> None:
        self._timers.pop(lane, None)
        departures = self._departures.get(lane)
        if departures is None:  # forgotten (close) after the timer was set
            return
        now = self._clock()
        self._woken_at[lane] = now
        queued = self._queued.get(lane, {})
        gone = [
            tid
            for tid, created in list(queued.items())
            if created >= departures.from_created and not self._wake(tid)
        ]
        for tid in gone:
            self.leaves(lane, tid)
        if departures.last_at + FRESH_AFTER_S > now and lane in self._queued:
            self._arm(lane)  # a departure too recent for this wake: one more after it
        else:
            del self._departures[lane]
