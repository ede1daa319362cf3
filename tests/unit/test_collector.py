"""The daemons' collector settings (issue 14): what ``tune_collector`` leaves in place."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from bridge.collector import GEN0_THRESHOLD, tune_collector

pytestmark = [pytest.mark.unit, pytest.mark.batch]


@pytest.fixture
def restored() -> Iterator[None]:
    """Put this test process's collector back as it was."""
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored")
def test_the_collector_skips_what_lived_before_the_loop_and_collects_young_objects_less() -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    tune_collector()
    assert gc.get_threshold() == (GEN0_THRESHOLD, 10, 10)
    assert gc.get_freeze_count() > 0  # the modules imported so far, at least
    assert gc.isenabled()  # cyclic garbage made later is still collected


@pytest.mark.usefixtures("restored")
def test_cyclic_garbage_made_after_tuning_is_still_collected() -> None:
    tune_collector()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: reference counting alone never frees it
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None
