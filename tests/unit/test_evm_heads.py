"""Pushed heads (issue 14 item 4): HeadWatch hints and the newHeads subscription's fallback
and reconnect logic, with pure fakes (no node, no sockets)."""

from __future__ import annotations

import asyncio
import json

import pytest

from bridge.ledgers.evm.heads import NewHeads
from bridge.ledgers.evm.quantities import MAX_HEAD
from bridge.ledgers.heads import HINT_GAP_S, HeadSubscription, HeadWatch

pytestmark = [pytest.mark.unit, pytest.mark.batch]


class Node:
    """A fake node's HTTP side: the real head, counting eth_blockNumber reads."""

    def __init__(self, head: int = 10) -> None:
        self.head = head
        self.reads = 0

    async def read(self) -> int:
        self.reads += 1
        return self.head


class FakeSocket:
    """One fake WebSocket session: answers eth_chainId and eth_subscribe, then yields what
    the test puts in ``inbox`` (an exception there is raised by recv)."""

    def __init__(self, chain_id: int = 31337, chain_answer: str | None = None) -> None:
        self.chain_id = chain_id
        self.chain_answer = chain_answer  # eth_chainId's result as sent, when not hex(chain_id)
        self.inbox: asyncio.Queue[str | BaseException] = asyncio.Queue()
        self.closed = False

    async def send(self, message: str) -> None:
        req = json.loads(message)
        if req["method"] == "eth_chainId":
            answer = self.chain_answer if self.chain_answer is not None else hex(self.chain_id)
            self.inbox.put_nowait(json.dumps({"id": req["id"], "result": answer}))
        else:
            self.inbox.put_nowait(json.dumps({"id": req["id"], "result": "0xs"}))

    async def recv(self) -> str:
        item = await self.inbox.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        self.closed = True

    def push(self, number: int) -> None:
        self.inbox.put_nowait(
            json.dumps(
                {
                    "method": "eth_subscription",
                    "params": {"subscription": "0xs", "result": {"number": hex(number)}},
                }
            )
        )


class Connector:
    """Hands out sockets from ``plan``: a FakeSocket, or an exception to raise on connect."""

    def __init__(self, *plan: FakeSocket | BaseException) -> None:
        self.plan = list(plan)
        self.attempts = 0

    async def __call__(self) -> FakeSocket:
        self.attempts += 1
        if not self.plan:
            raise OSError("no more sessions")
        item = self.plan.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


async def until(cond: object, limit_s: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not cond():  # type: ignore[operator]
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


def pushed_watch(silence_s: float = 30) -> tuple[Node, HeadWatch]:
    """A fake node (head 10) and a watch on it told that heads are pushed (no polling);
    ``silence_s`` without a push before it reads again (30: not within a test)."""
    node = Node()
    watch = HeadWatch(node.read, poll_s=0.01)
    watch.silence_s = silence_s
    watch.set_pushed(True)
    return node, watch


async def test_pushed_head_wakes_waiter_with_one_read_and_no_polling() -> None:
    node, watch = pushed_watch()
    loop = asyncio.get_running_loop()
    assert await watch.wait_above(-1, loop.time() + 2) == 10
    waiter = asyncio.ensure_future(watch.wait_above(10, loop.time() + 5))
    await asyncio.sleep(0.2)  # 20 poll intervals: a polling watch would have read 20 times
    reads = node.reads
    assert reads <= 2 and not waiter.done()
    node.head = 11
    watch.hint(11)
    assert await waiter == 11
    assert node.reads == reads + 1  # the hint cost exactly one confirming read
    await watch.close()


async def test_lying_push_never_reaches_a_waiter() -> None:
    """SECURITY: a head pushed beyond the node's real head is not what waiters see: the
    confirming read is. Without the rule (hint stored as head) the waiter would get 1000."""
    _, watch = pushed_watch()
    loop = asyncio.get_running_loop()
    await watch.wait_above(-1, loop.time() + 2)
    waiter = asyncio.ensure_future(watch.wait_above(10, loop.time() + 0.5))
    await asyncio.sleep(0.02)
    watch.hint(1000)
    await asyncio.sleep(0.05)
    assert watch.head == 10
    assert not waiter.done()
    with pytest.raises(TimeoutError):
        await waiter
    await watch.close()


async def test_stale_or_replayed_push_costs_no_read() -> None:
    node, watch = pushed_watch()
    loop = asyncio.get_running_loop()
    await watch.wait_above(-1, loop.time() + 2)
    waiter = asyncio.ensure_future(watch.wait_above(10, loop.time() + 0.4))
    await asyncio.sleep(0.1)  # past the read that going live triggers (HINT_GAP_S after)
    reads = node.reads
    for _ in range(5):
        watch.hint(10)  # not above the head already read
        watch.hint(7)
    await asyncio.sleep(0.05)
    assert node.reads == reads
    with pytest.raises(TimeoutError):
        await waiter
    await watch.close()


async def test_silence_falls_back_to_a_read() -> None:
    node, watch = pushed_watch(silence_s=0.05)
    loop = asyncio.get_running_loop()
    await watch.wait_above(-1, loop.time() + 2)
    node.head = 11  # no push comes
    assert await watch.wait_above(10, loop.time() + 2) == 11
    await watch.close()


async def test_subscription_feeds_hints_then_falls_back_and_resubscribes() -> None:
    node = Node()
    watch = HeadWatch(node.read, poll_s=0.01)
    first, second = FakeSocket(), FakeSocket()
    connect = Connector(first, OSError("refused"), second)
    sub = HeadSubscription(connect, watch, NewHeads(31337), silence_s=5, min_backoff_s=0.01)
    task = asyncio.ensure_future(sub.run())
    loop = asyncio.get_running_loop()
    await until(lambda: watch.pushed)
    await watch.wait_above(-1, loop.time() + 2)
    node.head = 11
    first.push(11)
    assert await watch.wait_above(10, loop.time() + 2) == 11
    assert sub.heads == 1
    first.inbox.put_nowait(OSError("connection reset"))  # the node goes away
    await until(lambda: first.closed)
    await until(lambda: sub.sessions == 2)  # refused once, then resubscribed
    assert connect.attempts == 3
    assert watch.pushed
    node.head = 12
    second.push(12)
    assert await watch.wait_above(11, loop.time() + 2) == 12
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not watch.pushed  # cancelled: back to polling
    await watch.close()


async def test_polling_serves_while_subscription_is_down() -> None:
    node = Node()
    watch = HeadWatch(node.read, poll_s=0.01)
    sub = HeadSubscription(
        Connector(OSError("down"), OSError("down")),
        watch,
        NewHeads(31337),
        silence_s=5,
        min_backoff_s=1,
    )
    task = asyncio.ensure_future(sub.run())
    loop = asyncio.get_running_loop()
    await watch.wait_above(-1, loop.time() + 2)
    node.head = 11
    assert await watch.wait_above(10, loop.time() + 2) == 11  # polled, no push
    assert not watch.pushed
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await watch.close()


async def test_a_subscription_that_misses_blocks_is_dropped() -> None:
    """The node makes blocks the subscription never pushes: a head read at one silence is
    still unpushed at the next, so the session ends ("silent") and the watch polls."""
    from structlog.testing import capture_logs

    node = Node()
    watch = HeadWatch(node.read, poll_s=0.01)
    quiet = FakeSocket()
    sub = HeadSubscription(
        Connector(quiet), watch, NewHeads(31337), silence_s=0.05, min_backoff_s=5
    )
    with capture_logs() as logs:
        task = asyncio.ensure_future(sub.run())
        await until(lambda: sub.sessions == 1)
        node.head = 11  # a block, never pushed
        await until(lambda: quiet.closed)
        assert not watch.pushed
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await watch.close()
    assert [e.get("reason") for e in logs if e["log_level"] == "warning"] == ["silent"]


async def test_silence_without_a_new_block_keeps_the_session() -> None:
    """A node that makes no block (a geth authority filling one, CometBFT without empty
    blocks) is silent: the session stays (no reconnect, no warning), reading the head once
    per silence; a block pushed just after a silence's read saw it is not a missed one."""
    from structlog.testing import capture_logs

    sock = FakeSocket()

    class PushingNode(Node):
        """Pushes head 11 on the socket right after the first read that returns it."""

        async def read(self) -> int:
            head = await super().read()
            if head == 11 and not getattr(self, "pushed", False):
                self.pushed = True
                sock.push(11)  # the push in flight when the silence's read saw the block
            return head

    node = PushingNode()
    watch = HeadWatch(node.read, poll_s=0.01)
    connect = Connector(sock, FakeSocket())
    sub = HeadSubscription(connect, watch, NewHeads(31337), silence_s=0.02, min_backoff_s=0.01)
    with capture_logs() as logs:
        task = asyncio.ensure_future(sub.run())
        await until(lambda: sub.sessions == 1)
        await asyncio.sleep(0.3)  # many silences without a block
        assert node.reads >= 3  # the start's read and one per silence
        node.head = 11
        await until(lambda: sub.heads == 1)
        await asyncio.sleep(0.2)
        assert (connect.attempts, sub.sessions, watch.pushed, sock.closed) == (1, 1, True, False)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await watch.close()
    assert not [e for e in logs if e["log_level"] == "warning"]


@pytest.mark.security
async def test_one_lying_push_does_not_keep_a_dead_session_alive() -> None:
    """SECURITY (review helper-103): a pushed head far above the chain raised the floor for
    good, so a subscription that then pushed nothing while the node made blocks stayed
    'live' (waiters a silence late). A pushed head the node does not serve a silence later
    is a lie: the floor falls back to the read, and the missed blocks end the session."""
    node = Node()
    watch = HeadWatch(node.read, poll_s=0.01)
    sock = FakeSocket()
    sub = HeadSubscription(Connector(sock), watch, NewHeads(31337), silence_s=0.03, min_backoff_s=5)
    task = asyncio.ensure_future(sub.run())
    await until(lambda: sub.sessions == 1)
    sock.push(MAX_HEAD)
    await until(lambda: sub.heads == 1)
    assert watch.head == 10, "a push is never a head"

    async def mine() -> None:  # the node keeps making blocks; the subscription pushes none
        while True:
            node.head += 1
            await asyncio.sleep(0.01)

    miner = asyncio.ensure_future(mine())
    await until(lambda: sock.closed, limit_s=2.0)
    assert not watch.pushed
    miner.cancel()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await watch.close()


async def test_failed_reads_keep_the_session_and_judge_nothing() -> None:
    """A read that fails at a silence is no evidence: the session stays (polling would read
    the same failing side); once reads work again, a missed block still ends it."""
    from structlog.testing import capture_logs

    class FailingNode(Node):
        failing = True

        async def read(self) -> int:
            if self.failing:
                self.reads += 1
                raise OSError("node unreachable")
            return await super().read()

    node = FailingNode()
    watch = HeadWatch(node.read, poll_s=0.01)
    sock = FakeSocket()
    sub = HeadSubscription(Connector(sock), watch, NewHeads(31337), silence_s=0.02, min_backoff_s=5)
    with capture_logs() as logs:
        task = asyncio.ensure_future(sub.run())
        await until(lambda: sub.sessions == 1)
        await until(lambda: node.reads >= 8)  # the start and several silences, all failing
        assert watch.pushed and not sock.closed
        assert not [e for e in logs if e["log_level"] == "warning"]
        node.failing = False  # reads work: head 10, then a block never pushed
        await until(lambda: watch.head == 10)
        node.head = 11
        await until(lambda: sock.closed)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await watch.close()
    assert [e.get("reason") for e in logs if e["log_level"] == "warning"] == ["silent"]


async def test_a_head_another_request_saw_wakes_the_waiters() -> None:
    """Review helper-103: a head observed by another read (the subscription's own read at a
    silence, a lens call at latest) wakes waiters at once; before, they slept until the next
    poll, and the push of that block, no longer above the head, did not wake them."""
    _, watch = pushed_watch(silence_s=30)
    loop = asyncio.get_running_loop()
    assert await watch.wait_above(-1, loop.time() + 2) == 10
    waiter = asyncio.ensure_future(watch.wait_above(10, loop.time() + 5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    watch.observe(10)  # not higher: nobody wakes
    await asyncio.sleep(0.02)
    assert not waiter.done()
    watch.observe(11)
    assert await asyncio.wait_for(waiter, 1.0) == 11
    watch.hint(11)  # the push that follows: nothing more to do
    await watch.close()


async def test_wrong_chain_stops_subscription_for_good() -> None:
    node = Node()
    watch = HeadWatch(node.read, poll_s=0.01)
    connect = Connector(FakeSocket(chain_id=1), FakeSocket())
    sub = HeadSubscription(connect, watch, NewHeads(31337), silence_s=5, min_backoff_s=0.01)
    await asyncio.wait_for(sub.run(), 2)  # returns: not retried
    assert connect.attempts == 1
    assert sub.sessions == 0 and not watch.pushed
    await watch.close()


@pytest.mark.parametrize(
    ("number", "head"),
    [
        ("0x0b", 11),
        ("0X0B", 11),
        ("0x7fffffffffffffff", MAX_HEAD),
        # Not JSON-RPC quantities, though int(x, 16) takes each of them: no head.
        ("-0x5", None),
        ("+0x5", None),
        (" 0x5", None),
        ("0x5 ", None),
        ("0x_5", None),
        ("0x0_5", None),
        ("5", None),
        ("0x", None),
        ("0x0x5", None),
        # Above any node's block numbering: a hint that would only ever wake a read.
        ("0x8000000000000000", None),
    ],
)
def test_a_pushed_number_is_a_head_only_as_a_strict_quantity(number: str, head: int | None) -> None:
    message = {"params": {"subscription": "0xs", "result": {"number": number}}}
    assert NewHeads(31337).head_of(message, "0xs") == head


@pytest.mark.parametrize("answer", ["+0x7a69", " 0x7a69", "0x7a_69", "7a69", "0x"])
async def test_a_chain_id_that_is_not_a_strict_quantity_ends_the_session_not_the_feed(
    answer: str,
) -> None:
    """31337 is 0x7a69; each answer here is 31337 to ``int(x, 16)`` (or an error), and none
    is a JSON-RPC quantity: no hint is taken from that session, and since it is not a
    well-formed other chain either (a proxy's bad answer during a restart), the next
    session is tried, not the subscription stopped for good."""
    node = Node()
    watch = HeadWatch(node.read, poll_s=0.01)
    connect = Connector(FakeSocket(chain_answer=answer), FakeSocket())
    sub = HeadSubscription(connect, watch, NewHeads(31337), silence_s=5, min_backoff_s=0.01)
    task = asyncio.ensure_future(sub.run())
    await until(lambda: sub.sessions == 1)
    assert connect.attempts == 2 and not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await watch.close()


# ---- configuration -----------------------------------------------------------------------------
def _table(rpc_url: str, ws_url: str | None, tls_ca: str | None = None) -> object:
    from bridge.ledgers.evm.kind import EvmTable

    return EvmTable.model_validate(
        {
            "id": "eth",
            "kind": "evm",
            "rpc_url": rpc_url,
            "bridge": "0x" + "11" * 20,
            "chain_id": 31337,
            "finality_depth": 0,
            "block_interval": 1.0,
            "ws_url": ws_url,
            "tls_ca": tls_ca,
        }
    )


@pytest.mark.parametrize(
    ("rpc_url", "ws_url"),
    [("https://node:8545", "ws://node:8546"), ("http://node:8545", "wss://node:8546")],
)
def test_ws_url_must_match_the_http_connections_security(rpc_url: str, ws_url: str) -> None:
    """SECURITY: an https node's WebSocket must be wss (same CA and token, never in clear)."""
    from pathlib import Path

    from bridge.domain.errors import InvalidInput
    from bridge.ledgers.evm.kind import EvmKind

    with pytest.raises(InvalidInput, match="ws_url must start with"):
        EvmKind().ledger_config(_table(rpc_url, ws_url), Path())  # type: ignore[arg-type]


def test_ws_url_accepted_with_matching_scheme() -> None:
    from pathlib import Path

    from bridge.ledgers.evm.kind import EvmKind

    config = EvmKind().ledger_config(
        _table("https://node:8545", "wss://node:8546", "/ca.pem"),  # type: ignore[arg-type]
        Path(),
    )
    assert config.settings.ws_url == "wss://node:8546"


# ---- the relayer's event watcher ---------------------------------------------------------------
class HeadReader:
    """A reader with wait_new_head: a scan per head the test releases."""

    def __init__(self) -> None:
        from bridge.domain.ids import LedgerId

        self.ledger = LedgerId("a")
        self.scans = 0
        self.head = 5
        self.new = asyncio.Event()

    async def finalized_height(self) -> int:
        self.scans += 1
        return self.head

    async def events(self, after: object, up_to: int) -> list[object]:
        return []

    async def wait_new_head(self, above: int, timeout_s: float) -> int | None:
        if above >= self.head:
            try:
                await asyncio.wait_for(self.new.wait(), timeout_s)
            except TimeoutError:
                return None
            self.new.clear()
        return self.head


class NullSink:
    async def deliver(self, ledger: str, events: object, scanned_height: int) -> None:
        return None


async def test_event_watcher_scans_per_new_head_not_per_poll(tmp_path: object) -> None:
    from pathlib import Path

    from relayers.checkpoint import CheckpointStore
    from relayers.watcher import EventWatcher

    reader = HeadReader()
    store = CheckpointStore(Path(str(tmp_path)) / "cp.sqlite", "a")
    watcher = EventWatcher(reader, NullSink(), store, poll_interval=0.01)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.ensure_future(watcher.run(stop))
    await asyncio.sleep(0.3)  # 30 poll intervals
    assert reader.scans <= 3, "the watcher slept per poll instead of waiting for a head"
    scans = reader.scans
    reader.head = 6
    reader.new.set()
    await until(lambda: reader.scans > scans)
    stop.set()
    await asyncio.wait_for(task, 2)


# ---- the devnet proxy's WebSocket relay ----------------------------------------------------------
async def test_devnet_proxy_relays_websocket_only_with_the_bearer_token() -> None:
    """SECURITY: the wss:// relay gets the HTTP path's bearer check before the upgrade."""
    import aiohttp
    from aiohttp.test_utils import TestServer
    from websockets.asyncio.server import ServerConnection, serve

    from bridge.devnet.evm_proxy import make_app

    async def echo(ws: ServerConnection) -> None:
        async for msg in ws:
            await ws.send(msg)

    async with serve(echo, "127.0.0.1", 0) as upstream:
        port = next(iter(upstream.sockets)).getsockname()[1]
        server = TestServer(make_app(f"http://127.0.0.1:{port}", [b"tok"]))
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.WSServerHandshakeError):
                    await session.ws_connect(server.make_url("/"))
                with pytest.raises(aiohttp.WSServerHandshakeError):
                    await session.ws_connect(
                        server.make_url("/"), headers={"Authorization": "Bearer nope"}
                    )
                async with session.ws_connect(
                    server.make_url("/"), headers={"Authorization": "Bearer tok"}
                ) as ws:
                    await ws.send_str('{"id":1}')
                    assert await asyncio.wait_for(ws.receive_str(), 5) == '{"id":1}'
        finally:
            await server.close()


async def test_malformed_pushes_are_ignored_and_the_subscription_lives_on() -> None:
    """A node's subscription message is untrusted: a result that is not a head object, a
    number that is not a string, or a message of another subscription is skipped; the
    session stays up and the next real head still wakes waiters."""
    node = Node()
    watch = HeadWatch(node.read, poll_s=0.01)
    sock = FakeSocket()
    sub = HeadSubscription(Connector(sock), watch, NewHeads(31337), silence_s=5, min_backoff_s=0.01)
    task = asyncio.ensure_future(sub.run())
    loop = asyncio.get_running_loop()
    await until(lambda: watch.pushed)
    for result in ("0x0b", ["0x0b"], None, {"number": 11}):
        sock.inbox.put_nowait(
            json.dumps(
                {"method": "eth_subscription", "params": {"subscription": "0xs", "result": result}}
            )
        )
    sock.inbox.put_nowait(json.dumps({"method": "eth_subscription", "params": "junk"}))
    node.head = 11
    sock.push(11)
    assert await watch.wait_above(10, loop.time() + 2) == 11
    await until(lambda: sub.heads == 1)  # only the real head counted
    assert (sub.sessions, watch.pushed, task.done()) == (1, True, False)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await watch.close()


async def test_a_flood_of_hints_costs_at_most_one_read_per_hint_gap() -> None:
    """SECURITY (review s23): a node pushing ever-higher heads made the watch read
    back-to-back while anyone waited; hinted reads are now at least HINT_GAP_S apart."""
    node = Node()
    watch = HeadWatch(node.read, poll_s=0.05)
    watch.set_pushed(True)
    loop = asyncio.get_running_loop()

    async def flood() -> None:
        for i in range(2_000):
            watch.hint(10_000 + i)
            await asyncio.sleep(0.0002)

    flooding = asyncio.ensure_future(flood())
    with pytest.raises(TimeoutError):  # the node never reaches the pushed heights
        await watch.wait_above(1_000, loop.time() + 0.5)
    flooding.cancel()
    await watch.close()
    assert 3 <= node.reads <= 0.5 / HINT_GAP_S + 3, node.reads
