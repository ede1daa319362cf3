"""The coalescer (issue 14, step batching) with a fake flush handler: per-key batches in
arrival order, max_items, the in-flight bound, per-item results and exceptions, a crashing
handler, cancellation of a waiting caller, and no added latency for a lone item."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence

import pytest

from bridge.coordinator.coalesce import Coalescer, CoalescerClosed, FlushAnswerMismatch
from bridge.domain.errors import Unavailable

pytestmark = [pytest.mark.unit, pytest.mark.batch]


class Recorder:
    """A flush handler that records its calls, waits on a gate, and answers item * 10
    (or a ValueError for negative items)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.running = 0
        self.peak = 0

    async def __call__(self, key: str, items: Sequence[int]) -> list[int | BaseException]:
        self.calls.append((key, list(items)))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def test_lone_item_goes_out_at_once() -> None:
    rec = Recorder()
    co: Coalescer[str, int, int] = Coalescer(rec, max_items=50, max_in_flight=2, linger_ms=500)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await co.call("a", 7) == 70
    assert loop.time() - t0 < 0.1  # the linger applies only behind a running flush
    assert rec.calls == [("a", [7])]


async def test_burst_batches_in_order_with_max_items_and_in_flight_bound() -> None:
    rec = Recorder()
    rec.gate.clear()
    co: Coalescer[str, int, int] = Coalescer(rec, max_items=4, max_in_flight=2)
    tasks = [asyncio.create_task(co.call("a", i)) for i in range(11)]
    await asyncio.sleep(0.01)
    # every caller woke in the same loop turn: the first flush took max_items of them,
    # the second flush the next ones; the rest wait for room in flight
    assert rec.calls == [("a", [0, 1, 2, 3]), ("a", [4, 5, 6, 7])]
    assert rec.running == 2
    rec.gate.set()
    assert await asyncio.gather(*tasks) == [i * 10 for i in range(11)]
    assert [items for _, items in rec.calls] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert rec.peak == 2


async def test_keys_are_batched_apart() -> None:
    rec = Recorder()
    co: Coalescer[str, int, int] = Coalescer(rec, max_items=10, max_in_flight=1)
    out = await asyncio.gather(co.call("a", 1), co.call("b", 2), co.call("a", 3))
    assert out == [10, 20, 30]
    assert sorted(rec.calls) == [("a", [1, 3]), ("b", [2])]


async def test_items_arriving_during_a_flush_form_the_next_batch() -> None:
    rec = Recorder()
    rec.gate.clear()
    co: Coalescer[str, int, int] = Coalescer(rec, max_items=10, max_in_flight=1)
    first = asyncio.create_task(co.call("a", 1))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(co.call("a", i)) for i in (2, 3, 4)]
    await asyncio.sleep(0.01)
    assert rec.calls == [("a", [1])]  # in flight is full: 2..4 accumulate
    rec.gate.set()
    assert await first == 10
    assert await asyncio.gather(*later) == [20, 30, 40]
    assert rec.calls == [("a", [1]), ("a", [2, 3, 4])]


async def test_linger_collects_a_later_batch() -> None:
    rec = Recorder()
    rec.gate.clear()
    co: Coalescer[str, int, int] = Coalescer(rec, max_items=10, max_in_flight=2, linger_ms=80)
    first = asyncio.create_task(co.call("a", 1))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(co.call("a", 2))
    await asyncio.sleep(0.02)
    third = asyncio.create_task(co.call("a", 3))
    await asyncio.sleep(0.15)
    assert rec.calls == [("a", [1]), ("a", [2, 3])]
    rec.gate.set()
    assert await asyncio.gather(first, second, third) == [10, 20, 30]


async def test_linger_holds_the_batch_behind_a_flush_but_not_a_lone_item() -> None:
    rec = Recorder()
    rec.gate.clear()
    # A linger well above a loaded host's scheduling delays (the tool-free tier runs beside
    # CI's Go builds), so each bound below tells lingering from not with room to spare.
    co: Coalescer[str, int, int] = Coalescer(rec, max_items=10, max_in_flight=1, linger_ms=400)
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(co.call("a", 1))
    await asyncio.sleep(0.01)
    assert rec.calls == [("a", [1])]  # at once: nothing was in flight
    second = asyncio.create_task(co.call("a", 2))
    await asyncio.sleep(0.01)
    rec.gate.set()
    assert await first == 10
    ended = loop.time()
    await asyncio.sleep(0.05)
    third = asyncio.create_task(co.call("a", 3))  # joins the lingering batch
    assert await asyncio.gather(second, third) == [20, 30]
    assert loop.time() - ended >= 0.39
    assert rec.calls == [("a", [1]), ("a", [2, 3])]
    # a full batch does not linger
    rec.calls.clear()
    rec.gate.clear()
    head = asyncio.create_task(co.call("a", 0))
    await asyncio.sleep(0.01)
    full = [asyncio.create_task(co.call("a", i)) for i in range(1, 11)]
    await asyncio.sleep(0.01)
    rec.gate.set()
    await head
    t0 = loop.time()
    await asyncio.gather(*full)
    assert loop.time() - t0 < 0.3  # not the 0.4 s linger


async def test_per_item_exceptions_reach_only_their_callers() -> None:
    rec = Recorder()
    co: Coalescer[str, int, int] = Coalescer(rec, max_items=10, max_in_flight=1)
    out = await asyncio.gather(
        co.call("a", 1), co.call("a", -2), co.call("a", 3), return_exceptions=True
    )
    assert out[0] == 10 and out[2] == 30
    assert isinstance(out[1], ValueError) and str(out[1]) == "bad -2"
    assert len(rec.calls) == 1


async def test_a_crashing_handler_fails_its_flush_only() -> None:
    calls: list[list[int]] = []

    async def flush(key: str, items: Sequence[int]) -> list[int | BaseException]:
        calls.append(list(items))
        if 0 in items:
            raise RuntimeError("handler crashed")
        return [i for i in items]

    co: Coalescer[str, int, int] = Coalescer(flush, max_items=2, max_in_flight=1)
    out = await asyncio.gather(*(co.call("a", i) for i in range(4)), return_exceptions=True)
    assert [type(x) for x in out[:2]] == [RuntimeError, RuntimeError]
    assert out[2:] == [2, 3]  # the key was not stalled by the crash
    assert calls == [[0, 1], [2, 3]]


async def test_a_handler_answering_the_wrong_count_fails_its_flush() -> None:
    async def flush(key: str, items: Sequence[int]) -> list[int | BaseException]:
        return [1]

    co: Coalescer[str, int, int] = Coalescer(flush, max_items=5, max_in_flight=1)
    out = await asyncio.gather(co.call("a", 1), co.call("a", 2), return_exceptions=True)
    assert all(isinstance(x, FlushAnswerMismatch) for x in out)


async def test_cancelled_waiting_caller_is_dropped_and_the_batch_goes_on() -> None:
    rec = Recorder()
    rec.gate.clear()
    co: Coalescer[str, int, int] = Coalescer(rec, max_items=10, max_in_flight=1)
    first = asyncio.create_task(co.call("a", 1))
    await asyncio.sleep(0.01)
    waiting = [asyncio.create_task(co.call("a", i)) for i in (2, 3, 4)]
    await asyncio.sleep(0.01)
    waiting[1].cancel()  # item 3 waits for room: it must never be flushed
    await asyncio.sleep(0.01)
    rec.gate.set()
    assert await first == 10
    assert await waiting[0] == 20 and await waiting[2] == 40
    with pytest.raises(asyncio.CancelledError):
        await waiting[1]
    assert rec.calls == [("a", [1]), ("a", [2, 4])]


async def test_caller_cancelled_during_its_flush_leaves_the_flush_to_the_others() -> None:
    rec = Recorder()
    rec.gate.clear()
    co: Coalescer[str, int, int] = Coalescer(rec, max_items=10, max_in_flight=1)
    tasks = [asyncio.create_task(co.call("a", i)) for i in (1, -2, 3)]
    await asyncio.sleep(0.01)
    assert rec.calls == [("a", [1, -2, 3])]
    tasks[0].cancel()
    tasks[1].cancel()  # its answer is an exception nobody reads: no warning, no crash
    await asyncio.sleep(0.01)
    rec.gate.set()
    assert await tasks[2] == 30
    for t in tasks[:2]:
        with pytest.raises(asyncio.CancelledError):
            await t
    # the key is free again afterwards
    assert await co.call("a", 5) == 50


async def test_every_cancelled_caller_before_its_flush_leaves_nothing_to_flush() -> None:
    """Nothing is flushed for the cancelled item, and (review helper-135 L2) no flush
    lingers for it either: the next item, with nothing of its key in flight, goes out at
    once."""
    rec = Recorder()
    rec.gate.clear()
    co: Coalescer[str, int, int] = Coalescer(rec, max_items=10, max_in_flight=1, linger_ms=300)
    first = asyncio.create_task(co.call("a", 1))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(co.call("a", 2))
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.sleep(0.01)
    rec.gate.set()
    assert await first == 10
    await asyncio.sleep(0.01)
    assert rec.calls == [("a", [1])]
    assert co._lanes == {}
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await co.call("a", 3) == 30
    assert loop.time() - t0 < 0.15, "the next item waited behind a flush for a cancelled one"
    assert rec.calls == [("a", [1]), ("a", [3])]


async def test_enqueued_items_share_a_flush_and_a_cancelled_future_is_never_flushed() -> None:
    """``enqueue`` answers through futures without a task each; cancelling a future before
    its flush takes it drops the item, after it drops only the answer."""
    rec = Recorder()
    rec.gate.clear()
    co: Coalescer[str, int, int] = Coalescer(rec, max_items=10, max_in_flight=1)
    first = co.enqueue("a", 1)  # nothing in flight: goes out at once
    await asyncio.sleep(0.01)
    behind = [co.enqueue("a", i) for i in (2, -3, 4)]
    behind[0].cancel()  # before any flush took it
    await asyncio.sleep(0.01)
    rec.gate.set()
    assert await first == 10
    answers = await asyncio.gather(behind[1], behind[2], return_exceptions=True)
    assert isinstance(answers[0], ValueError) and answers[1] == 40
    assert rec.calls == [("a", [1]), ("a", [-3, 4])]
    rec.gate.clear()
    taken = [co.enqueue("a", i) for i in (5, 6)]
    await asyncio.sleep(0.01)
    assert rec.calls[-1] == ("a", [5, 6])
    taken[0].cancel()  # already in its flush: the flush runs on for the other
    rec.gate.set()
    assert await taken[1] == 60
    assert taken[0].cancelled()
    await asyncio.sleep(0.01)
    assert co._lanes == {}


async def test_a_caller_cancelled_as_its_exception_arrives_leaves_no_unread_exception() -> None:
    """The answer (an exception) and the caller's cancellation land in the same loop turn:
    the caller sees CancelledError, and the exception is marked read (no "Future exception
    was never retrieved" report from the loop)."""
    loop = asyncio.get_running_loop()
    reports: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    caller: asyncio.Task[int] | None = None

    async def flush(key: str, items: Sequence[int]) -> list[int | BaseException]:
        assert caller is not None
        loop.call_soon(caller.cancel)  # runs after the answer is set, before the caller
        return [ValueError("refused")]

    co: Coalescer[str, int, int] = Coalescer(flush, max_items=10, max_in_flight=1)
    try:
        caller = asyncio.create_task(co.call("a", 1))
        with pytest.raises(asyncio.CancelledError):
            await caller
        caller = None
        gc.collect()
        await asyncio.sleep(0)
        assert reports == []
    finally:
        loop.set_exception_handler(None)


def test_bounds_are_checked() -> None:
    async def flush(key: str, items: Sequence[int]) -> list[int | BaseException]:
        return list(items)

    with pytest.raises(ValueError, match="max_items"):
        Coalescer(flush, max_items=0, max_in_flight=1)
    with pytest.raises(ValueError, match="max_items"):
        Coalescer(flush, max_items=1, max_in_flight=0)


async def test_close_answers_every_caller_even_one_waiting_behind_a_lingering_flush() -> None:
    """Review s19 finding 4: a flush cancelled by close() while it lingered must not leave
    its callers waiting for ever: each one sees CancelledError."""
    rec = Recorder()
    rec.gate.clear()
    co: Coalescer[str, int, int] = Coalescer(rec, max_items=10, max_in_flight=2, linger_ms=5_000)
    first = asyncio.create_task(co.call("a", 1))  # in flight, held by the gate
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(co.call("a", 2))  # lingers behind it
    await asyncio.sleep(0.01)
    await co.close()
    for task in (first, waiting):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2)


async def test_close_starts_no_flush_on_its_way_out_and_the_coalescer_can_start_again() -> None:
    """Review s23: a flush cancelled by close() used to start the next flush from its
    ``finally`` (with no linger it ran at once), so items were flushed after close() (a
    ledger write while the coordinator stops). Now nothing is flushed once close() begins,
    a call during it is refused, and afterwards the coalescer works as new."""
    rec = Recorder()
    rec.gate.clear()
    co: Coalescer[str, int, int] = Coalescer(rec, max_items=10, max_in_flight=1)
    first = asyncio.create_task(co.call("a", 1))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(co.call("a", 2))  # waits behind the first flush
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(co.close())
    await asyncio.sleep(0)  # close() runs: it waits for the cancelled flush
    assert not closing.done()
    with pytest.raises(CoalescerClosed) as closed:
        await co.call("a", 3)
    # UNAVAILABLE (retryable) at the RPC boundary, never INTERNAL.
    assert isinstance(closed.value, Unavailable)
    # enqueue() never raises it: its future carries it (review helper-135 L1: a caller
    # awaiting two futures meets it with every other answer).
    refused = co.enqueue("a", 5)
    assert isinstance(refused.exception(), CoalescerClosed)
    await closing
    await asyncio.sleep(0.05)
    assert rec.calls == [("a", [1])], "a flush started after close()"
    for task in (first, second):
        with pytest.raises(asyncio.CancelledError):
            await task
    rec.gate.set()
    assert await co.call("a", 4) == 40  # after close(): as new
    assert rec.calls == [("a", [1]), ("a", [4])]


def slow_to_stop() -> tuple[Recorder, asyncio.Event, Coalescer[str, int, int]]:
    """A coalescer (``max_in_flight`` 1) whose flushes wait on the recorder's gate (closed)
    and, once cancelled, wind down only when the returned event is set."""
    rec = Recorder()
    rec.gate.clear()
    slow = asyncio.Event()

    async def flush(key: str, items: Sequence[int]) -> list[int | BaseException]:
        try:
            return await rec(key, items)
        except asyncio.CancelledError:
            await slow.wait()  # winds down only when told
            raise

    return rec, slow, Coalescer(flush, max_items=10, max_in_flight=1)


async def test_close_lets_its_own_cancelled_caller_go_and_still_answers_every_caller() -> None:
    """Review s23: close() suppressed every CancelledError while it waited for its flushes,
    also one aimed at close() itself (a coordinator stopping under a deadline). Now that one
    propagates; the callers waiting for a flush are still answered, and nothing is flushed."""
    rec, slow, co = slow_to_stop()
    first = asyncio.create_task(co.call("a", 1))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(co.call("a", 2))  # waits behind the first flush
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(co.close())
    await asyncio.sleep(0.01)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(closing, 2)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(second, 2)  # answered although close() was cut short
    slow.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first, 2)
    await asyncio.sleep(0.05)
    assert rec.calls == [("a", [1])], "a flush started after close()"
    rec.gate.set()
    assert await co.call("a", 3) == 30  # usable again


async def test_a_flush_ending_after_a_cut_short_close_leaves_the_new_lane_alone() -> None:
    """Review helper-135: close() cut short returns before its cancelled flush has wound
    down; when that flush ends it must not drop the lane a new call made for its key since
    (which let a third item go out beside the new lane's flush: two flushes of a key with
    ``max_in_flight`` 1)."""
    rec, slow, co = slow_to_stop()
    old = asyncio.create_task(co.call("a", 1))
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(co.close())
    await asyncio.sleep(0.01)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    new = asyncio.create_task(co.call("a", 2))  # a new lane; its flush waits on the gate
    await asyncio.sleep(0.01)
    slow.set()  # the old flush now ends
    with pytest.raises(asyncio.CancelledError):
        await old
    await asyncio.sleep(0.01)
    third = asyncio.create_task(co.call("a", 3))
    await asyncio.sleep(0.01)
    assert rec.peak == 1, "a second flush of the key ran beside the new lane's"
    assert rec.calls == [("a", [1]), ("a", [2])]
    rec.gate.set()
    assert (await new, await third) == (20, 30)
