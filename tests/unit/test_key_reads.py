"""KeyReads (issue 14): admission's idempotency-key lookups coalesced per source ledger,
on a real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from bridge.coordinator.db import DatabaseUnavailable
from bridge.coordinator.key_reads import KeyReads
from bridge.coordinator.records import TransferRecord
from bridge.coordinator.store import SqliteTransferStore
from tests.unit.test_store import make_record

pytestmark = [pytest.mark.unit, pytest.mark.batch]


class Watched(SqliteTransferStore):
    """The real store, with its coalesced reads recorded and, on demand, their answers
    held back (the read itself is made when asked)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.asked: list[tuple[str, list[str]]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail: Exception | None = None

    async def get_by_keys(
        self, source_ledger: str, idempotency_keys: Sequence[str]
    ) -> dict[str, TransferRecord]:
        self.asked.append((source_ledger, list(idempotency_keys)))
        if self.fail is not None:
            raise self.fail
        read = await super().get_by_keys(source_ledger, idempotency_keys)
        await self.release.wait()  # read, but not yet answered
        return read


@pytest.fixture
def store(tmp_path: Path) -> Watched:
    return Watched(tmp_path / "coordinator.sqlite")


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_lookups_waiting_together_share_one_read_of_their_ledger(
    store: Watched, in_flight: int
) -> None:
    """A lookup with none of its ledger's in flight goes out at once and alone; lookups
    arriving while it runs share a read of their own (the same key asked once), never the
    one already in flight: a key recorded after that read was made is found by them, not
    by it. Ledgers are never shared."""
    a1, a2 = make_record(1, key="k1"), make_record(2, key="k2")
    await store.create(a1)
    reads = KeyReads(store, max_in_flight=in_flight)
    store.release.clear()
    first = asyncio.create_task(reads.get("brokerage-a", "k2"))
    await asyncio.sleep(0.01)
    assert store.asked == [("brokerage-a", ["k2"])]  # made (k2 absent), answer held back
    await store.create(a2)
    later = [asyncio.create_task(reads.get("brokerage-a", k)) for k in ("k2", "k1", "k2", "no")]
    other = asyncio.create_task(reads.get("brokerage-c", "k1"))
    await asyncio.sleep(0.01)
    mine = ("brokerage-a", ["k2", "k1", "no"])
    theirs = ("brokerage-c", ["k1"])
    # One more read of their own: at once with room for two in flight, else after the first.
    assert store.asked[1:] == ([mine, theirs] if in_flight == 2 else [theirs])
    store.release.set()
    assert await first is None  # read before k2 was recorded
    assert await asyncio.gather(*later) == [a2, a1, a2, None]
    assert await other is None  # SECURITY: brokerage-a's key is no answer for brokerage-c
    assert sorted(store.asked[1:]) == sorted([mine, theirs])
    await reads.close()


async def test_a_failed_read_fails_each_lookup_it_carried_and_no_other(store: Watched) -> None:
    """The store's error reaches every lookup of that read (each answered as after a
    single failed read: nothing is assumed about its key); the next read is unaffected."""
    await store.create(make_record(1, key="k1"))
    reads = KeyReads(store, max_in_flight=1)
    store.fail = DatabaseUnavailable("the database is unavailable")
    failed = await asyncio.gather(
        *(reads.get("brokerage-a", k) for k in ("k1", "k2", "k3")), return_exceptions=True
    )
    assert all(isinstance(f, DatabaseUnavailable) for f in failed)
    assert store.asked == [("brokerage-a", ["k1", "k2", "k3"])]  # one read carried them
    store.fail = None
    assert (await reads.get("brokerage-a", "k1")) is not None
    await reads.close()
