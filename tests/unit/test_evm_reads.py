"""The shared-read helpers of the EVM adapter (issue 14 item 4): freshness, batching,
one head poll for every waiter, fee fields per block, and what happens on errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge.domain.errors import Unavailable
from bridge.ledgers.evm.reads import (
    LENS_READ_ATTEMPTS,
    Batcher,
    FeeCache,
    FreshRead,
    WrongBlock,
    read_at_block,
)
from bridge.ledgers.heads import HeadWatch

pytestmark = [pytest.mark.unit, pytest.mark.batch]


class Node:
    """A fake node: a head that tests move, and a gate that holds requests in flight."""

    def __init__(self) -> None:
        self.head = 10
        self.requests = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def read(self) -> int:
        self.requests += 1
        value = self.head  # the value as of when the request reached the node
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return value


# ---- FreshRead -------------------------------------------------------------------------------
async def test_fresh_read_shares_one_request_among_concurrent_callers() -> None:
    node = Node()
    read = FreshRead(node.read)
    assert await asyncio.gather(*(read.get() for _ in range(20))) == [10] * 20
    assert node.requests == 1


async def test_fresh_read_never_answers_a_caller_with_a_read_started_before_it() -> None:
    node = Node()
    node.gate.clear()
    read = FreshRead(node.read)
    early = asyncio.ensure_future(read.get())
    await asyncio.sleep(0.01)  # the first request is at the node, answering 10
    node.head = 11  # a block arrives; a caller asking now must see it
    late = [asyncio.ensure_future(read.get()) for _ in range(5)]
    await asyncio.sleep(0.01)
    node.gate.set()
    assert await early == 10
    assert await asyncio.gather(*late) == [11] * 5
    assert node.requests == 2  # the late callers shared one request


async def test_fresh_read_failure_reaches_its_callers_only_and_the_next_call_reads_again() -> None:
    node = Node()
    read = FreshRead(node.read)
    node.fail = Unavailable("node down")
    results = await asyncio.gather(read.get(), read.get(), return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    node.fail = None
    assert await read.get() == 10  # nothing cached from the failure
    assert node.requests == 2


# ---- Batcher ---------------------------------------------------------------------------------
class Reads:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on: int | None = None
        self.short = False

    async def fetch(self, keys: list[int]) -> list[int]:
        self.batches.append(list(keys))
        await self.gate.wait()
        if self.fail_on is not None and self.fail_on in keys:
            raise Unavailable(f"batch with {self.fail_on} failed")
        return [k * 10 for k in keys][: -1 if self.short else None]


async def test_batcher_answers_concurrent_callers_with_one_fetch_of_distinct_keys() -> None:
    reads = Reads()
    batcher = Batcher(reads.fetch, max_items=256)
    got = await asyncio.gather(*(batcher.get(k % 7) for k in range(30)))
    assert got == [(k % 7) * 10 for k in range(30)]
    assert reads.batches == [list(range(7))]


async def test_batcher_splits_at_the_bound_and_fetches_the_chunks_together() -> None:
    reads = Reads()
    batcher = Batcher(reads.fetch, max_items=4)
    got = await asyncio.gather(*(batcher.get(k) for k in range(10)))
    assert got == [k * 10 for k in range(10)]
    assert [len(b) for b in reads.batches] == [4, 4, 2]


@pytest.mark.parametrize("many", [False, True], ids=["get", "get_many"])
async def test_batcher_queues_callers_during_a_batch_for_the_next_one(many: bool) -> None:
    reads = Reads()
    reads.gate.clear()
    batcher = Batcher(reads.fetch, max_items=256)
    first = asyncio.ensure_future(batcher.get(1))
    await asyncio.sleep(0.01)
    if many:
        later = asyncio.ensure_future(batcher.get_many([1, 2, 3]))
    else:
        later = asyncio.gather(*(batcher.get(k) for k in (1, 2, 3)))
    await asyncio.sleep(0.01)
    assert reads.batches == [[1]]  # the later callers wait for a fetch started after them
    assert not later.done()
    reads.gate.set()
    assert await first == 10
    assert await later == [10, 20, 30]
    assert reads.batches == [[1], [1, 2, 3]]


async def test_batcher_failure_fails_only_the_callers_of_its_chunk() -> None:
    reads = Reads()
    reads.fail_on = 5
    batcher = Batcher(reads.fetch, max_items=4)
    results = await asyncio.gather(*(batcher.get(k) for k in range(8)), return_exceptions=True)
    assert results[:4] == [0, 10, 20, 30]
    assert all(isinstance(r, Unavailable) for r in results[4:])
    reads.fail_on = None
    assert await batcher.get(5) == 50  # nothing remembered from the failed batch


async def test_batcher_refuses_an_answer_of_the_wrong_length() -> None:
    reads = Reads()
    reads.short = True
    batcher = Batcher(reads.fetch, max_items=8)
    results = await asyncio.gather(batcher.get(1), batcher.get(2), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)


async def test_batcher_get_many_answers_in_order_with_the_callers_of_its_turn() -> None:
    """A caller's many keys (repeats included) join the same batch as the single callers of
    its turn, each key fetched once, the answers in the caller's order."""
    reads = Reads()
    batcher = Batcher(reads.fetch, max_items=4)
    many, one = await asyncio.gather(batcher.get_many([3, 1, 3, 2, 5, 6]), batcher.get(1))
    assert (many, one) == ([30, 10, 30, 20, 50, 60], 10)
    assert reads.batches == [[3, 1, 2, 5], [6]]
    assert await batcher.get_many([]) == []
    assert len(reads.batches) == 2  # nothing fetched for no keys


async def test_batcher_get_many_raises_a_failed_chunks_error_after_every_key_is_answered() -> None:
    reads = Reads()
    reads.fail_on = 5
    batcher = Batcher(reads.fetch, max_items=4)
    with pytest.raises(Unavailable, match="with 5 failed"):
        await batcher.get_many(list(range(8)))
    assert len(reads.batches) == 2  # both chunks were fetched, the good one answered too
    reads.fail_on = None
    assert await batcher.get_many([5, 0]) == [50, 0]


async def test_a_cancelled_get_many_leaves_the_batch_to_answer_the_others() -> None:
    reads = Reads()
    reads.gate.clear()
    batcher = Batcher(reads.fetch, max_items=256)
    cancelled = asyncio.ensure_future(batcher.get_many([1, 2]))
    other = asyncio.ensure_future(batcher.get(2))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    reads.gate.set()
    assert await other == 20
    assert cancelled.cancelled()
    assert await batcher.get_many([1]) == [10]


async def test_a_batch_that_cannot_be_made_answers_every_caller_in_it() -> None:
    """Review helper-133 L1: a failure outside the fetch (here an unhashable key) or the
    drain cancelled mid-fetch answers every caller taken into the batch (the others'
    plain ``get`` too), never leaves one waiting, and the next call is fetched."""
    reads = Reads()
    batcher: Batcher[Any, int] = Batcher(reads.fetch, max_items=8)
    bad, other = await asyncio.wait_for(
        asyncio.gather(batcher.get_many([[1], 2]), batcher.get(3), return_exceptions=True), 2
    )
    assert isinstance(bad, TypeError) and isinstance(other, TypeError)
    assert await batcher.get(3) == 30
    reads.gate.clear()
    waiting = asyncio.ensure_future(batcher.get_many([4, 5]))
    await asyncio.sleep(0.01)
    assert batcher._task is not None
    batcher._task.cancel()
    with pytest.raises(Unavailable, match="cancelled"):
        await asyncio.wait_for(waiting, 2)
    reads.gate.set()
    assert await batcher.get_many([4]) == [40]


async def test_a_fetch_cancelled_from_within_is_unavailable_to_callers_not_cancelled() -> None:
    async def fetch(keys: list[int]) -> list[int]:
        raise asyncio.CancelledError

    batcher = Batcher(fetch, max_items=8)
    with pytest.raises(Unavailable, match="cancelled"):
        await asyncio.wait_for(batcher.get_many([1, 2]), 2)
    assert not batcher._busy


def test_batcher_needs_a_positive_bound() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(Reads().fetch, max_items=0)


# ---- HeadWatch -------------------------------------------------------------------------------
async def test_head_watch_polls_once_per_interval_for_every_waiter() -> None:
    node = Node()
    watch = HeadWatch(node.read, poll_s=0.02)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5

    async def bump() -> None:
        await asyncio.sleep(0.1)
        node.head = 12

    bumping = asyncio.ensure_future(bump())
    heads = await asyncio.gather(*(watch.wait_above(11, deadline) for _ in range(50)))
    await bumping
    assert heads == [12] * 50
    assert node.requests <= 12  # about 0.1 s / 0.02 s polls, not 50 waiters' worth
    await asyncio.sleep(0.06)
    idle = node.requests
    await asyncio.sleep(0.1)
    assert node.requests == idle  # no waiter: no polling
    await watch.close()


async def test_head_watch_known_head_answers_at_once_and_next_head_waits() -> None:
    node = Node()
    watch = HeadWatch(node.read, poll_s=0.01)
    deadline = asyncio.get_running_loop().time() + 5
    assert await watch.wait_above(-1, deadline) == 10
    requests = node.requests
    assert await watch.wait_above(-1, deadline) == 10  # already above: no request
    assert node.requests == requests
    with pytest.raises(TimeoutError):
        await watch.wait_above(10, asyncio.get_running_loop().time() + 0.05)
    await watch.close()


async def test_head_watch_poll_failure_is_raised_to_the_waiters() -> None:
    node = Node()
    node.fail = Unavailable("node down")
    watch = HeadWatch(node.read, poll_s=0.01)
    deadline = asyncio.get_running_loop().time() + 5
    results = await asyncio.gather(
        *(watch.wait_above(-1, deadline) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, Unavailable) for r in results)
    assert watch.head is None  # a failed poll is not a head
    node.fail = None
    assert await watch.wait_above(-1, deadline) == 10
    await watch.close()


async def test_head_watch_recent_is_none_once_the_poll_is_older_than_asked() -> None:
    node = Node()
    watch = HeadWatch(node.read, poll_s=0.01)
    assert watch.recent(1.0) is None
    await watch.wait_above(-1, asyncio.get_running_loop().time() + 5)
    assert watch.recent(1.0) == 10
    await asyncio.sleep(0.05)
    assert watch.recent(0.01) is None
    await watch.close()


# ---- FeeCache --------------------------------------------------------------------------------
def test_fee_cache_serves_only_the_block_it_was_read_at() -> None:
    cache = FeeCache()
    fields = {"maxFeePerGas": 2_000, "maxPriorityFeePerGas": 1}
    cache.put(7, fields)
    assert cache.get(7) == fields
    assert cache.get(8) is None  # a new block: read the fees again
    assert cache.get(None) is None  # no recent head known: read the fees again
    got = cache.get(7)
    assert got is not None
    got["maxFeePerGas"] = 1
    assert cache.get(7) == fields  # callers get copies


def test_fee_cache_forgets_on_invalidate() -> None:
    cache = FeeCache()
    cache.put(7, {"gasPrice": 5})
    cache.invalidate()
    assert cache.get(7) is None


async def test_head_watch_uses_a_fresh_observation_instead_of_polling() -> None:
    node = Node()
    watch = HeadWatch(node.read, poll_s=0.05)
    deadline = asyncio.get_running_loop().time() + 5
    assert await watch.wait_above(-1, deadline) == 10
    polls = node.requests

    async def others_read() -> None:  # e.g. leg reads that saw new heads
        for head in (11, 12, 13):
            await asyncio.sleep(0.02)
            watch.observe(head)

    observing = asyncio.ensure_future(others_read())
    assert await watch.wait_above(12, deadline) == 13
    await observing
    assert node.requests - polls <= 1  # served by the observations
    watch.observe(5)  # an earlier request answering late: ignored
    assert watch.head == 13
    await watch.close()


def _answers(*numbers: int) -> tuple[list[int], Callable[[], Awaitable[Sequence[Any]]]]:
    """A lens read that answers block ``numbers[i]`` on its i-th call (and counts calls)."""
    calls: list[int] = []

    async def read() -> tuple[int, str]:
        calls.append(1)
        return numbers[min(len(calls), len(numbers)) - 1], f"figures of {len(calls)}"

    return calls, read


async def test_a_lens_answer_for_the_next_block_is_asked_again_and_never_used() -> None:
    """The e2e flake of 2026-12-04: a read of block 1068 answered 1069 (anvil mining)."""
    calls, read = _answers(1069, 1068)
    with capture_logs() as logs:
        number, rest = await read_at_block(read, 1068, ledger="x")
    assert [(e["attempt"], e["error"]) for e in logs] == [
        (1, "ledger x: a read of block 1068 answered 1069")
    ]
    assert (number, tuple(rest), len(calls)) == (1068, ("figures of 2",), 2)


async def test_a_lens_that_keeps_answering_another_block_is_unavailable() -> None:
    calls, read = _answers(1069)
    with pytest.raises(WrongBlock, match="a read of block 1068 answered 1069") as err:
        await read_at_block(read, 1068, ledger="x")
    assert isinstance(err.value, Unavailable)
    assert len(calls) == LENS_READ_ATTEMPTS


async def test_a_latest_read_takes_the_block_it_reports_in_one_call() -> None:
    calls, read = _answers(1070)
    number, _ = await read_at_block(read, None, ledger="x")
    assert (number, len(calls)) == (1070, 1)


async def test_a_lens_read_error_is_not_retried() -> None:
    calls: list[int] = []

    async def read() -> tuple[int]:
        calls.append(1)
        raise Unavailable("node down")

    with pytest.raises(Unavailable, match="node down"):
        await read_at_block(read, 5, ledger="x")
    assert len(calls) == 1
