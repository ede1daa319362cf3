"""bridge.aio: stopping a task without swallowing the caller's own cancellation (review
s23: the adapters' close() suppressed any CancelledError while waiting for their head
subscription, including one aimed at close() itself); waiting with a time limit without
losing the caller's cancellation (CI on 72eaccd: Python 3.11's wait_for lost it and a test
waited for a cancelled head subscription until the run's 90 minutes were up)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from bridge.aio import stop_task, stop_tasks, wait_event, within

pytestmark = [pytest.mark.unit]


async def _slow_to_stop() -> None:
    """Waits a minute; takes 0.1 s to wind down once cancelled."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await asyncio.sleep(0.1)
        raise


async def test_stop_task_cancels_and_waits_for_the_task() -> None:
    finished = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            finished.set()

    task = asyncio.ensure_future(work())
    await asyncio.sleep(0)
    await stop_task(task)
    assert task.cancelled() and finished.is_set()


async def test_a_cancelled_caller_is_not_swallowed() -> None:
    """The task takes a while to wind down; the caller of stop_task is cancelled meanwhile:
    the caller sees CancelledError, and the task still ends."""

    task = asyncio.ensure_future(_slow_to_stop())
    await asyncio.sleep(0)
    caller = asyncio.ensure_future(stop_task(task))
    await asyncio.sleep(0.02)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait([task], timeout=2)
    assert task.cancelled()


async def test_a_failed_task_is_consumed(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise ValueError("boom")

    task = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    await stop_task(task)  # returns; the failure is consumed, not raised
    assert isinstance(task.exception(), ValueError)


async def test_stop_tasks_ends_every_task_and_consumes_each_outcome() -> None:
    """Several tasks at once (a coalescer's flushes, a supervisor's drivers): each is
    cancelled and awaited; one that already failed or finished is consumed, not raised."""

    async def fails() -> None:
        raise ValueError("boom")

    async def done() -> int:
        return 1

    async def waits() -> None:
        await asyncio.sleep(60)

    failed, finished, waiting = (asyncio.ensure_future(c) for c in (fails(), done(), waits()))
    await asyncio.sleep(0)
    await stop_tasks([failed, finished, waiting])
    assert isinstance(failed.exception(), ValueError)
    assert finished.result() == 1
    assert waiting.cancelled()
    await stop_tasks([])  # nothing to stop: returns


async def test_stop_tasks_lets_a_cancelled_caller_go_and_the_tasks_still_end() -> None:
    tasks = [asyncio.ensure_future(_slow_to_stop()) for _ in range(3)]
    await asyncio.sleep(0)
    caller = asyncio.ensure_future(stop_tasks(tasks))
    await asyncio.sleep(0.02)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait(tasks, timeout=2)
    assert all(t.cancelled() for t in tasks)


async def _cancelled_while_the_inner_call_completes() -> int:
    """Asks for its own cancellation, then calls something that completes on its first
    step: the cancellation and the completion land in the same loop iteration (the race
    that 3.11's ``asyncio.wait_for`` loses). Afterwards it would sleep and return 1."""
    asyncio.get_running_loop().call_soon(asyncio.current_task().cancel)  # type: ignore[union-attr]

    async def completes_at_once() -> int:
        return 1

    value = await within(asyncio.ensure_future(completes_at_once()), 5)
    await asyncio.sleep(0.05)
    return value


async def _cancelled_after_the_awaited_future_resolved() -> int:
    """Awaits a future that resolves, then asks for its own cancellation in the same loop
    iteration, before it has resumed (review helper-124: the case above cancels the inner
    task before it starts)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()
    loop.call_soon(future.set_result, 1)
    loop.call_soon(asyncio.current_task().cancel)  # type: ignore[union-attr]
    value = await within(future, 5)
    await asyncio.sleep(0.05)
    return value


@pytest.mark.parametrize(
    "race",
    [_cancelled_while_the_inner_call_completes, _cancelled_after_the_awaited_future_resolved],
)
async def test_within_never_loses_the_callers_cancellation(
    race: Callable[[], Coroutine[Any, Any, int]],
) -> None:
    task = asyncio.ensure_future(race())
    await asyncio.wait([task], timeout=2)
    assert task.cancelled()  # with asyncio.wait_for in within: the task returned 1


async def test_within_returns_the_result_or_raises_timeout() -> None:
    async def value_after(delay: float) -> str:
        await asyncio.sleep(delay)
        return "v"

    assert await within(value_after(0), 1) == "v"
    assert await within(value_after(0.01), None) == "v"  # no limit
    with pytest.raises(TimeoutError):
        await within(value_after(5), 0.02)
    event = asyncio.Event()
    with pytest.raises(TimeoutError):
        await within(event.wait(), 0)  # an expired limit: at the first suspension


async def test_wait_event_answers_whether_the_event_was_set() -> None:
    """A loop's interruptible sleep: True as soon as the event is set (also when already
    set, without yielding), False once the time has passed with the event still clear."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await wait_event(event, 0.05) is False
    assert loop.time() - started >= 0.04
    loop.call_later(0.02, event.set)
    assert await wait_event(event, 5) is True
    assert await wait_event(event, 0) is True  # already set: at once


async def test_wait_event_never_loses_the_callers_cancellation() -> None:
    """The event is set in the loop iteration in which the waiting task is cancelled: the
    task ends cancelled (it does not go on as if woken)."""

    async def sleeper(event: asyncio.Event) -> bool:
        woke = await wait_event(event, 5)
        await asyncio.sleep(0.05)
        return woke

    event = asyncio.Event()
    task = asyncio.ensure_future(sleeper(event))
    await asyncio.sleep(0)  # the task waits on the event
    event.set()
    task.cancel()
    await asyncio.wait([task], timeout=2)
    assert task.cancelled()
