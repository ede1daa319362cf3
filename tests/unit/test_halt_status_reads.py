"""``HaltBook.ledger_status`` shares a read in flight among the drivers that ask meanwhile
(issue 14: one ``GetHaltStatus`` per key at a time, not one per driver), and never lets a
read that started before a delivered order answer, or be cached for, a caller after it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge.coordinator.halts import HaltBook, OrderState, SqliteHaltStore
from bridge.domain.errors import Unavailable
from bridge.domain.governance import HaltStatus, OrderAction
from bridge.domain.ids import SecurityId
from tests.unit.test_coordinator_driver import ISIN, coordinator  # noqa: F401 (the fixture)
from tests.unit.test_halt_book import HaltingRelayer, order

pytestmark = [pytest.mark.unit, pytest.mark.governance, pytest.mark.batch]

SEC = SecurityId(ISIN)


@dataclass
class GatedRelayer(HaltingRelayer):
    """Counts halt-status reads; each answers what the ledger showed when it started, once
    the ``gate`` that was in place when it started is set (so a test can hold reads)."""

    reads: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    fail: int = 0

    async def halt_status(self, security: str | None) -> HaltStatus:
        self.reads += 1
        gate = self.gate
        status = await super().halt_status(security)  # as the ledger is when the read starts
        failing = self.fail > 0
        self.fail -= int(failing)
        await gate.wait()
        if failing:
            raise Unavailable("relayer down")
        return status


@pytest.fixture
async def gated(coordinator, tmp_path: Path):  # noqa: F811
    c, _, _ = coordinator
    relayers = {
        name: GatedRelayer(name, network=c.domains[name].network_word, word=c.domains[name].ledger_word)
        for name in ("a", "b")
    }  # fmt: skip
    hstore = SqliteHaltStore(tmp_path / "h.sqlite")
    book = HaltBook(hstore, relayers, c.domains, cache_s=60)  # type: ignore[arg-type]
    yield c, relayers, book
    await book.stop()
    hstore.close()


async def test_concurrent_misses_share_one_read_per_key(gated) -> None:
    _, relayers, book = gated
    a = relayers["a"]
    waiting = [asyncio.create_task(book.ledger_status("a", SEC)) for _ in range(50)]
    other = asyncio.create_task(book.ledger_status("a", None))  # another key: its own read
    await asyncio.sleep(0.05)
    assert a.reads == 2
    a.gate.set()
    answers = await asyncio.gather(*waiting)
    assert all(s == answers[0] and not s.halted for s in answers)
    assert not (await other).halted
    assert a.reads == 2 and relayers["b"].reads == 0
    await book.ledger_status("a", SEC)  # cached now
    assert a.reads == 2


async def test_a_read_from_before_a_delivered_halt_neither_answers_later_callers_nor_is_cached(
    gated,
) -> None:
    c, relayers, book = gated
    a = relayers["a"]
    early_gate = a.gate
    early = asyncio.create_task(book.ledger_status("a", SEC))  # starts before the HALT
    await asyncio.sleep(0.02)
    assert a.reads == 1
    a.gate = asyncio.Event()
    a.gate.set()  # the early read stays held; the order's own reads go through
    await book.submit(order(c, "a", OrderAction.HALT, 7))
    assert await book.deliver_pending() == 1
    assert [r.state for r in await book.orders()] == [OrderState.APPLIED]
    reads_before = a.reads
    a.gate = asyncio.Event()  # the late read is held too
    late = asyncio.create_task(book.ledger_status("a", SEC))  # arrives after the delivery
    await asyncio.sleep(0.02)
    assert a.reads == reads_before + 1, "a caller after the delivery must not share the early read"
    a.gate.set()
    assert (await late).halted
    early_gate.set()  # the early read ends last: were it cached, it would overwrite the late
    assert not (await early).halted  # it asked before the HALT: the pre-HALT view is its answer
    reads_before = a.reads
    assert (await book.ledger_status("a", SEC)).halted, "the early read must not be cached"
    assert a.reads == reads_before, "the late read is the one cached"
    assert await book.halted("a", SEC)


async def test_a_failed_shared_read_fails_its_callers_and_the_next_call_reads_again(gated) -> None:
    _, relayers, book = gated
    a = relayers["a"]
    a.fail = 1
    waiting = [asyncio.create_task(book.ledger_status("a", SEC)) for _ in range(5)]
    await asyncio.sleep(0.02)
    a.gate.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(o, Unavailable) for o in outcomes) and a.reads == 1
    assert not (await book.ledger_status("a", SEC)).halted  # nothing cached: read again
    assert a.reads == 2
    a.fail = 1
    a.gate = asyncio.Event()
    book._cache.clear()
    held = asyncio.create_task(book.halted("a", SEC))
    await asyncio.sleep(0.02)
    a.gate.set()
    assert await held is False  # as before: an unreadable ledger counts as not halted here


async def test_a_caller_cancelled_while_waiting_does_not_cancel_the_read_for_the_others(
    gated,
) -> None:
    _, relayers, book = gated
    a = relayers["a"]
    first = asyncio.create_task(book.ledger_status("a", SEC))
    second = asyncio.create_task(book.ledger_status("a", SEC))
    await asyncio.sleep(0.02)
    first.cancel()
    await asyncio.sleep(0)
    a.gate.set()
    assert not (await second).halted
    assert first.cancelled() and a.reads == 1


@dataclass
class SlowToApply(GatedRelayer):
    """Applies orders only once ``applying`` is set (a delivery pass held on this ledger)."""

    applying: asyncio.Event = field(default_factory=asyncio.Event)

    async def apply_order(self, signed: Any) -> Any:
        await self.applying.wait()
        return await super().apply_order(signed)


async def test_an_applied_halt_starts_a_new_generation_before_the_pass_ends(
    coordinator,  # noqa: F811
    tmp_path: Path,
) -> None:
    """SECURITY (review s21): once the HALT on ``a`` is APPLIED it stops gating; a driver
    asking while the same pass still delivers to ``b`` must not get a pre-HALT read."""
    c, _, _ = coordinator
    d = c.domains
    a = GatedRelayer("a", network=d["a"].network_word, word=d["a"].ledger_word)
    b = SlowToApply("b", network=d["b"].network_word, word=d["b"].ledger_word)
    b.gate.set()
    store = SqliteHaltStore(tmp_path / "h2.sqlite")
    book = HaltBook(store, {"a": a, "b": b}, d, cache_s=60)  # type: ignore[arg-type]
    early_gate = a.gate
    early = asyncio.create_task(book.ledger_status("a", SEC))  # before the HALT
    await asyncio.sleep(0.02)
    a.gate = asyncio.Event()
    a.gate.set()
    await book.submit(order(c, "a", OrderAction.HALT, 3))
    await book.submit(order(c, "b", OrderAction.HALT, 3))
    passing = asyncio.create_task(book.deliver_pending())  # a first, then held on b

    async def applied_on_a() -> bool:
        return any(r.ledger == "a" and r.state is OrderState.APPLIED for r in await book.orders())

    for _ in range(200):
        if await applied_on_a():
            break
        await asyncio.sleep(0.01)
    assert await applied_on_a() and not passing.done()
    try:  # joining the held pre-HALT read would wait for it: bounded, a failure not a hang
        halted_now = await asyncio.wait_for(book.halted("a", SEC), 2)
    except TimeoutError:
        halted_now = None
    assert halted_now is True, "the pre-HALT read in flight must not answer"
    early_gate.set()
    assert not (await early).halted
    assert await book.halted("a", SEC)
    b.applying.set()
    assert await passing == 2
    await book.stop()
    store.close()


async def test_a_read_stopped_with_the_book_neither_poisons_the_key_nor_leaks_a_cancel(
    gated,
) -> None:
    _, relayers, book = gated
    a = relayers["a"]
    waiting = asyncio.create_task(book.ledger_status("a", SEC))
    await asyncio.sleep(0.02)
    never_ran = book._reading.setdefault(
        ("a", None), (book._generation, asyncio.create_task(asyncio.sleep(3600)))
    )[1]
    await book.stop()  # cancels the reads in flight, one of them before it ever ran
    with pytest.raises(Unavailable, match="the read was stopped"):
        await waiting  # this caller was not cancelled: a typed, retryable answer
    assert never_ran.cancelled() and book._reading == {}
    a.gate.set()
    assert not (await book.ledger_status("a", None)).halted  # a fresh read, not the corpse
