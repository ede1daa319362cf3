"""Admission's supply gate read once for many admissions (issue 14): ``SupplyPublisher
.refusal`` reads a security's registration and hold in one coalesced ``SupplyStore.gate``,
on a real SQLite supply store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.coordinator.db import DatabaseUnavailable
from bridge.coordinator.publisher import SupplyPublisher
from bridge.coordinator.supply_store import Gate, SqliteSupplyStore
from bridge.domain.errors import PreconditionFailed
from tests.unit.test_supply_store import ISIN, OTHER_ISIN, append_next, stored

pytestmark = [pytest.mark.unit, pytest.mark.batch, pytest.mark.security]


class Watched(SqliteSupplyStore):
    """The real store, with its gate reads counted and, on demand, their answers held
    back (the read itself is made when asked)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.asked: list[str] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail: Exception | None = None

    async def gate(self, security: str) -> Gate:
        self.asked.append(security)
        if self.fail is not None:
            raise self.fail
        read = await super().gate(security)
        await self.release.wait()  # read, but not yet answered
        return read


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Watched]:
    s = Watched(tmp_path / "coord" / "supply.sqlite")
    await s.register(stored(ISIN, 1, {"a": 1000, "b": 0}))
    await s.register(stored(OTHER_ISIN, 1, {"a": 5}))
    yield s
    s.close()


def publisher(store: Watched) -> SupplyPublisher:
    return SupplyPublisher(
        network=None,  # type: ignore[arg-type]  # refusal() never reads it
        store=store,
        relayers={},
        committee=None,  # type: ignore[arg-type]
        heartbeat=0.0,
    )


async def test_admissions_waiting_together_share_one_gate_read(store: Watched) -> None:
    """A lone admission reads at once; admissions arriving while that read runs share a
    read of their security that starts after they were made: a hold raised during the
    first read refuses them (the first, read before it, admits). Securities never
    share a read; every admission answers its own lane."""
    pub = publisher(store)
    store.release.clear()
    first = asyncio.create_task(pub.refusal(ISIN, ("a", "b")))
    await asyncio.sleep(0.01)
    assert store.asked == [ISIN]
    await append_next(store, {"a": 1005, "b": 0}, now=20.0)  # a discrepancy: a hold
    lanes: list[tuple[str, ...]] = [("a", "b"), ("b", "a"), ("a", "x")]
    later = [asyncio.create_task(pub.refusal(ISIN, lane)) for lane in lanes]
    other = asyncio.create_task(pub.refusal(OTHER_ISIN, ("a",)))
    await asyncio.sleep(0.01)
    # The three later ones share one read of their own (two reads of a security may run at
    # once, GATE_READS_IN_FLIGHT), never the one in flight before them.
    assert store.asked == [ISIN, ISIN, OTHER_ISIN]
    store.release.set()
    assert await first is None
    answers: list[Any] = await asyncio.gather(*later)
    assert await other is None
    assert store.asked == [ISIN, ISIN, OTHER_ISIN]
    assert all(isinstance(a, PreconditionFailed) for a in answers)
    assert "held since supply record #1" in str(answers[0])
    assert "held since supply record #1" in str(answers[1])
    assert "ledger x is not in the registered issuance" in str(answers[2])
    await pub.stop()


async def test_a_failed_gate_read_refuses_nothing_and_the_next_read_answers(
    store: Watched,
) -> None:
    """A store failure reaches every admission of that read as the store's retryable
    error (never taken for a refusal); the next read is unaffected."""
    pub = publisher(store)
    store.fail = DatabaseUnavailable("the database is unavailable")
    failed = await asyncio.gather(
        pub.refusal(ISIN, ("a",)), pub.refusal(ISIN, ("b",)), return_exceptions=True
    )
    assert all(isinstance(f, DatabaseUnavailable) for f in failed)
    assert store.asked == [ISIN]  # one read carried both
    store.fail = None
    assert await pub.refusal(ISIN, ("a", "b")) is None
    assert store.asked == [ISIN, ISIN]
    await pub.stop()


async def test_the_gate_reads_again_after_a_stop(store: Watched) -> None:
    """A stopped publisher (a coordinator's shutdown, or a term's end) that starts again
    admits through fresh reads: a hold raised while it was stopped is seen."""
    pub = publisher(store)
    assert await pub.refusal(ISIN, ("a",)) is None
    await pub.stop()
    await append_next(store, {"a": 1005, "b": 0}, now=20.0)
    refused = await pub.refusal(ISIN, ("a",))
    assert isinstance(refused, PreconditionFailed) and "held since" in str(refused)
    await pub.stop()
