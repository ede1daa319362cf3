"""Small asyncio helpers shared by every process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Collection
from typing import Any, TypeVar

__all__ = ["retrieve", "stop_task", "stop_tasks", "wait_event", "within"]

T = TypeVar("T")


def retrieve(future: asyncio.Future[Any]) -> None:
    """Consume the outcome of a future nobody may await any more (a shielded call whose
    callers left, a shared read whose waiters were cancelled), so a failure is not logged as
    "exception was never retrieved". A done-callback; the outcome is otherwise untouched."""
    if not future.cancelled():
        future.exception()


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and return once it has finished, its outcome consumed.

    Unlike ``with suppress(CancelledError): await task``, a cancellation of the caller
    itself is never swallowed: it propagates (review s23), and the task still ends."""
    await stop_tasks([task])


async def stop_tasks(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel every task of ``tasks`` and return once all have finished, each outcome
    (a result, an exception, a cancellation) consumed.

    A cancellation of the caller itself propagates at once (the tasks are cancelled all the
    same and end on their own); it is never mistaken for a task's own cancellation."""
    for task in tasks:
        task.cancel()
        task.add_done_callback(retrieve)  # also when the caller leaves before they end
    if tasks:
        await asyncio.wait(tasks)


async def within(awaitable: Awaitable[T], timeout_s: float | None) -> T:
    """Await ``awaitable`` in the calling task; TimeoutError once ``timeout_s`` has passed
    (None: no limit). The caller's own cancellation is always raised.

    CI on 72eaccd hung for 85 minutes on this: Python 3.11's ``asyncio.wait_for`` returns the
    inner result when the caller is cancelled in the same loop iteration as the inner call
    completes, so the cancellation is lost: a head subscription cancelled at shutdown kept
    running and its owner waited for it for ever. ``asyncio.timeout`` counts cancellations
    (``Task.uncancel``) and never loses the caller's; every process uses this instead of
    ``wait_for`` (ruff TID251 refuses ``asyncio.wait_for`` outside the tests)."""
    async with asyncio.timeout(timeout_s):
        return await awaitable


async def wait_event(event: asyncio.Event, timeout_s: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` has passed (None: no limit); True when
    it is set on return. A loop's sleep that a wake-up, a kick or its stop event cuts short.

    Bounded by :func:`within`, so the caller's own cancellation is always raised, never
    taken for the timeout; an event already set returns at once without yielding."""
    if event.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        await within(event.wait(), timeout_s)
    return event.is_set()
