"""The relayer's event watcher when the ledger refuses head waits (``PermissionDenied``, e.g.
a Fabric channel whose ``event/FilteredBlock`` ACL is stricter than ``Readers``): it polls
each ``poll_interval`` with one warning, asks again after ``HEAD_WAIT_RETRY_S``, and goes
back to waiting when the ledger accepts. Pure fakes; the refusal itself is produced by a
real peer in ``tests/integration/fabric/test_fabric_adapter.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import relayers.watcher as watcher_module
from bridge.domain.errors import PermissionDenied, Unavailable
from bridge.domain.ids import LedgerId
from relayers.checkpoint import CheckpointStore
from relayers.watcher import EventWatcher

pytestmark = [pytest.mark.unit, pytest.mark.batch]

REFUSED = "the ledger refuses head waits; polling each poll_interval, asking again every 600 s"


class Reader:
    """A reader whose head waits raise ``refusal`` while it is set, else wait for ``new``."""

    def __init__(self, refusal: BaseException | None) -> None:
        self.ledger = LedgerId("a")
        self.refusal = refusal
        self.scans = 0
        self.waits = 0
        self.head = 5
        self.advance = 0  # blocks per scan
        self.new = asyncio.Event()

    async def finalized_height(self) -> int:
        self.scans += 1
        self.head += self.advance
        return self.head

    async def events(self, after: object, up_to: int) -> list[object]:
        return []

    async def wait_new_head(self, above: int, timeout_s: float) -> int | None:
        # as the Fabric adapter: the height first, the ledger asked only when not above
        if self.head > above:
            return self.head
        self.waits += 1
        if self.refusal is not None:
            raise self.refusal
        if above >= self.head:
            try:
                await asyncio.wait_for(self.new.wait(), timeout_s)
            except TimeoutError:
                return None
            self.new.clear()
        return self.head


class NullSink:
    async def deliver(self, ledger: str, events: object, scanned_height: int) -> None:
        return None


async def until(cond: object, limit_s: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not cond():  # type: ignore[operator]
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


def watcher(reader: Reader, tmp_path: Path) -> EventWatcher:
    store = CheckpointStore(tmp_path / "cp.sqlite", "a")
    return EventWatcher(reader, NullSink(), store, poll_interval=0.01)  # type: ignore[arg-type]


async def test_a_refused_head_wait_falls_back_to_polling_with_one_warning(
    tmp_path: Path,
) -> None:
    reader = Reader(PermissionDenied("the peer refuses Org1MSP's filtered Deliver (FORBIDDEN)"))
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.ensure_future(watcher(reader, tmp_path).run(stop))
        await until(lambda: reader.scans >= 20)  # polled each 10 ms
        stop.set()
        await asyncio.wait_for(task, 2)
    assert reader.waits == 1, "asked to wait again before HEAD_WAIT_RETRY_S passed"
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == [REFUSED]
    assert "FORBIDDEN" in warnings[0]["error"]


async def test_after_the_retry_time_the_watcher_asks_again_and_waits_when_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watcher_module, "HEAD_WAIT_RETRY_S", 0.1)
    reader = Reader(PermissionDenied("FORBIDDEN"))
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.ensure_future(watcher(reader, tmp_path).run(stop))
        await until(lambda: reader.waits >= 2)  # refused again after 0.1 s: still one warning
        reader.refusal = None  # the operator granted the right
        await until(lambda: any(e["event"] == "the ledger accepts head waits again" for e in logs))
        await asyncio.sleep(0.05)
        scans = reader.scans
        await asyncio.sleep(0.2)  # 20 poll intervals: waiting for a head, not polling
        assert reader.scans == scans, "the watcher polled although the ledger accepts waits"
        reader.head = 6
        reader.new.set()
        await until(lambda: reader.scans > scans)
        stop.set()
        await asyncio.wait_for(task, 2)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        REFUSED.replace("600", "0")
    ]


async def test_another_failure_of_a_head_wait_does_not_turn_waits_off(tmp_path: Path) -> None:
    """An unavailable ledger is not a refusal: the watcher sleeps one poll_interval, then
    waits again (and warns each time, as before)."""
    reader = Reader(Unavailable("peer down"))
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.ensure_future(watcher(reader, tmp_path).run(stop))
        await until(lambda: reader.waits >= 5)
        stop.set()
        await asyncio.wait_for(task, 2)
    events = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert REFUSED not in events and events.count("head wait failed") >= 4


async def test_a_chain_making_blocks_is_not_mistaken_for_one_accepting_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review s23: after a refusal the watcher asked again for a head above the last one it
    had waited for; on a chain making blocks the adapter answered that from its height read
    without asking the peer, and the watcher logged "accepts again", then a new warning,
    every retry. It now asks for a head above the height it has just scanned."""
    monkeypatch.setattr(watcher_module, "HEAD_WAIT_RETRY_S", 0.03)
    reader = Reader(PermissionDenied("FORBIDDEN"))
    reader.advance = 1  # a block per scan
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.ensure_future(watcher(reader, tmp_path).run(stop))
        await until(lambda: reader.waits >= 5)  # asked (and refused) after each retry time
        stop.set()
        await asyncio.wait_for(task, 2)
    events = [e["event"] for e in logs if e["log_level"] in ("warning", "info")]
    assert events.count(REFUSED.replace("600", "0")) == 1
    assert "the ledger accepts head waits again" not in events
