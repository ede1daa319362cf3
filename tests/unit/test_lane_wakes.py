"""LaneWakes: a lane's queued transfers woken after one ahead of them leaves without its
capacity, at most once per interval (issue 14; review helper-123 L-a: the bound on what
a brokerage failing its own transfers can cost had no test). Real event-loop timers."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from bridge.coordinator.lane_wakes import FRESH_AFTER_S, LaneWakes

pytestmark = [pytest.mark.unit, pytest.mark.batch]

LANE = ("KR1", "a", "b")
OTHER = ("KR1", "b", "a")


class Drivers:
    """The wake callback: records (time, transfer) and answers whether a driver exists."""

    def __init__(self, gone: frozenset[bytes] = frozenset()) -> None:
        self.woken: list[tuple[float, bytes]] = []
        self.gone = gone

    def __call__(self, tid: bytes) -> bool:
        self.woken.append((time.monotonic(), tid))
        return tid not in self.gone

    def rounds(self) -> list[tuple[float, set[bytes]]]:
        """The wakes grouped by the timer that made them (same instant): its time, whom."""
        out: list[tuple[float, set[bytes]]] = []
        for at, tid in self.woken:
            if out and at - out[-1][0] < 0.05:
                out[-1][1].add(tid)
            else:
                out.append((at, {tid}))
        return out


def tid(n: int) -> bytes:
    return bytes([n]) * 32


async def test_only_the_transfers_behind_are_woken_once_the_reads_are_fresh() -> None:
    drivers = Drivers()
    wakes = LaneWakes(drivers, min_interval=0.2)
    for n, created in ((1, 10.0), (2, 20.0), (3, 30.0)):
        wakes.sleeps(LANE, tid(n), created)
    wakes.sleeps(OTHER, tid(9), 25.0)
    started = time.monotonic()
    wakes.freed(LANE, tid(2), 20.0)  # the second one failed before its lock
    await asyncio.sleep(FRESH_AFTER_S - 0.2)
    assert drivers.woken == [], "not before every kept backlog read postdates it"
    await asyncio.sleep(0.5)
    assert [t for _, t in drivers.woken] == [tid(3)], "behind it only, not ahead, not others"
    assert drivers.woken[0][0] - started >= FRESH_AFTER_S
    assert wakes.queued == 3  # 1 and 3 of the lane, 9 of the other
    wakes.close()


async def test_many_departures_wake_a_lane_at_most_once_per_interval() -> None:
    """SECURITY: a brokerage fails twenty of its queued transfers, one every 0.1 s: the
    lane is woken once per interval (1 s here), not twenty times, and the last departure
    is still followed by a wake."""
    drivers = Drivers()
    wakes = LaneWakes(drivers, min_interval=1.0)
    for n in range(30):
        wakes.sleeps(LANE, tid(n), float(n))
    for n in range(20):
        wakes.freed(LANE, tid(n), float(n))
        await asyncio.sleep(0.1)
    last = time.monotonic()
    await asyncio.sleep(FRESH_AFTER_S + 1.2)
    rounds = drivers.rounds()
    assert 2 <= len(rounds) <= 3, rounds  # about 2.0 s of departures, 1 s apart at least
    starts = [at for at, _ in rounds]
    assert all(b - a >= 0.95 for a, b in itertools.pairwise(starts)), starts
    assert starts[-1] >= last + FRESH_AFTER_S - 0.05, "the last departure is followed"
    assert rounds[-1][1] == {tid(n) for n in range(20, 30)}
    wakes.close()


async def test_a_transfer_without_a_driver_is_forgotten_and_close_stops_the_timers() -> None:
    drivers = Drivers(gone=frozenset({tid(2)}))
    wakes = LaneWakes(drivers, min_interval=0.1)
    for n in (1, 2, 3):
        wakes.sleeps(LANE, tid(n), float(n))
    wakes.freed(LANE, tid(1), 1.0)
    await asyncio.sleep(FRESH_AFTER_S + 0.2)
    assert {t for _, t in drivers.woken} == {tid(2), tid(3)}
    assert wakes.queued == 1, "the transfer whose driver is gone is forgotten"
    wakes.sleeps(LANE, tid(4), 4.0)
    wakes.freed(LANE, tid(3), 3.0)
    wakes.close()
    await asyncio.sleep(FRESH_AFTER_S + 0.2)
    assert {t for _, t in drivers.woken} == {tid(2), tid(3)}, "no wake after close"
    assert wakes.queued == 0


async def test_a_transfer_that_goes_wakes_nobody_and_an_empty_lane_arms_nothing() -> None:
    drivers = Drivers()
    wakes = LaneWakes(drivers, min_interval=0.1)
    wakes.sleeps(LANE, tid(1), 1.0)
    wakes.sleeps(LANE, tid(2), 2.0)
    wakes.leaves(LANE, tid(1))  # it went to its lock, taking its capacity
    wakes.freed(OTHER, tid(7), 7.0)  # nobody sleeps there
    await asyncio.sleep(FRESH_AFTER_S + 0.2)
    assert drivers.woken == []
    assert wakes.queued == 1
    wakes.close()
