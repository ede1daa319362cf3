"""The coordinator's store-derived gauges (ADR 0016): counted by the database (issue 14)
exactly as the pass over every unfinished record counted them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.coordinator.metrics import HALT_SCAN_LIMIT, CoordinatorMetrics
from bridge.coordinator.records import TransferRecord
from bridge.coordinator.store import SqliteTransferStore
from bridge.domain.flow import WaitReason
from bridge.domain.transfer import TransferState
from bridge.obs.metrics import CommonMetrics
from tests.unit.test_store import make_record

pytestmark = [pytest.mark.unit, pytest.mark.batch]


class _Halts:
    """The engine's halt view: every transfer whose nonce is even is halted somewhere."""

    def __init__(self) -> None:
        self.asked: list[bytes] = []

    async def halted_on(self, record: TransferRecord) -> list[str]:
        self.asked.append(record.transfer_id)
        return ["a"] if record.terms.nonce[-1] % 2 == 0 else []


class _RecordsOnly:
    """The same store seen without its database counts: the old pass over the records."""

    def __init__(self, store: SqliteTransferStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name == "unfinished_summary":
            raise AttributeError(name)
        return getattr(self._store, name)


def _gauges(m: CoordinatorMetrics) -> dict[str, float]:
    out = {}
    for family in m.common.registry.collect():
        for sample in family.samples:
            if sample.name.startswith("kstb_transfers"):
                out[sample.name + str(sorted(sample.labels.items()))] = sample.value
    return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteTransferStore]:
    s = SqliteTransferStore(tmp_path / "c.sqlite")
    yield s
    s.close()


async def test_gauges_counted_by_the_database_equal_the_pass_over_records(store) -> None:
    states = [TransferState.SUBMITTED, TransferState.QUEUED, TransferState.COMMITTED,
              TransferState.SOURCE_LOCKED, TransferState.QUEUED, TransferState.ABORTED,
              TransferState.TARGET_PREPARED, TransferState.QUEUED]  # fmt: skip
    for n, state in enumerate(states, start=1):
        await store.create(make_record(n, state=state))
    await store.set_wait(make_record(2).transfer_id, WaitReason.SOURCE_OUTBOUND_CAPACITY, 0.0)
    await store.set_wait(make_record(5).transfer_id, WaitReason.LARGE_TRANSFER_DELAY, 9.0)
    await store.set_wait(make_record(8).transfer_id, WaitReason.BEHIND_EARLIER_TRANSFER, 0.0)
    ttl = time.time() - 1004.5  # created_at is 1000 + n: records 1 to 4 are "stuck"
    fast, halts_fast = CoordinatorMetrics(CommonMetrics.create("c"), ttl), _Halts()
    slow, halts_slow = CoordinatorMetrics(CommonMetrics.create("c"), ttl), _Halts()
    t0 = time.time()
    await fast.refresh(store, halts_fast, None, None, [], [])
    await slow.refresh(_RecordsOnly(store), halts_slow, None, None, [], [])  # type: ignore[arg-type]
    got, want = _gauges(fast), _gauges(slow)
    oldest = "kstb_transfers_oldest_unfinished_age_seconds[]"
    assert abs(got.pop(oldest) - want.pop(oldest)) < (time.time() - t0) + 0.01
    assert got == want
    assert want["kstb_transfers_stuck[]"] == 3  # records 1, 2 and 4 (3 is COMMITTED)
    assert want["kstb_transfers_halted[]"] == 3  # records 2, 4 and 8 of the unfinished ones
    assert want["kstb_transfers_flow_waiting[('reason', 'LARGE_TRANSFER_DELAY')]"] == 1
    assert halts_fast.asked == halts_slow.asked, "the same transfers scanned for halts"


async def test_the_halt_scan_reads_no_more_than_its_limit(store, monkeypatch) -> None:
    import bridge.coordinator.metrics as metrics

    monkeypatch.setattr(metrics, "HALT_SCAN_LIMIT", 3)
    for n in range(1, 8):
        await store.create(make_record(n))
    halts = _Halts()
    m = CoordinatorMetrics(CommonMetrics.create("c"), 60)
    await m.refresh(store, halts, None, None, [], [])
    assert halts.asked == [make_record(n).transfer_id for n in (1, 2, 3)]
    assert HALT_SCAN_LIMIT == 1000
    assert _gauges(m)["kstb_transfers[('state', 'SUBMITTED')]"] == 7


async def test_each_ledgers_unfinished_submissions_and_the_bound_are_gauged(
    store: SqliteTransferStore,
) -> None:
    """max_unfinished_per_ledger: the operator sees each source ledger's count as admission
    holds it (writes in flight included) and the bound, for the alert near it."""
    from bridge.coordinator.unfinished_counts import UnfinishedCounts

    class Engine(_Halts):
        def __init__(self) -> None:
            super().__init__()
            self.unfinished = UnfinishedCounts(5)

    engine = Engine()
    engine.unfinished.recount({"a": 3})
    engine.unfinished.begin_writes(["a", "b"])
    m = CoordinatorMetrics(CommonMetrics.create("c"), 60)
    await m.refresh(store, engine, None, None, ["a", "b", "c"], [])
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in m.common.registry.collect()
        for s in family.samples
        if "unfinished_submitted" in s.name or "unfinished_per_ledger" in s.name
    }
    assert samples == {
        ("kstb_transfers_unfinished_submitted", (("ledger", "a"),)): 4,
        ("kstb_transfers_unfinished_submitted", (("ledger", "b"),)): 1,
        ("kstb_transfers_unfinished_submitted", (("ledger", "c"),)): 0,
        ("kstb_unfinished_per_ledger_bound", ()): 5,
    }
