"""Small asyncio helpers shared by every process."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["retrieve", "stop_task"]


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
    task.cancel()
    await asyncio.wait([task])
    retrieve(task)
