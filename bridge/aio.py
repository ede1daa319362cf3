"""Small asyncio helpers shared by every process."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["retrieve"]


def retrieve(future: asyncio.Future[Any]) -> None:
    """Consume the outcome of a future nobody may await any more (a shielded call whose
    callers left, a shared read whose waiters were cancelled), so a failure is not logged as
    "exception was never retrieved". A done-callback; the outcome is otherwise untouched."""
    if not future.cancelled():
        future.exception()
