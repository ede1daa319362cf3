"""Single reads standing in for a many-item read, a bounded number at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal, TypeVar, overload

T = TypeVar("T")
R = TypeVar("R")

READ_CONCURRENCY = 8
"""Single reads in flight at once when a kind has no many-item read."""


@overload
async def gather_bounded(
    read: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    limit: int = ...,
    *,
    return_exceptions: Literal[False] = ...,
) -> list[R]: ...


@overload
async def gather_bounded(
    read: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    limit: int = ...,
    *,
    return_exceptions: Literal[True],
) -> list[R | BaseException]: ...


async def gather_bounded(
    read: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    limit: int = READ_CONCURRENCY,
    *,
    return_exceptions: bool = False,
) -> list[R] | list[R | BaseException]:
    """``read(item)`` for every item, at most ``limit`` at a time; the answers in item
    order. Raises the first exception a read raises (no partial answer), or with
    ``return_exceptions`` answers each read's exception in its place."""
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> R:
        async with gate:
            return await read(item)

    return list(await asyncio.gather(*(one(i) for i in items), return_exceptions=return_exceptions))
