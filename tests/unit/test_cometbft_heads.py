"""The CometBFT head feed (issue 14 item 4) with fake sockets: the chain check before
subscribing, what counts as a pushed height (the node's messages are untrusted), the node
ending the subscription, and the WebSocket URL derived from the RPC URL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from bridge.ledgers.cometbft.heads import QUERY, NewBlockHeaders, websocket_url
from bridge.ledgers.heads import HeadSubscription, HeadWatch, WrongChain

pytestmark = [pytest.mark.unit, pytest.mark.batch]


class Socket:
    """Answers status (``network``) and subscribe; then yields what the test puts in inbox."""

    def __init__(self, network: object = "c-1", subscribe_reply: object = None) -> None:
        self.network = network
        self.subscribe_reply = subscribe_reply
        self.inbox: asyncio.Queue[str | BaseException] = asyncio.Queue()
        self.sent: list[dict[str, object]] = []
        self.closed = False

    async def send(self, message: str) -> None:
        req = json.loads(message)
        self.sent.append(req)
        if req["method"] == "status":
            info = {"node_info": {"network": self.network}} if self.network is not None else {}
            self.inbox.put_nowait(json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": info}))
        elif req["method"] == "subscribe":
            answer = self.subscribe_reply or {"jsonrpc": "2.0", "id": req["id"], "result": {}}
            self.inbox.put_nowait(json.dumps(answer))

    async def recv(self) -> str:
        item = await self.inbox.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        self.closed = True


def event(height: object, *, sub_id: object = 2, query: object = QUERY) -> dict[str, object]:
    header = {"chain_id": "c-1", "height": height}
    data = {"type": "tendermint/event/NewBlockHeader", "value": {"header": header}}
    return {"jsonrpc": "2.0", "id": sub_id, "result": {"query": query, "data": data}}


async def test_subscribes_only_on_the_configured_chain() -> None:
    feed = NewBlockHeaders("c-1")
    ws = Socket()
    sub = await feed.subscribe(ws, 1.0)
    assert [m["method"] for m in ws.sent] == ["status", "subscribe"]
    assert ws.sent[1]["params"] == {"query": QUERY}
    assert feed.head_of(event("12"), sub) == 12
    with pytest.raises(WrongChain, match="'c-2'"):
        await feed.subscribe(Socket(network="c-2"), 1.0)
    with pytest.raises(WrongChain) as huge:  # the node's text is bounded in the error
        await feed.subscribe(Socket(network="x" * 900_000), 1.0)
    assert len(str(huge.value)) < 200
    for network in (None, 7):  # no network named: not our chain confirmed, retried
        with pytest.raises(ValueError, match=r"node_info\.network"):
            await feed.subscribe(Socket(network=network), 1.0)
    refused = {"jsonrpc": "2.0", "id": 2, "error": {"code": -32603, "message": "max subs"}}
    with pytest.raises(ValueError, match="unexpected ws reply"):
        await feed.subscribe(Socket(subscribe_reply=refused), 1.0)


@pytest.mark.parametrize(
    "message",
    [
        event("12", sub_id=3),  # another id
        event("12", query="tm.event='Tx'"),  # another query
        event(12),  # a number, not CometBFT's string
        event("-1"),
        event("0x0c"),
        event("\uff11\uff12"),  # fullwidth digits (isdigit, not ASCII)
        event("9" * 20),  # beyond int64
        event(None),
        {"jsonrpc": "2.0", "id": 2, "result": {"query": QUERY, "data": "junk"}},
        {"jsonrpc": "2.0", "id": 2, "result": {"query": QUERY, "data": {"value": []}}},
        {"jsonrpc": "2.0", "id": 2, "result": None},
        ["not", "an", "object"],
        "text",
    ],
)
def test_anything_but_a_header_of_the_subscription_is_no_head(message: object) -> None:
    assert NewBlockHeaders("c-1").head_of(message, 2) is None


def test_an_error_for_the_subscription_ends_the_session() -> None:
    """CometBFT cancels a slow subscriber with an error response for its id: the session
    ends (the watch polls, the subscription reconnects) instead of waiting in silence."""
    cancelled = {
        "jsonrpc": "2.0",
        "id": 2,
        "error": {
            "code": -32000,
            "message": "Server error",
            "data": "subscription was canceled (reason: client is not pulling messages fast enough)",
        },
    }  # CometBFT v1's shape (rpc/core/events.go: RPCServerError for the subscription's id)
    with pytest.raises(ValueError, match="subscription was canceled"):
        NewBlockHeaders("c-1").head_of(cancelled, 2)
    assert NewBlockHeaders("c-1").head_of({**cancelled, "id": 5}, 2) is None


async def test_a_cancelled_subscription_falls_back_to_polling_and_resubscribes() -> None:
    sockets = [Socket(), Socket()]
    watch, sub, opened = await _subscription(sockets, silence_s=5)
    task = asyncio.ensure_future(sub.run())
    try:
        for _ in range(300):
            if watch.pushed:
                break
            await asyncio.sleep(0.01)
        assert watch.pushed and len(opened) == 1
        sockets[0].inbox.put_nowait(json.dumps(event("11")))
        sockets[0].inbox.put_nowait(
            json.dumps({"jsonrpc": "2.0", "id": 2, "error": {"message": "cancelled"}})
        )
        for _ in range(300):
            if len(opened) == 2 and watch.pushed:
                break
            await asyncio.sleep(0.01)
        assert (len(opened), sub.sessions, sub.heads, sockets[0].closed) == (2, 2, 1, True)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await watch.close()


@pytest.mark.parametrize(
    ("rpc", "ws"),
    [
        ("http://127.0.0.1:26657", "ws://127.0.0.1:26657/websocket"),
        ("https://node.example:443/", "wss://node.example:443/websocket"),
        ("https://proxy.example/cometbft", "wss://proxy.example/cometbft/websocket"),
    ],
)
def test_websocket_url_follows_the_rpc_url(rpc: str, ws: str) -> None:
    assert websocket_url(rpc) == ws


def test_a_rpc_url_of_another_scheme_has_no_websocket() -> None:
    with pytest.raises(ValueError, match="not http"):
        websocket_url("tcp://127.0.0.1:26657")


async def _subscription(
    sockets: list[Socket], height: Callable[[], int] = lambda: 10, **kw: object
) -> tuple[HeadWatch, HeadSubscription, list[Socket]]:
    async def read() -> int:
        return height()

    opened: list[Socket] = []

    async def connect() -> Socket:
        ws = sockets[min(len(opened), len(sockets) - 1)]
        opened.append(ws)
        return ws

    watch = HeadWatch(read, poll_s=0.01)
    sub = HeadSubscription(connect, watch, NewBlockHeaders("c-1"), min_backoff_s=0.01, **kw)  # type: ignore[arg-type]
    return watch, sub, opened


async def test_deeply_nested_json_from_the_node_ends_the_session_not_the_subscription() -> None:
    """Review s23: json.loads of "[[[[..." raised RecursionError, which ended run() (no
    retry). It now ends one session; the subscription reconnects. Run at Python's default
    recursion limit, which the daemons keep (``test_recursion_limit.py``): at web3's
    100,000 the same message overflows the C stack and kills the process."""
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        await _nested_message_ends_one_session()
    finally:
        sys.setrecursionlimit(limit)


async def _nested_message_ends_one_session() -> None:
    first, second = Socket(), Socket()
    watch, sub, opened = await _subscription([first, second], silence_s=5)
    task = asyncio.ensure_future(sub.run())
    try:
        for _ in range(300):
            if watch.pushed:
                break
            await asyncio.sleep(0.01)
        first.inbox.put_nowait("[" * 100_000)
        for _ in range(300):
            if len(opened) == 2 and watch.pushed:
                break
            await asyncio.sleep(0.01)
        assert (len(opened), sub.sessions, task.done(), first.closed) == (2, 2, False, True)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await watch.close()


async def test_silence_keeps_the_session_while_the_chain_makes_no_block() -> None:
    """A CometBFT chain without empty blocks is silent while idle: the session stays (no
    reconnect, no warning) and reads the height once per ``silence_s``. Once the node has
    a block the subscription does not push, the session ends and reconnects."""
    from structlog.testing import capture_logs

    heights = [10]
    with capture_logs() as logs:
        watch, sub, opened = await _subscription(
            [Socket(), Socket()], silence_s=0.02, height=lambda: heights[0]
        )
        task = asyncio.ensure_future(sub.run())
        await asyncio.sleep(0.3)  # 15 silences
        assert (len(opened), sub.sessions, watch.pushed) == (1, 1, True)
        assert not [e for e in logs if e["log_level"] == "warning"]
        heights[0] = 11  # a block the subscription never pushes
        for _ in range(300):
            if len(opened) >= 2:
                break
            await asyncio.sleep(0.01)
        assert len(opened) >= 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await watch.close()
    assert [e.get("reason") for e in logs if e["log_level"] == "warning"][:1] == ["silent"]


async def test_a_cancelled_subscription_ends_at_whatever_step_the_cancel_lands() -> None:
    """CI on 72eaccd hung for 85 minutes in the test above: its cancel landed in the loop
    iteration in which the node's reply completed a ``wait_for`` read, Python 3.11's
    ``wait_for`` returned the reply, and run() went on for ever (as would a relayer's
    shutdown). The cancel is tried at every loop iteration of a connect, subscribe, silence
    and reconnect: run() ends cancelled each time."""
    loop = asyncio.get_running_loop()

    def cancel_after(iterations: int, task: asyncio.Task[None]) -> None:
        if iterations == 0:
            task.cancel()
        else:
            loop.call_soon(cancel_after, iterations - 1, task)

    heights = iter(range(10, 10_000))  # a new block at every read: sessions end and reconnect
    for iterations in range(120):
        watch, sub, _ = await _subscription(
            [Socket(), Socket()], silence_s=0.001, height=lambda: next(heights)
        )
        task = asyncio.ensure_future(sub.run())
        try:
            cancel_after(iterations, task)
            await asyncio.wait([task], timeout=2)
            assert task.cancelled(), iterations
        finally:
            task.cancel()  # a run() that lost its cancel must not outlive the test
            await watch.close()


async def test_a_wrong_chain_is_refused_once_and_the_adapter_does_not_restart_it() -> None:
    from bridge.config import LedgerConfig
    from bridge.domain.ids import LedgerId
    from bridge.ledgers.cometbft.adapter import CometAdapter
    from bridge.ledgers.cometbft.rpc import CometClient

    config = LedgerConfig(
        id=LedgerId("c"), kind="cometbft", rpc_url="http://127.0.0.1:9", bridge="kstb",
        chain_id=0, finality_depth=0, block_interval=1.0, channel="c-1",
        genesis_hash=bytes(32),
    )  # fmt: skip
    client = CometClient(config.rpc_url, "c-1")
    heights = iter(range(100, 1000))

    async def latest_height() -> int:
        return next(heights)

    client.latest_height = latest_height  # type: ignore[method-assign]
    adapter = CometAdapter(config, client)
    connects = 0

    async def connect() -> Socket:
        nonlocal connects
        connects += 1
        return Socket(network="c-2")

    adapter._head_sub = HeadSubscription(connect, adapter._heads, NewBlockHeaders("c-1"), 5)
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        for _ in range(5):
            assert await adapter.wait_new_head(0, 1.0) is not None  # polled
            await asyncio.sleep(0.01)
    await adapter.close()
    assert connects == 1 and adapter._head_sub.refused
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "head subscription refused: wrong chain"
    ]


async def test_a_node_that_never_answers_the_upgrade_is_a_connection_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review s23: the connect timeout did not cover the WebSocket upgrade, so a node that
    accepted the connection and said nothing held the subscription forever."""
    import bridge.ledgers.cometbft.heads as heads

    monkeypatch.setattr(heads, "CONNECT_S", 0.2)
    held: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, read nothing, answer nothing

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        opener = heads.websocket_connector(f"ws://127.0.0.1:{port}/websocket")
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(opener(), 5)
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
