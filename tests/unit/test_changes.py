"""Which items a WatchBatch pass reads (bridge.coordinator.changes): the announced ones, and
all of them at the first pass and every sweep period, even while announcements keep coming.
Pure logic on a manual clock; the stream itself is tested in
tests/integration/test_batch_hardening.py."""

from __future__ import annotations

import pytest

from bridge.coordinator.changes import Changes, WatchReads

pytestmark = pytest.mark.batch

A, B, C, D = (bytes([i]) * 32 for i in range(1, 5))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_mark_wakes_the_watch_and_is_taken_once() -> None:
    changes = Changes()
    assert not changes.event.is_set()
    changes.mark(A)
    changes.mark(A)
    changes.mark(B)
    assert changes.event.is_set()
    assert changes.take() == {A, B}
    assert not changes.event.is_set()
    assert changes.take() == set()


def test_the_first_pass_reads_everything_then_only_what_was_marked() -> None:
    clock, changes = Clock(), Changes()
    reads = WatchReads(changes, 5.0, clock)
    changes.mark(C)  # marked before the first pass: taken by it, not read twice
    assert reads.due([A, B, C]) == {A, B, C}
    assert reads.due([A, B, C]) == set()
    changes.mark(B)
    changes.mark(D)  # not (or no longer) one of the unfinished items: not read
    clock.now += 1
    assert reads.due([A, B, C]) == {B}
    assert reads.due([A, B, C]) == set()


def test_a_sweep_comes_every_period_even_while_marks_keep_coming() -> None:
    """A never-announced update is read within the period although other items wake the
    stream all the time (a sweep only on an idle timeout would never come)."""
    clock, changes = Clock(), Changes()
    reads = WatchReads(changes, 5.0, clock)
    assert reads.due([A, B]) == {A, B}
    for _ in range(4):
        clock.now += 1.0
        changes.mark(A)
        assert reads.due([A, B]) == {A}
    clock.now += 1.0
    changes.mark(A)
    assert reads.due([A, B]) == {A, B}  # 5 s after the last sweep
    clock.now += 1.0
    assert reads.due([A, B]) == set()


def test_the_wait_ends_at_the_next_sweep_and_again_reads_a_page_at_the_next_pass() -> None:
    clock, changes = Clock(), Changes()
    reads = WatchReads(changes, 5.0, clock)
    assert reads.wait_s() == 0.0  # no sweep yet: due at once
    reads.due([A, B, C])
    assert reads.wait_s() == 5.0
    clock.now += 2.0
    assert reads.wait_s() == 3.0
    clock.now += 4.0
    assert reads.wait_s() == 0.0  # overdue: never negative
    clock.now = 102.0
    reads.again([A, C])  # their page stopped at its row limit
    assert changes.event.is_set()
    assert reads.due([A, B, C]) == {A, C}


def test_a_sweep_slower_than_the_period_is_not_followed_at_once_by_another() -> None:
    """Review helper-119 M1: the period counted from the sweep's start, so a sweep that
    took longer than the period (a busy database) was followed at once by another one."""
    clock, changes = Clock(), Changes()
    reads = WatchReads(changes, 5.0, clock)
    assert reads.due([A, B]) == {A, B}
    clock.now += 6.0  # the sweep's pages took 6 s
    reads.passed()
    assert reads.wait_s() == 5.0
    assert reads.due([A, B]) == set()
    reads.passed()  # a pass of marks only does not move the period
    clock.now += 5.0
    assert reads.wait_s() == 0.0
    assert reads.due([A, B]) == {A, B}
