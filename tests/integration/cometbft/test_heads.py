"""Blocks pushed by a real CometBFT node (issue 14 item 4): the ``NewBlockHeader``
subscription on its ``/websocket`` wakes waiters without polling, a node of another chain
gets no subscription, and the adapter's ``wait_new_head`` (the relayer's watcher) answers
the next committed height."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bridge.config import LedgerConfig
from bridge.devnet.cometbft import APP_NAME, CometChain
from bridge.domain.committee import Committee
from bridge.domain.ids import LedgerId
from bridge.domain.signer import LocalKeySigner
from bridge.ledgers.cometbft.adapter import CometAdapter
from bridge.ledgers.cometbft.heads import NewBlockHeaders, websocket_connector, websocket_url
from bridge.ledgers.cometbft.rpc import CometClient
from bridge.ledgers.heads import HeadSubscription, HeadWatch
from bridge.ledgers.kinds import get_kind
from tests.conformance.kind_cometbft import require_cometbft

pytestmark = [pytest.mark.integration, pytest.mark.cometbft, pytest.mark.batch]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CometChain]:
    require_cometbft()
    members = sorted(LocalKeySigner(secrets.token_bytes(32)).address for _ in range(4))
    c = CometChain("heads-cmt", tmp_path_factory.mktemp("cmt"), Committee(1, 3, tuple(members)))
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
async def client(chain: CometChain) -> AsyncIterator[CometClient]:
    c = CometClient(chain.rpc_url, chain.chain_id)
    yield c
    await c.close()


async def until(cond: object, limit_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not cond():  # type: ignore[operator]
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.02)


async def test_pushed_headers_wake_waiters_without_polling(
    chain: CometChain, client: CometClient
) -> None:
    """With a 60 s poll, only the node's pushed headers can wake a waiter within 10 s; what
    the waiter gets is still the height ``abci_info`` answers."""
    watch = HeadWatch(client.latest_height, poll_s=60)
    sub = HeadSubscription(
        websocket_connector(websocket_url(chain.rpc_url)),
        watch,
        NewBlockHeaders(chain.chain_id),
        silence_s=10,
        min_backoff_s=0.1,
    )
    task = asyncio.ensure_future(sub.run())
    try:
        await until(lambda: watch.pushed)
        loop = asyncio.get_running_loop()
        for _ in range(3):
            before = await client.latest_height()
            head = await watch.wait_above(before, loop.time() + 10)
            assert head > before
            assert head <= await client.latest_height()  # a read's answer, never the push's
        assert sub.heads >= 3 and sub.sessions == 1
        # one read per push, plus the first read and the one going live triggers
        assert watch.polls <= sub.heads + 2, "the watch polled instead of reading per push"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await watch.close()
    assert not watch.pushed


async def test_a_node_of_another_chain_gets_no_subscription(
    chain: CometChain, client: CometClient
) -> None:
    watch = HeadWatch(client.latest_height, poll_s=0.05)
    sub = HeadSubscription(
        websocket_connector(websocket_url(chain.rpc_url)),
        watch,
        NewBlockHeaders("another-chain-1"),
        silence_s=10,
    )
    with capture_logs() as logs:
        await asyncio.wait_for(sub.run(), 10)  # stops for good
    assert (sub.sessions, sub.heads, watch.pushed) == (0, 0, False)
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "head subscription refused: wrong chain"
    ]
    # polling still serves waiters
    before = await client.latest_height()
    assert await watch.wait_above(before, asyncio.get_running_loop().time() + 10) > before
    await watch.close()


async def test_the_adapter_waits_for_the_next_block(chain: CometChain, tmp_path: Path) -> None:
    """``CometAdapter.wait_new_head``, which the relayer's watcher uses instead of polling:
    at once when the height is already above, None after the timeout when asked for a
    height far ahead, the next committed height when a block commits, by subscription."""
    config = LedgerConfig(
        id=LedgerId("heads-cmt"), kind="cometbft", rpc_url=chain.rpc_url, bridge=APP_NAME,
        chain_id=0, finality_depth=0, block_interval=chain.block_time,
        channel=chain.chain_id, genesis_hash=chain.network_word,
    )  # fmt: skip
    adapter = get_kind("cometbft").open(config, None, None, False)
    assert isinstance(adapter, CometAdapter)
    try:
        with capture_logs() as logs:
            final = await adapter.finalized_height()
            assert (await adapter.wait_new_head(final - 1, 5.0) or 0) >= final
            assert await adapter.wait_new_head(final + 1_000_000, 0.5) is None
            for _ in range(2):
                final = await adapter.finalized_height()
                head = await adapter.wait_new_head(final, 10.0)
                assert head is not None and head > final
            await until(lambda: any(e["event"] == "heads pushed by subscription" for e in logs))
        assert not [e for e in logs if e["log_level"] in ("warning", "error")]
    finally:
        await adapter.close()
