"""Small asyncio helpers shared by every process."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

__all__ = ["retrieve", "stop_task", "stop_tasks"]


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
