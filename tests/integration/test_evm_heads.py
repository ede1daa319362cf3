"""Pushed heads against a real anvil (issue 14 item 4): heads arrive by newHeads subscription
with ~no eth_blockNumber polling; anvil killed and restarted -> polling, then resubscribed;
a node pushing heads beyond its real head never makes a wait return early."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from bridge.devnet.anvil import AnvilNode
from bridge.ledgers.evm.heads import NewHeads, websocket_connector
from bridge.ledgers.heads import HeadSubscription, HeadWatch

pytestmark = [pytest.mark.integration, pytest.mark.batch]

CHAIN_ID = 31337
BLOCK_S = 0.5
POLL_S = 0.05  # what the adapter uses for this block interval


@pytest.fixture
def anvil(tmp_path: Path) -> Iterator[AnvilNode]:
    node = AnvilNode("heads", CHAIN_ID, BLOCK_S, tmp_path).start()
    try:
        yield node
    finally:
        node.stop()


class HttpHead:
    """eth_blockNumber over HTTP (a thread: the test's fake stays independent of web3)."""

    def __init__(self, node: AnvilNode) -> None:
        self.node = node
        self.reads = 0

    async def read(self) -> int:
        self.reads += 1
        return int(await asyncio.to_thread(self.node.rpc, "eth_blockNumber", []), 16)


async def _until(cond: object, limit_s: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not cond():  # type: ignore[operator]
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.02)


async def test_heads_by_subscription_fallback_and_resubscribe(anvil: AnvilNode) -> None:
    http = HttpHead(anvil)
    watch = HeadWatch(http.read, POLL_S)
    sub = HeadSubscription(
        websocket_connector(anvil.ws_url, None, {}),
        watch,
        NewHeads(CHAIN_ID),
        silence_s=3 * BLOCK_S,
        min_backoff_s=0.1,
        max_backoff_s=0.5,
    )
    task = asyncio.ensure_future(sub.run())
    loop = asyncio.get_running_loop()
    try:
        await _until(lambda: watch.pushed, 10)
        head = await watch.wait_above(-1, loop.time() + 5)
        reads = http.reads
        for _ in range(6):  # six blocks (3 s): polling would read ~60 times
            head = await watch.wait_above(head, loop.time() + 5)
        assert sub.heads >= 5
        assert http.reads - reads <= 8, "about one confirming read per pushed block"

        anvil.process.stop()  # type: ignore[union-attr]
        await _until(lambda: not watch.pushed, 10)
        down = http.reads
        with pytest.raises(OSError, match="refused"):  # served by polls again (no node)
            await watch.wait_above(head, loop.time() + 5)
        assert http.reads > down
        anvil.start()  # same port
        await _until(lambda: sub.sessions >= 2 and watch.pushed, 15)
        pushed = sub.heads
        await _until(lambda: sub.heads >= pushed + 2, 5)  # heads pushed again
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await watch.close()


async def test_lying_push_does_not_make_a_height_final_early(anvil: AnvilNode) -> None:
    """SECURITY: a WebSocket node pushing heads 100 beyond the real chain: a finality wait
    (head >= sent block + depth) built on the watch still ends only when the HTTP reads
    reach it."""

    async def liar(ws: ServerConnection) -> None:
        async for raw in ws:
            req = json.loads(raw)
            if req["method"] == "eth_chainId":
                await ws.send(json.dumps({"id": req["id"], "result": hex(CHAIN_ID)}))
            else:
                await ws.send(json.dumps({"id": req["id"], "result": "0x1"}))
                while True:
                    real = int(anvil.rpc("eth_blockNumber", []), 16)
                    msg = {"subscription": "0x1", "result": {"number": hex(real + 100)}}
                    await ws.send(json.dumps({"method": "eth_subscription", "params": msg}))
                    await asyncio.sleep(0.05)

    async with serve(liar, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        http = HttpHead(anvil)
        watch = HeadWatch(http.read, POLL_S)
        sub = HeadSubscription(
            websocket_connector(f"ws://127.0.0.1:{port}", None, {}),
            watch,
            NewHeads(CHAIN_ID),
            silence_s=3 * BLOCK_S,
        )
        task = asyncio.ensure_future(sub.run())
        loop = asyncio.get_running_loop()
        try:
            await _until(lambda: watch.pushed, 10)
            start = await watch.wait_above(-1, loop.time() + 5)
            target = start + 3  # "final" three blocks on
            with pytest.raises(TimeoutError):
                await watch.wait_above(target - 1, loop.time() + BLOCK_S)  # pushes say 100 on
            assert watch.head is not None and watch.head < target
            reached = await watch.wait_above(target - 1, loop.time() + 10)
            assert reached >= target
            assert reached == int(anvil.rpc("eth_blockNumber", []), 16) or reached < start + 10
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await watch.close()
