"""Units queued ahead on a flow-limited lane, read once a second at most (issue 14, review
helper-117 #2).

The flow-limit gate (:mod:`bridge.coordinator.flow_limits`) asks, at every wake of every
QUEUED transfer, how many units of its lane's earlier transfers have not consumed the
capacity yet (``TransferStore.lane_backlog``). Read row by row for each question, N queued
transfers cost N reads of up to N rows per round on the database thread every institution
shares: one brokerage queueing thousands of its own small transfers slowed every
institution's submissions a hundredfold. :class:`LaneBacklogs` keeps, per lane and set of
states, the prefix sums of one read of the lane and the transfers created on it since, so
a question is a bisection; the lane is read again at most every :data:`MAX_AGE_S`.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.coordinator.records import TransferRequest

__all__ = ["MAX_AGE_S", "MAX_ARRIVALS", "MAX_KEPT", "Lane", "LaneBacklogs", "lane_of"]

Lane = tuple[str, str, str]
"""(security, source ledger, target ledger)."""


def lane_of(request: TransferRequest) -> Lane:
    """The flow-limit lane of ``request``: (security, source ledger, target ledger)."""
    return (request.security, request.source_ledger, request.target_ledger)


MAX_AGE_S = 1.0
"""Longest a lane's read answers: transfers that left the states since (locked, failed)
are still counted until then, so a transfer behind them computes its wait from a larger
backlog (up to its driver's longest backoff more)."""

MAX_KEPT = 256
"""Most (lane, states) reads kept; past it all are dropped and read again as asked."""

MAX_ARRIVALS = 100_000
"""Most transfers created since the reads that one lane remembers; past it its reads are
dropped."""


@dataclass(frozen=True, slots=True)
class _Read:
    epoch: tuple[int, int]
    """(every lane's epoch, this lane's epoch) when the read began."""
    read_at: float
    last_seq: int
    """The highest store sequence when the lane was read: the read holds exactly the rows
    up to it (one writer: rows commit in sequence order)."""
    seqs: Sequence[int]
    """The store sequence of every row of the lane in the states, ascending."""
    prefix: Sequence[int]
    """``prefix[i]``: the units of the rows before ``seqs[i]`` (one more entry: the total)."""


class LaneBacklogs:
    """The units ahead of a position on a lane: its last read, plus what was created since.

    GUARANTEES: :meth:`ahead` answers at least what a read of the lane now would (never
    less: no transfer overtakes an earlier one because of it), and exactly that while no
    counted transfer has left the states since the read; it answers None (the caller reads
    the lane and :meth:`keep` s it) when the read is older than :data:`MAX_AGE_S`, when a
    transfer entered its states from outside since (:meth:`moved`, :meth:`changed_all`: a
    resume), when a write of its lane may have gone unrecorded (:meth:`changed`), or for a
    position created after it that was not recorded with :meth:`created`. Callers record
    creations and moves after their commits, call :meth:`begin` before reading a lane and
    :meth:`keep` (or :meth:`abandon`) after, so a creation committed after a read's
    snapshot is remembered for it. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._epoch = 0
        self._reads: dict[tuple[Lane, tuple[int, ...]], _Read] = {}
        self._arrivals: dict[Lane, list[tuple[int, int, int]]] = {}  # (seq, units, state)
        self._reading: dict[tuple[Lane, tuple[int, ...]], int] = {}  # begun, not kept
        self._lane_epochs: dict[Lane, int] = {}

    def begin(self, lane: Lane, states: tuple[int, ...]) -> tuple[int, int]:
        """A read of ``lane``'s transfers in ``states`` begins (its snapshot starts after
        this): the epoch to pass to :meth:`keep`. Creations and moves recorded from now on
        are taken into account for it."""
        with self._lock:
            key = (lane, states)
            self._reading[key] = self._reading.get(key, 0) + 1
            return (self._epoch, self._lane_epochs.get(lane, 0))

    def abandon(self, lane: Lane, states: tuple[int, ...]) -> None:
        """A read begun with :meth:`begin` failed."""
        with self._lock:
            self._done((lane, states))

    def moved(self, lane: Lane, old: int, new: int) -> None:
        """A transfer of ``lane`` changed state from ``old`` to ``new`` (committed). One
        leaving a read's states is still counted by it (never less, until it is read
        again); one entering them from outside makes every read stale (rare: the driver
        re-reading its legs)."""
        if old == new:
            return
        with self._lock:
            keys = [k for k in (*self._reads, *self._reading) if k[0] == lane]
            if any(new in states and old not in states for _, states in keys):
                self._stale()

    def created(self, lane: Lane, seq: int, units: int, state: int) -> None:
        """A transfer was created on ``lane`` (committed) with store sequence ``seq``."""
        with self._lock:
            if not self._is_reading(lane):
                now = self._clock()
                if all(now - r.read_at > MAX_AGE_S for r in self._reads_of(lane).values()):
                    # No read of the lane begun, none young enough to answer: the next
                    # question reads it again, with this transfer.
                    self._drop(lane)
                    self._arrivals.pop(lane, None)
                    return
            arrivals = self._arrivals.setdefault(lane, [])
            arrivals.append((seq, units, state))
            if len(arrivals) > MAX_ARRIVALS:
                self._forget(lane)

    def changed(self, lanes: Iterable[Lane]) -> None:
        """Transfers of ``lanes`` may have been created or moved without being recorded
        (a write cancelled or failed, perhaps after its commit): those lanes' reads, kept
        or running, are stale; other lanes' stay."""
        with self._lock:
            for lane in set(lanes):
                self._lane_epochs[lane] = self._lane_epochs.get(lane, 0) + 1
                self._drop(lane)
                if not self._is_reading(lane):
                    self._arrivals.pop(lane, None)

    def changed_all(self) -> None:
        """A transfer of a lane not known here entered the states from outside them (a
        resume from FAILED): every read is stale."""
        with self._lock:
            self._stale()

    def ahead(self, lane: Lane, states: tuple[int, ...], seq: int) -> int | None:
        """The units of the lane's transfers in ``states`` before ``seq`` (see the class),
        or None: read the lane and :meth:`keep` it."""
        with self._lock:
            read = self._reads.get((lane, states))
            if read is None or read.epoch != (self._epoch, self._lane_epochs.get(lane, 0)):
                return None
            if self._clock() - read.read_at > MAX_AGE_S:
                return None
            arrivals = self._arrivals.get(lane, ())
            if seq > read.last_seq and not any(s == seq for s, _, _ in arrivals):
                return None  # created after the read, by a write not recorded here
            later = sum(
                units for s, units, state in arrivals if read.last_seq < s < seq and state in states
            )
        return read.prefix[bisect_left(read.seqs, seq)] + later

    def keep(
        self,
        lane: Lane,
        states: tuple[int, ...],
        epoch: tuple[int, int],
        last_seq: int,
        rows: Sequence[tuple[int, int]],
    ) -> None:
        """Keep one read of the lane: ``rows`` are (seq, units) of its transfers in
        ``states`` up to ``last_seq``, ascending, read after ``epoch`` was taken."""
        prefix = [0]
        for _, units in rows:
            prefix.append(prefix[-1] + units)
        read = _Read(epoch, self._clock(), last_seq, [s for s, _ in rows], prefix)
        with self._lock:
            self._done((lane, states))
            if epoch != (self._epoch, self._lane_epochs.get(lane, 0)):
                return  # a resume, or an unrecorded write of the lane, since it began
            if len(self._reads) >= MAX_KEPT:
                self._reads.clear()
                # Review helper-118 #1: not this lane's creations, which the read being
                # kept needs (it is no longer among those being read).
                reading = {k[0] for k in self._reading} | {lane}
                self._arrivals = {k: v for k, v in self._arrivals.items() if k in reading}
            self._reads[(lane, states)] = read
            # Creations the oldest read of the lane holds are no longer needed (unless a
            # read of it is still running: its snapshot may be older).
            if lane in self._arrivals and not self._is_reading(lane):
                oldest = min(r.last_seq for r in self._reads_of(lane).values())
                self._arrivals[lane] = [a for a in self._arrivals[lane] if a[0] > oldest]

    def _done(self, key: tuple[Lane, tuple[int, ...]]) -> None:
        left = self._reading.get(key, 0) - 1
        if left > 0:
            self._reading[key] = left
        else:
            self._reading.pop(key, None)

    def _stale(self) -> None:
        """Every read, kept or running, is stale (the lock is held)."""
        self._epoch += 1
        self._reads.clear()
        reading = {k[0] for k in self._reading}
        self._arrivals = {k: v for k, v in self._arrivals.items() if k in reading}

    def _forget(self, lane: Lane) -> None:
        self._epoch += 1  # a read of it still running must not be kept without these
        self._drop(lane)
        self._arrivals.pop(lane, None)

    def _reads_of(self, lane: Lane) -> dict[tuple[Lane, tuple[int, ...]], _Read]:
        """The kept reads of ``lane``, by (lane, states) (the lock is held)."""
        return {k: r for k, r in self._reads.items() if k[0] == lane}

    def _is_reading(self, lane: Lane) -> bool:
        """Whether a read of ``lane`` has begun and is not kept yet (the lock is held)."""
        return any(k[0] == lane for k in self._reading)

    def _drop(self, lane: Lane) -> None:
        """Drop the kept reads of ``lane`` (the lock is held)."""
        for key in self._reads_of(lane):
            del self._reads[key]
