"""Admission's bound on one source ledger's unfinished transfers
(bridge.coordinator.unfinished_counts): counted in memory between the sweep's counts from
the store. Pure logic; the bound over gRPC on both engines is in
tests/integration/test_batch_hardening.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.coordinator.unfinished_counts import UnfinishedCounts
from bridge.domain.errors import ResourceExhausted

pytestmark = [pytest.mark.batch, pytest.mark.security]


def test_a_ledger_at_its_bound_is_refused_and_others_are_not() -> None:
    counts = UnfinishedCounts(2)
    counts.created("a")
    counts.check("a")
    counts.created("a")
    with pytest.raises(ResourceExhausted, match=r"\(max_unfinished_per_ledger 2\)"):
        counts.check("a")
    counts.check("b")  # another brokerage's ledger is not held by a's transfers
    counts.ended("a")
    counts.check("a")


def test_the_sweeps_count_replaces_the_memory_either_way() -> None:
    counts = UnfinishedCounts(3)
    counts.recount({"a": 5, "b": 0})
    with pytest.raises(ResourceExhausted):
        counts.check("a")
    assert counts.of("b") == 0
    counts.recount({"a": 1})  # transfers finished that this process did not see end
    counts.check("a")
    assert counts.of("a") == 1
    counts.ended("a")
    counts.ended("a")  # an end not counted in (adopted since the sweep): never below 0
    assert counts.of("a") == 0
    counts.created("a")
    assert counts.of("a") == 1


def test_no_bound_refuses_nothing_and_a_bound_must_be_positive() -> None:
    counts = UnfinishedCounts()
    for _ in range(1000):
        counts.created("a")
    counts.check("a")
    for bad in (0, -1):
        with pytest.raises(ValueError, match="positive"):
            UnfinishedCounts(bad)


def test_the_bound_is_read_from_the_coordinators_file(tmp_path: Path) -> None:
    from bridge.config import load_coordinator
    from tests.unit.test_config_rules import coordinator

    assert load_coordinator(coordinator(tmp_path)).max_unfinished_per_ledger == 100_000
    cfg = load_coordinator(coordinator(tmp_path, max_unfinished_per_ledger=7))
    assert cfg.max_unfinished_per_ledger == 7
