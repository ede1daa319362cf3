"""The go-ethereum network itself (ADR 0019): one chain on every node, finality as the
authority marks it, and no block from anyone without the Engine API secret."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bridge.devnet.geth_authority import EngineNode, jwt_token
from tests.conformance.conftest import GethHarness

pytestmark = [pytest.mark.conformance, pytest.mark.integration, pytest.mark.geth]


def test_every_node_holds_the_same_finalized_chain(geth_harness: GethHarness) -> None:
    net = geth_harness.net
    assert net is not None
    final = net.rpc("eth_getBlockByNumber", ["finalized", False], 0)
    height = int(final["number"], 16)
    assert height >= 1
    hashes = {
        net.rpc("eth_getBlockByNumber", [hex(height), False], i)["hash"] for i in range(net.size)
    }
    assert hashes == {final["hash"]}, "one chain, executed by every node"
    head = max(net.height(i) for i in range(net.size))
    assert head - height <= net.finality_depth + 1, "finalized trails the head by the depth"


def test_every_block_holds_the_networks_gas_limit(geth_harness: GethHarness) -> None:
    """Genesis and every node's ``--miner.gaslimit`` carry ``GethNetwork.gas_limit``: the
    head's limit is that figure, not one moving towards geth's own default (1/1024 a block)."""
    net = geth_harness.net
    assert net is not None
    assert net.height(0) >= 2, "blocks were built after genesis"
    for i in range(net.size):
        head = net.rpc("eth_getBlockByNumber", ["latest", False], i)
        assert int(head["gasLimit"], 16) == net.gas_limit, f"node {i}"


@pytest.mark.batch
def test_every_node_pushes_new_heads_on_its_websocket(geth_harness: GethHarness) -> None:
    """Each node serves ``newHeads`` on its HTTP port's WebSocket (``--ws``, as anvil does,
    so the devnet's TLS proxy relays ``wss://`` to it): the adapters' own subscriber gets
    a head at or above the node's height, pushed as the authority seals blocks."""
    import asyncio

    from bridge.ledgers.evm.heads import NewHeads, websocket_connector
    from bridge.ledgers.heads import receive

    net = geth_harness.net
    assert net is not None

    async def first_pushed(i: int) -> int:
        feed = NewHeads(net.chain_id)
        async with websocket_connector(net.nodes[i].ws_url, None, {})() as ws:
            subscription = await feed.subscribe(ws, 10)
            for _ in range(20):
                head = feed.head_of(json.loads(await receive(ws, 10)), subscription)
                if head is not None:
                    return head
        raise AssertionError(f"node {i} pushed no head")

    for i in range(net.size):
        before = net.height(i)
        assert asyncio.run(first_pushed(i)) > before, f"node {i}"


@pytest.mark.batch
def test_the_bridges_nodes_count_the_requests_they_served_since_the_last_read(
    geth_harness: GethHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the benchmark's request counts rest on (``GethMetricsCounter``): nodes 1 and 2
    give each method's requests since the previous read of their metrics, batch items
    included; what came before ``start`` is not counted."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    from transfers_metrics import GethMetricsCounter

    net = geth_harness.net
    assert net is not None
    for i in (1, 2):
        net.rpc("web3_clientVersion", [], i)  # before start: reset, not counted
    counter = GethMetricsCounter((net.nodes[1].metrics_url, net.nodes[2].metrics_url))
    counter.start()
    for i in (1, 2, 2):
        net.rpc("web3_clientVersion", [], i)
    body = json.dumps(
        [
            {"jsonrpc": "2.0", "id": i, "method": "web3_clientVersion", "params": []}
            for i in range(4)
        ]
    ).encode()
    request = urllib.request.Request(
        net.nodes[2].rpc_url, data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert len(json.loads(reply.read())) == 4
    assert counter.counts()["web3_clientVersion"] == 7
    assert counter.counts()["web3_clientVersion"] == 0, "reading resets the counts"


@pytest.mark.batch
def test_the_bench_reads_gas_and_counts_requests_on_a_geth_ledgers_nodes(
    geth_harness: GethHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transfer benchmark reads a geth ledger's receipts and blocks through node 0 and
    counts its requests on nodes 1 and 2 (a geth ledger has a network, not a ``node``: geth
    runs printed no gas before); an anvil ledger through anvil, Fabric through none."""
    from types import SimpleNamespace
    from typing import Any, cast

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    from transfers_batch import node_url
    from transfers_metrics import GethMetricsCounter, rpc_counters

    from bridge.devnet.anvil import AnvilNode, DevAccount
    from bridge.devnet.fabric_bridge import FabricBridgeLedger
    from bridge.devnet.geth_ledger import GethLedger
    from bridge.devnet.system import LedgerHandle, LocalSystem

    net = geth_harness.net
    assert net is not None
    keys = {"admin": DevAccount.generate(), "relayer": DevAccount.generate()}
    geth = GethLedger(name="g", net=net, endpoint=cast(Any, None), **keys)
    anvil = LedgerHandle(
        name="a",
        node=AnvilNode(name="a", chain_id=31001, block_time=1.0, workdir=tmp_path),
        endpoint=cast(Any, None),
        **keys,
    )
    fabric = object.__new__(FabricBridgeLedger)
    system = cast(LocalSystem, SimpleNamespace(dev_ledgers={"g": geth, "a": anvil, "f": fabric}))
    assert node_url(system, "g") == net.nodes[0].rpc_url
    assert int(net.rpc("eth_blockNumber", [], 0), 16) >= 1, "node 0 answers the reads"
    assert node_url(system, "a") == anvil.node.rpc_url
    assert node_url(system, "f") is None
    counters = rpc_counters(system)  # anvil's log only once it runs (no process here)
    assert set(counters) == {"g"}
    bridge_nodes = tuple(n.metrics_url for n in net.nodes[1:])  # node 0: the devnet's own
    assert counters["g"] == GethMetricsCounter(bridge_nodes)


@pytest.mark.security
def test_the_engine_api_refuses_a_caller_without_the_nodes_secret(
    geth_harness: GethHarness,
) -> None:
    """A forged JWT (another secret) and no JWT at all: HTTP 401, and no block was made."""
    net = geth_harness.net
    assert net is not None
    node = net.nodes[1]
    before = net.height(1)
    forged = EngineNode(node.engine_url, secrets.token_bytes(32))
    with pytest.raises(urllib.error.HTTPError) as exc:
        forged.call("engine_exchangeCapabilities", [["engine_newPayloadV3"]])
    assert exc.value.code == 401
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "engine_exchangeCapabilities", "params": [[]]}
    ).encode()
    req = urllib.request.Request(node.engine_url, body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=5)
    assert exc.value.code == 401
    # the node's own secret works (the authority's path), and nothing else changed
    real = EngineNode(node.engine_url, bytes.fromhex(node.jwt.read_text().strip()))
    assert "engine_newPayloadV3" in real.call(
        "engine_exchangeCapabilities", [["engine_newPayloadV3"]]
    )
    assert net.height(1) >= before


def test_the_jwt_is_hs256_over_iat() -> None:
    import base64
    import hashlib
    import hmac

    secret = bytes(range(32))
    token = jwt_token(secret, now=1_700_000_000)
    head, payload, sig = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    assert json.loads(base64.urlsafe_b64decode(pad(head))) == {"alg": "HS256", "typ": "JWT"}
    assert json.loads(base64.urlsafe_b64decode(pad(payload))) == {"iat": 1_700_000_000}
    want = hmac.new(secret, f"{head}.{payload}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(pad(sig)) == want
