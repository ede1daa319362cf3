"""Events at finality through the framework's watcher, for every ledger kind: bounded pages,
a checkpoint per page, at-least-once delivery that a restart does not repeat."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from bridge.domain.claims import ClaimKind
from bridge.domain.legs import Action, EventPosition, LedgerEvent, LegState
from relayers.checkpoint import END_OF_BLOCK, CheckpointStore
from relayers.watcher import EventWatcher
from tests.conformance.harness import KindHarness, Terms
from tests.conformance.test_adapter import step

pytestmark = [pytest.mark.conformance, pytest.mark.integration]


class Sink:
    """Collects what the watcher delivers, with the scanned height of each call."""

    def __init__(self) -> None:
        self.events: list[LedgerEvent] = []
        self.calls: list[tuple[int, int]] = []

    async def deliver(
        self, ledger: str, events: Sequence[LedgerEvent], scanned_height: int
    ) -> None:
        self.events += events
        self.calls.append((len(events), scanned_height))


async def test_watcher_pages_checkpoints_and_resumes(harness: KindHarness, tmp_path: Path) -> None:
    h, tt = harness, Terms(harness)
    relayer, reader = h.relayer(), h.reader()
    store = CheckpointStore(tmp_path / "cp.sqlite", h.ledger.name)
    try:
        start = await reader.finalized_height()
        store.save(EventPosition(start, END_OF_BLOCK))
        sender = await h.holder(4)
        t = tt.outbound(sender, 4)
        await step(h, relayer, Action.LOCK, t)
        await step(h, relayer, Action.COMMIT, t, tt.cert(ClaimKind.COMMIT, t))
        sink = Sink()
        watcher = EventWatcher(reader, sink, store, poll_interval=0.1, page_blocks=1)
        await watcher.step()
        final = store.load()
        assert final is not None and final.index == END_OF_BLOCK
        assert final.height >= start + 2, "scanned page by page up to the finalized height"
        mine = [e for e in sink.events if e.transfer_id == t.transfer_id]
        assert [e.state for e in mine] == [LegState.LOCKED, LegState.BURNED]
        positions = [e.position for e in sink.events]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        assert all(start < p.height <= final.height for p in positions)
        # A restarted watcher on the same checkpoint delivers nothing again.
        again = Sink()
        await EventWatcher(reader, again, store, poll_interval=0.1).step()
        assert [e for e in again.events if e.transfer_id == t.transfer_id] == []
    finally:
        store.close()
        await relayer.close()
        await reader.close()
