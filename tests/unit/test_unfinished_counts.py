"""Admission's bound on one source ledger's unfinished submitted transfers
(bridge.coordinator.unfinished_counts): room taken before each write, counted in memory
between the sweep's counts from the store. Pure logic; the bound over gRPC on both engines,
concurrent calls included, is in tests/integration/test_batch_hardening.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.coordinator.unfinished_counts import UnfinishedCounts
from bridge.domain.errors import ResourceExhausted

pytestmark = [pytest.mark.batch, pytest.mark.security]


def test_room_is_taken_before_the_write_so_writes_in_flight_count() -> None:
    """Review helper-120 H1: writes in flight count, so submissions recorded at the same
    time cannot pass the bound together."""
    counts = UnfinishedCounts(3)
    assert counts.begin_writes(["a", "a"]) == [True, True]
    assert counts.begin_writes(["a", "a", "b"]) == [True, False, True]  # a: 3 in flight
    with pytest.raises(ResourceExhausted, match=r"\(max_unfinished_per_ledger 3\)"):
        counts.check("a")
    counts.check("b")  # another brokerage's ledger is not held by a's transfers
    counts.end_writes(["a", "a"], [True, False])  # the second key was recorded before
    assert counts.of("a") == 2  # one unfinished, one still in flight
    counts.end_writes(["a", "b"], [True, True])
    assert (counts.of("a"), counts.of("b")) == (2, 1)
    counts.ended("a")
    assert counts.begin_writes(["a", "a", "a"]) == [True, True, False]


def test_a_write_whose_outcome_was_not_seen_counts_until_the_recount() -> None:
    """Review helper-120 M1: a write cancelled after it committed recorded its transfers;
    they count (perhaps one too many) until the sweep's count replaces the figure."""
    counts = UnfinishedCounts(2)
    counts.begin_writes(["a", "a"])
    counts.end_writes(["a", "a"], None)
    with pytest.raises(ResourceExhausted):
        counts.check("a")
    counts.recount({"a": 1})  # the store holds one of them unfinished
    counts.check("a")
    assert counts.of("a") == 1


def test_the_recount_replaces_the_counts_and_keeps_the_writes_in_flight() -> None:
    counts = UnfinishedCounts(3)
    counts.recount({"a": 5, "b": 0})
    with pytest.raises(ResourceExhausted, match="at least 3 transfers from ledger a"):
        counts.check("a")
    assert counts.of("b") == 0
    assert counts.begin_writes(["b"]) == [True]
    counts.recount({"a": 1})  # transfers finished that this process did not see end
    assert (counts.of("a"), counts.of("b")) == (1, 1)  # b's write is still in flight
    counts.ended("a")
    counts.ended("a")  # an end not counted in: never below 0
    assert counts.of("a") == 0


def test_no_bound_refuses_nothing_and_a_bound_must_be_positive() -> None:
    counts = UnfinishedCounts()
    assert counts.begin_writes(["a"] * 1000) == [True] * 1000
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


def test_a_resumed_transfer_counts_again_and_a_short_answer_ends_every_write() -> None:
    counts = UnfinishedCounts(3)
    counts.recount({"a": 1})
    counts.resumed("a")  # a FAILED one is unfinished again: its end will be counted
    counts.ended("a")
    assert counts.of("a") == 1
    # Review helper-121 L: an answer of another length than the writes ends them all.
    counts.begin_writes(["a", "a"])
    counts.end_writes(["a", "a"], [True])
    assert counts.of("a") == 3  # both counted till the recount, none left in flight
    counts.recount({"a": 1})
    assert counts.of("a") == 1


async def test_a_failed_transfer_resumed_by_its_late_lock_keeps_the_count_exact(
    tmp_path: Path,
) -> None:
    """Review helper-121: a FAILED transfer resumed by its lock landing late was not counted
    again, and its end was: each resume left the count one too low until the sweep (15 s),
    so a brokerage letting its transfers fail and then locking them itself passed the
    bound by as many. No sweep runs here (an hour), so only the engine's own counting
    keeps the figure."""
    import asyncio
    import time

    from bridge.coordinator.engine import Coordinator
    from bridge.coordinator.store import SqliteTransferStore
    from bridge.core.reasons import ErrorReason
    from bridge.domain.errors import LedgerRejected
    from bridge.domain.legs import Leg, LegState, LegStatus
    from bridge.domain.transfer import TransferState
    from tests.unit import test_coordinator_driver as drv

    store = SqliteTransferStore(tmp_path / "c.sqlite")
    relayers = {"a": drv.FakeRelayer("a"), "b": drv.FakeRelayer("b")}
    c = Coordinator(drv.network_file(tmp_path), store, relayers, drv.FakeCommittee(),  # type: ignore[arg-type]
                    transfer_ttl=60, max_backoff=0.2, sweep_every=3600.0,
                    max_unfinished_per_ledger=3)  # fmt: skip
    await c.start()
    try:
        a = relayers["a"]
        a.lock_refusal = LedgerRejected(ErrorReason.INSUFFICIENT_BALANCE, "balance=0")
        failed = [(await drv.submit(c, drv.request(f"f{i}")))[0] for i in range(2)]
        for r in failed:
            assert await drv.final(store, r.transfer_id) is TransferState.FAILED
        a.lock_refusal = None
        a.not_before = int(time.time()) + 3600  # later locks are held: they stay unfinished
        for i in range(2):
            await drv.submit(c, drv.request(f"h{i}"))
        await asyncio.sleep(0.3)
        assert c.unfinished.of("a") == 2
        for j, r in enumerate(failed):  # the brokerage's own locks land late
            t = r.terms
            a.legs[(t.transfer_id, Leg.OUTBOUND)] = LegStatus(LegState.LOCKED, t.terms_hash, 0, 5)
            a.not_before = 0
            assert await c.on_events("a", [drv.lock_event(t, 9 + j)], 9 + j) == 1
        for r in failed:
            assert await drv.final(store, r.transfer_id) is TransferState.COMMITTED
        assert c.unfinished.of("a") == 2  # was 0: each resume's end taken off once more
        await drv.submit(c, drv.request("x0"))
        with pytest.raises(ResourceExhausted):
            await drv.submit(c, drv.request("x1"))
    finally:
        await c.stop()
        store.close()
