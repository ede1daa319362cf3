"""A permissioned go-ethereum network of several nodes, started as local processes (ADR 0019).

It stands in for a Hyperledger Besu network (which the registries reachable here do not
serve): ``size`` geth 1.17 full nodes from one genesis (Cancun rules, chain id of your
choice), peered over devp2p on loopback only (``--nodiscover``, ``--netrestrict``, static
peers added through each node's IPC socket), so a transaction sent to any node reaches the
others' pools. Blocks come from :mod:`bridge.devnet.geth_authority`, the network's single
block authority driving every node's Engine API; each node executes every block itself.

Node 0 (the leader) builds blocks; the devnet deploys through it, a ledger's relayer sends
through node 1 and the committee members read through node 2 (and further nodes), so every
step crosses nodes before any member sees it.

The binary is ``.cache/geth/<version>/bin/geth`` (``make geth``; ``KSTB_GETH`` overrides).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coincurve import PrivateKey

from bridge.devnet.anvil import DevAccount
from bridge.devnet.processes import REPO_ROOT, ManagedProcess, free_port, wait_until

GETH_VERSION = "1.17.10"
GETH_BIN = REPO_ROOT / ".cache" / "geth" / GETH_VERSION / "bin" / "geth"
GENESIS_BASE_FEE = 10**9


def geth_binary() -> Path:
    """Path of the pinned geth binary; FileNotFoundError with the build hint if missing."""
    override = os.environ.get("KSTB_GETH")
    path = Path(override) if override else GETH_BIN
    if not path.exists():
        raise FileNotFoundError(f"geth not found at {path}; run `make geth`")
    return path


def _write_secret(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
    return path


DEFAULT_GAS_LIMIT = 30_000_000


def genesis(
    chain_id: int, alloc: dict[str, int], gas_limit: int = DEFAULT_GAS_LIMIT
) -> dict[str, Any]:
    """A merged-from-genesis chain with Cancun rules (the contracts' EVM version) whose
    blocks hold ``gas_limit`` gas from the first one."""
    config: dict[str, Any] = {"chainId": chain_id}
    for fork in (
        "homestead", "eip150", "eip155", "eip158", "byzantium", "constantinople",
        "petersburg", "istanbul", "muirGlacier", "berlin", "london", "arrowGlacier",
        "grayGlacier", "mergeNetsplit",
    ):  # fmt: skip
        config[f"{fork}Block"] = 0
    config |= {
        "shanghaiTime": 0,
        "cancunTime": 0,
        "terminalTotalDifficulty": 0,
        "blobSchedule": {"cancun": {"target": 3, "max": 6, "baseFeeUpdateFraction": 3338477}},
    }
    return {
        "config": config,
        "difficulty": "0x0",
        "gasLimit": hex(gas_limit),
        "baseFeePerGas": hex(GENESIS_BASE_FEE),
        "timestamp": hex(int(time.time())),
        "extraData": "0x",
        "alloc": {addr: {"balance": hex(wei)} for addr, wei in alloc.items()},
    }


def ipc_call(path: Path, method: str, params: list[Any]) -> Any:
    """One JSON-RPC call over a node's IPC socket (admin calls never leave the host)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(
            json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        )
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            try:
                reply = json.loads(buf)
                break
            except json.JSONDecodeError:
                continue
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


@dataclass
class GethNode:
    """One geth process: public HTTP and WebSocket on one port (eth, net, web3; txpool over
    HTTP), Engine API, devp2p, and its metrics (loopback only, unauthenticated: counters,
    nothing secret)."""

    index: int
    datadir: Path
    http_port: int = field(default_factory=free_port)
    auth_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    p2p_port: int = field(default_factory=free_port)
    nodekey: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    process: ManagedProcess | None = None

    @property
    def rpc_url(self) -> str:
        """The node's public JSON-RPC URL."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        """The node's WebSocket endpoint (``eth``, ``net``, ``web3``; on the HTTP port)."""
        return f"ws://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """The node's metrics in Prometheus text (``--metrics``; 127.0.0.1 only): per
        JSON-RPC method, ``rpc_duration_<method>_<success|failure>_count`` counts the
        requests served since the previous read of the node's metrics (this URL or
        ``/debug/metrics``: geth resets those histograms when read). Not counted:
        ``eth_subscribe``, unknown methods and requests with bad parameters. Every caller
        of every port is counted, the Engine API's (``engine_*``) too."""
        return f"http://127.0.0.1:{self.metrics_port}/debug/metrics/prometheus"

    @property
    def engine_url(self) -> str:
        """The node's Engine API URL (JWT-authenticated; the authority only)."""
        return f"http://127.0.0.1:{self.auth_port}"

    @property
    def jwt(self) -> Path:
        """The node's Engine API secret (0600)."""
        return self.datadir / "jwt.hex"

    @property
    def ipc(self) -> Path:
        """The node's IPC socket."""
        return self.datadir / "geth.ipc"

    @property
    def enode(self) -> str:
        """The node's devp2p address."""
        pub = PrivateKey(self.nodekey).public_key.format(compressed=False)[1:].hex()
        return f"enode://{pub}@127.0.0.1:{self.p2p_port}"


@dataclass
class GethNetwork:
    """``size`` peered geth nodes and their block authority.

    Guarantees once :meth:`start` returned: every node is at the same head, peered with every
    other, and the faucet account holds the genesis balance; blocks appear within
    ``empty_interval`` seconds, at once when a transaction is pending, and a block is
    ``finality_depth`` blocks behind the head when the authority marks it finalized.
    """

    name: str
    chain_id: int
    workdir: Path
    size: int = 3
    finality_depth: int = 2
    empty_interval: float = 1.0
    gas_limit: int = DEFAULT_GAS_LIMIT
    """Every block's gas limit: the genesis block's and every node's ``--miner.gaslimit``
    (geth would otherwise move a block's limit towards its own default, 60,000,000 in
    1.17, by 1/1024 a block)."""
    nodes: list[GethNode] = field(default_factory=list)
    faucet: DevAccount = field(default_factory=DevAccount.generate)
    authority: ManagedProcess | None = None

    @property
    def rpc_url(self) -> str:
        """The leader's URL (deployment and the devnet's own setup)."""
        return self.nodes[0].rpc_url

    @property
    def relayer_url(self) -> str:
        """The node a ledger's relayer sends through (node 1)."""
        return self.nodes[1 % self.size].rpc_url

    @property
    def reader_urls(self) -> list[str]:
        """The nodes committee members read through (node 2 and above; node 0 if fewer)."""
        return [n.rpc_url for n in self.nodes[2:]] or [self.nodes[0].rpc_url]

    def start(self) -> GethNetwork:
        """Initialise every node from one genesis, start them, peer them, start the authority."""
        binary = str(geth_binary())
        base = self.workdir / f"geth-{self.name}"
        base.mkdir(parents=True, exist_ok=True)
        gen = base / "genesis.json"
        alloc = {self.faucet.address: 10**27}
        gen.write_text(json.dumps(genesis(self.chain_id, alloc, self.gas_limit)))
        self.nodes = [GethNode(i, base / f"node{i}") for i in range(self.size)]
        for node in self.nodes:
            node.datadir.mkdir(parents=True, exist_ok=True)
            _write_secret(node.jwt, secrets.token_hex(32))
            ManagedProcess(
                name=f"geth-{self.name}-init{node.index}",
                argv=[
                    binary,
                    "--datadir",
                    str(node.datadir),
                    "--state.scheme",
                    "hash",
                    "init",
                    str(gen),
                ],
                log_path=base / f"init{node.index}.log",
            ).start().proc.wait(timeout=60)  # type: ignore[union-attr]
            node.process = ManagedProcess(
                name=f"geth-{self.name}-{node.index}",
                argv=[
                    binary,
                    "--datadir", str(node.datadir),
                    "--networkid", str(self.chain_id),
                    "--syncmode", "full",
                    "--gcmode", "archive",
                    # A devnet node needs little: geth's default 4 GB cache also sizes the
                    # database's write-ahead logs (about 1 GB of disk per node, per start).
                    "--cache", "128",
                    "--miner.gaslimit", str(self.gas_limit),
                    "--state.scheme", "hash",
                    "--nodekeyhex", node.nodekey.hex(),
                    "--port", str(node.p2p_port),
                    "--nodiscover",
                    "--netrestrict", "127.0.0.1/32",
                    "--http", "--http.addr", "127.0.0.1", "--http.port", str(node.http_port),
                    "--http.api", "eth,net,web3,txpool",
                    # Pushed heads (issue 14 item 4): WebSocket on the HTTP port, as anvil
                    # serves it, so the TLS proxy relays wss:// to the same address.
                    "--ws", "--ws.addr", "127.0.0.1", "--ws.port", str(node.http_port),
                    "--ws.api", "eth,net,web3",
                    # No browser origin: a page served from any localhost port could drive
                    # the node over WebSocket otherwise (the proxy and the adapters send no
                    # Origin header, so they are unaffected).
                    "--ws.origins", "kstb-devnet.invalid",
                    # Requests served per method, for the benchmarks (GethNode.metrics_url).
                    "--metrics", "--metrics.addr", "127.0.0.1",
                    "--metrics.port", str(node.metrics_port),
                    "--authrpc.addr", "127.0.0.1", "--authrpc.port", str(node.auth_port),
                    "--authrpc.jwtsecret", str(node.jwt),
                    "--ipcpath", str(node.ipc),
                    "--verbosity", "3",
                ],
                log_path=base / f"node{node.index}.log",
            ).start()  # fmt: skip
        for node in self.nodes:
            assert node.process is not None
            node.process.wait_port(node.http_port, timeout=60)
            # geth opens its IPC and HTTP endpoints before its devp2p listener: a static peer
            # dialled in that window fails, and geth redials it only 35 s later.
            node.process.wait_port(node.p2p_port, timeout=60)
            # geth only logs a metrics port it could not bind, and runs on without it.
            node.process.wait_port(node.metrics_port, timeout=60)
            wait_until(node.ipc.exists, 30, f"geth {self.name} node {node.index} IPC")
        # A full mesh of static peers, each pair dialled from one side only: two nodes dialling
        # each other at once can each keep their own connection and drop the other's, leaving
        # the pair unpeered until the redial.
        for i, node in enumerate(self.nodes):
            for other in self.nodes[i + 1 :]:
                ipc_call(node.ipc, "admin_addPeer", [other.enode])
        try:
            wait_until(self._peered, 90, f"geth {self.name} peers", interval=0.2)
        except TimeoutError as exc:
            counts = [len(ipc_call(n.ipc, "admin_peers", [])) for n in self.nodes]
            raise TimeoutError(f"{exc}: peers per node {counts}") from exc
        self._start_authority(base)
        wait_until(lambda: self.height(0) >= 1, 60, f"geth {self.name} first block", 0.1)
        return self

    def _peered(self) -> bool:
        return all(len(ipc_call(n.ipc, "admin_peers", [])) >= self.size - 1 for n in self.nodes)

    def _start_authority(self, base: Path) -> None:
        import sys

        cfg = base / "authority.json"
        cfg.write_text(
            json.dumps(
                {
                    "nodes": [{"engine_url": n.engine_url, "jwt": str(n.jwt)} for n in self.nodes],
                    "leader_rpc": self.nodes[0].rpc_url,
                    "fee_recipient": self.faucet.address,
                    "finality_depth": self.finality_depth,
                    "empty_interval": self.empty_interval,
                }
            )
        )
        self.authority = ManagedProcess(
            name=f"geth-{self.name}-authority",
            argv=[sys.executable, "-m", "bridge.devnet.geth_authority", str(cfg)],
            log_path=base / "authority.log",
        ).start()

    def rpc(self, method: str, params: list[Any], node: int = 0) -> Any:
        """A raw JSON-RPC call to one node (setup and assertions)."""
        from bridge.devnet.geth_authority import rpc

        return rpc(self.nodes[node].rpc_url, method, params)

    def height(self, node: int) -> int:
        """A node's latest block number."""
        return int(self.rpc("eth_blockNumber", [], node), 16)

    def wait_final_everywhere(self, height: int, timeout: float = 60.0) -> None:
        """Wait until block ``height`` is final (``finality_depth`` deep) on every node."""
        target = height + self.finality_depth
        wait_until(
            lambda: all(self.height(i) >= target for i in range(self.size)),
            timeout,
            f"block {height} final on every {self.name} node",
            interval=0.1,
        )

    def fund(self, address: str, wei: int = 10**21) -> None:
        """Send ``wei`` from the faucet to ``address`` and wait for it on the leader."""
        from bridge.ledgers.evm.deploy import connect

        w3 = connect(self.rpc_url)
        sender = self.faucet.address
        tx = {
            "to": address,
            "value": wei,
            "gas": 21_000,
            "nonce": w3.eth.get_transaction_count(sender, "pending"),  # type: ignore[arg-type]
            "chainId": self.chain_id,
            "maxFeePerGas": 4 * GENESIS_BASE_FEE,
            "maxPriorityFeePerGas": 10**6,
        }
        signed = w3.eth.account.sign_transaction(tx, self.faucet.private_key)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.1)

    def stop(self) -> None:
        """Stop the authority, then every node."""
        if self.authority is not None:
            self.authority.stop()
        for node in self.nodes:
            if node.process is not None:
                node.process.stop(grace=10)
