"""The daemons' collector settings (issue 14): what ``tune_collector`` leaves in place."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from bridge.collector import GEN0_THRESHOLD, tune_collector

pytestmark = [pytest.mark.unit, pytest.mark.batch]


class Node:
    """A container that can sit in a reference cycle."""

    other: object = None


def cycle() -> weakref.ref[Node]:
    """A two-node cycle nothing else holds (reference counting alone never frees it); a
    weak reference to one of its nodes."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def restored() -> Iterator[None]:
    """Put this test process's collector back as it was."""
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored")
def test_garbage_of_the_start_up_is_collected_not_frozen() -> None:
    gc.set_threshold(700, 10, 10)
    gone = cycle()
    assert gone() is not None
    tune_collector()  # collect, then freeze: the cycle is not kept for ever
    assert gone() is None
    assert gc.get_threshold() == (GEN0_THRESHOLD, 10, 10)


@pytest.mark.usefixtures("restored")
def test_cyclic_garbage_made_after_tuning_is_collected_without_being_asked() -> None:
    tune_collector()
    gone = cycle()
    assert gone() is not None
    # No gc.collect(): twice the threshold's container allocations trigger a young one.
    keep = [[] for _ in range(2 * GEN0_THRESHOLD)]
    assert gone() is None
    assert len(keep) == 2 * GEN0_THRESHOLD
