"""The block authority of the devnet's go-ethereum network (ADR 0019).

go-ethereum 1.17 cannot seal blocks itself: since v1.14 it only runs merged networks and takes
every block from a consensus client over the Engine API (Clique signing was removed; ``--dev``
embeds a simulated beacon that drives only its own node). This process is that consensus
client for a permissioned network: the single authority. It asks the leader node to build a
block (``engine_forkchoiceUpdatedV3`` with payload attributes, then ``engine_getPayloadV3``),
hands the payload to EVERY node (``engine_newPayloadV3``, each node executes and validates
it itself) and moves every node's head (``engine_forkchoiceUpdatedV3``), marking the block
``finality_depth`` below the head ``safe`` and ``finalized``.

SECURITY: the authority is whoever holds the nodes' Engine API JWT secrets (one per node,
0600, loopback only): nothing else can make a node adopt a block. It never reorganises: each
block extends the last one it made. It is a single point of liveness (blocks stop while it is
down; the nodes keep serving reads) and of trust (no signature on the block proves which
authority made it); see the ADR for what a BFT network (Besu QBFT) gives that this does not.

Run as ``python -m bridge.devnet.geth_authority <config.json>`` (the devnet writes the file).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ZERO32 = "0x" + "00" * 32
FILL_S = 0.15
"""How long the leader first gets to fill a block from its pool before the authority takes
it."""
FILL_MAX_S = 4.0
"""The longest it gets (see :func:`next_fill`)."""


def next_fill(fill: float, included: int) -> float:
    """How long the leader gets to fill its next block, after a build that waited ``fill``
    seconds for a non-empty pool and came back with ``included`` transactions.

    geth answers ``engine_getPayload`` with the best block its builder has finished and
    stops building; a pass over a deep pool of heavy transactions (hundreds of batched
    steps, millions of gas each, on a busy host) can take longer than :data:`FILL_S`, and
    taking the block sooner each time made empty blocks forever while the pool grew (a
    100,000-transfer benchmark, issue 14). So an empty build doubles the wait, up to
    :data:`FILL_MAX_S`, and a filled one shortens it by a fifth, towards :data:`FILL_S`."""
    if included == 0:
        return min(fill * 2, FILL_MAX_S)
    return max(FILL_S, fill * 0.8)


def jwt_token(secret: bytes, now: float | None = None) -> str:
    """An HS256 Engine API token (``iat`` only, as the Engine API specifies)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"iat": int(now if now is not None else time.time())}).encode())
    signing = f"{header}.{payload}".encode()
    return f"{header}.{payload}." + b64(hmac.new(secret, signing, hashlib.sha256).digest())


@dataclass(frozen=True)
class EngineNode:
    """One node's Engine API endpoint and its JWT secret."""

    url: str
    secret: bytes

    def call(self, method: str, params: list[Any], timeout: float = 10.0) -> Any:
        """One authenticated Engine API call (a fresh token each attempt), retried while the
        node is unreachable (every Engine call the authority makes is idempotent);
        RuntimeError on a JSON-RPC error, HTTPError (401) on a refused token."""
        return _retrying(lambda: self._call(method, params, timeout))

    def _call(self, method: str, params: list[Any], timeout: float) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        req = urllib.request.Request(  # noqa: S310 - a loopback http URL from the devnet
            self.url,
            body.encode(),
            {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {jwt_token(self.secret)}",
            },
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            reply = json.loads(resp.read())
        if "error" in reply:
            raise RuntimeError(f"{method} on {self.url}: {reply['error']}")
        return reply["result"]


def _retrying(call: Callable[[], Any], attempts: int = 50, pause: float = 0.2) -> Any:
    """``call()``, retried on transport faults (a node busy or restarting) only."""
    for attempt in range(attempts):
        try:
            return call()
        except urllib.error.HTTPError:
            raise  # the node answered: not a transport fault
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            if attempt == attempts - 1:
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")


def rpc(url: str, method: str, params: list[Any]) -> Any:
    """One plain JSON-RPC call to a node's public HTTP endpoint (transport faults retried)."""
    return _retrying(lambda: _rpc(url, method, params))


def _rpc(url: str, method: str, params: list[Any]) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    req = urllib.request.Request(  # noqa: S310 - a loopback http URL from the devnet
        url, body.encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        reply = json.loads(resp.read())
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


class Authority:
    """Makes a block whenever the leader's pool holds a transaction, and an empty one every
    ``empty_interval`` seconds (so block time advances), on every node.

    Guarantees: every node receives every block in order and is told the same head, safe and
    finalized block; a block is only made on top of the last one this authority made (no
    reorganisation); a node that refuses a payload stops the authority (a node that computes
    another state root from the same block is a fault to surface, not to work around).
    """

    def __init__(
        self,
        nodes: list[EngineNode],
        leader_rpc: str,
        fee_recipient: str,
        finality_depth: int,
        empty_interval: float,
    ) -> None:
        self._nodes = nodes
        self._leader = nodes[0]
        self._leader_rpc = leader_rpc
        self._fee_recipient = fee_recipient
        self._depth = finality_depth
        self._empty = empty_interval
        head = rpc(leader_rpc, "eth_getBlockByNumber", ["latest", False])
        height = int(head["number"], 16)
        # SECURITY (finality): after a restart the chain already has blocks; the window of
        # the last depth + 1 blocks is read back from the leader, so the first forkchoice
        # finalizes the block ``finality_depth`` below the head, never the head itself.
        self._chain: list[str] = [
            rpc(leader_rpc, "eth_getBlockByNumber", [hex(n), False])["hash"]
            for n in range(max(0, height - finality_depth - 1), height)
        ] + [head["hash"]]  # by height, ending at the latest block
        self._base_height = height
        self._head_time = int(head["timestamp"], 16)
        self._last = 0.0
        self._fill = FILL_S

    def _forkchoice(self) -> dict[str, str]:
        head = self._chain[-1]
        final = self._chain[max(0, len(self._chain) - 1 - self._depth)]
        return {"headBlockHash": head, "safeBlockHash": final, "finalizedBlockHash": final}

    def _pending(self) -> int:
        status = rpc(self._leader_rpc, "txpool_status", [])
        return int(status["pending"], 16)

    def produce(self, with_transactions: bool = False) -> str:
        """Build one block on the leader and import it on every node; its hash.

        geth answers ``engine_getPayload`` with the best block built so far, and the first
        one it builds is empty; with ``with_transactions`` the authority gives the leader
        time to fill the block from its pool before asking for it (:func:`next_fill`)."""
        ts, payload = self._build(with_transactions)
        for node in self._nodes:
            status = node.call("engine_newPayloadV3", [payload, [], ZERO32])
            if status["status"] != "VALID":
                raise RuntimeError(f"{node.url} refused block {payload['blockHash']}: {status}")
        self._chain.append(payload["blockHash"])
        self._chain = self._chain[-(self._depth + 2) :]
        self._head_time = ts
        choice = self._forkchoice()
        for node in self._nodes:
            res = node.call("engine_forkchoiceUpdatedV3", [choice, None])
            if res["payloadStatus"]["status"] != "VALID":
                raise RuntimeError(f"{node.url} refused the head {choice}: {res}")
        self._last = time.monotonic()
        return str(payload["blockHash"])

    def _build(self, with_transactions: bool) -> tuple[int, dict[str, Any]]:
        """The leader's next payload and its timestamp. With ``with_transactions``, an empty
        build is thrown away (nothing was published) and asked for again with a longer wait,
        until one holds transactions or the wait was :data:`FILL_MAX_S`: then the pool holds
        only transactions no block includes now (a fee cap below the base fee), the empty
        block is published so the chain goes on, and the next build starts again from
        :data:`FILL_S`."""
        if not with_transactions:
            ts = self._next_timestamp()
            return ts, self._payload(ts, 0.0)
        while True:
            ts = self._next_timestamp()
            waited = self._fill
            payload = self._payload(ts, waited)
            if payload["transactions"]:
                self._fill = next_fill(waited, len(payload["transactions"]))
                return ts, payload
            if waited >= FILL_MAX_S:
                self._fill = FILL_S
                return ts, payload
            self._fill = next_fill(waited, 0)

    def _next_timestamp(self) -> int:
        return max(int(time.time()), self._head_time + 1)

    def _payload(self, ts: int, wait: float) -> dict[str, Any]:
        """One build on the leader, taken after ``wait`` seconds."""
        attrs = {
            "timestamp": hex(ts),
            # a fresh value each build, so a second build gets its own payload id
            "prevRandao": "0x" + secrets.token_hex(32),
            "suggestedFeeRecipient": self._fee_recipient,
            "withdrawals": [],
            "parentBeaconBlockRoot": ZERO32,
        }
        res = self._leader.call("engine_forkchoiceUpdatedV3", [self._forkchoice(), attrs])
        if res["payloadStatus"]["status"] != "VALID" or not res.get("payloadId"):
            raise RuntimeError(f"leader refused to build: {res}")
        if wait:
            time.sleep(wait)
        built = self._leader.call("engine_getPayloadV3", [res["payloadId"]])
        payload: dict[str, Any] = built["executionPayload"]
        return payload

    def run(self, poll: float = 0.05) -> None:
        """Produce blocks until the process is stopped."""
        # Every node starts at genesis: announce it as head so they count as synced.
        for node in self._nodes:
            node.call("engine_forkchoiceUpdatedV3", [self._forkchoice(), None])
        while True:
            pending = self._pending() > 0
            if pending or time.monotonic() - self._last >= self._empty:
                self.produce(with_transactions=pending)
            time.sleep(poll)


def main(argv: list[str]) -> int:
    """``geth_authority <config.json>``: run the authority described by the devnet's file."""
    from bridge.devnet.processes import exit_on_sigterm

    exit_on_sigterm()
    cfg = json.loads(Path(argv[0]).read_text())
    nodes = [EngineNode(n["engine_url"], bytes.fromhex(Path(n["jwt"]).read_text().strip()))
             for n in cfg["nodes"]]  # fmt: skip
    authority = Authority(
        nodes,
        cfg["leader_rpc"],
        cfg["fee_recipient"],
        int(cfg["finality_depth"]),
        float(cfg["empty_interval"]),
    )
    print(f"authority: {len(nodes)} nodes, finality depth {cfg['finality_depth']}", flush=True)
    authority.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
