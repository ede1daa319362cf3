"""The geth network as a devnet ledger (ADR 0019): the ``geth`` starter.

Three geth nodes and their block authority (:mod:`bridge.devnet.geth`). The devnet deploys
and administers through node 0; the ledger's relayer and the coordinator use node 1 (the
network file's ``rpc_url``, and its ``ws_url`` for pushed heads); EVERY committee member
reads through node 2 (its ``rpc_overrides``), so no member's view of the ledger is the
relayer's node. Nodes 1 and 2 sit behind the devnet's authenticating TLS proxy, as
production nodes do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.devnet.anvil import write_token_file
from bridge.devnet.evm_endpoint import EvmEndpointLedger, fund_and_deploy, pushed_heads
from bridge.devnet.evm_proxy import EvmRpcProxy
from bridge.devnet.geth import DEFAULT_GAS_LIMIT, GethNetwork
from bridge.devnet.ledger import Fault
from bridge.devnet.starters import StartContext

GETH_CHAIN_ID = 1337


@dataclass(kw_only=True)
class GethLedger(EvmEndpointLedger):
    """The bridge endpoint on a geth network (a :class:`~bridge.devnet.ledger.DevLedger`)."""

    net: GethNetwork
    proxies: dict[int, EvmRpcProxy] = field(default_factory=dict)
    """Node index -> its authenticating TLS proxy (none: plain http, development)."""
    ca_cert: str = ""
    token_file: str = ""

    @property
    def admin_rpc_url(self) -> str:
        """Node 0 (the leader)."""
        return self.net.rpc_url

    def settle(self) -> None:
        """The leader's latest block is final on every node."""
        self.net.wait_final_everywhere(self.net.height(0))

    def _url(self, index: int) -> str:
        proxy = self.proxies.get(index)
        return proxy.url if proxy is not None else self.net.nodes[index].rpc_url

    def _ws_url(self, index: int) -> str:
        """Node ``index``'s WebSocket: ``wss://`` through its proxy (the same bearer check),
        or the node's own ``ws://`` without one."""
        proxy = self.proxies.get(index)
        return self.net.nodes[index].ws_url if proxy is None else proxy.ws_url

    # ---- DevLedger: configuration
    def describe(self) -> list[str]:
        """Chain id, nodes and endpoint."""
        return [
            f"go-ethereum {self.net.size}-node network, chain id {self.net.chain_id}, "
            f"finality depth {self.net.finality_depth}",
            f"relayer node {self._url(1)}, committee node {self._url(2)}",
            f"bridge endpoint {self.endpoint.address}",
        ]

    def ledger_entry(self) -> dict[str, Any]:
        """Node 1 (the relayer's and coordinator's) and its WebSocket, the authority's
        finality depth."""
        entry: dict[str, Any] = {
            "id": self.name,
            "kind": "evm",
            "rpc_url": self._url(1),
            "bridge": self.endpoint.address,
            "chain_id": self.net.chain_id,
            "finality_depth": self.net.finality_depth,
            "block_interval": self.net.empty_interval,
        }
        entry |= self.lens_entry()
        # Pushed heads (issue 14 item 4), node 1's like its rpc_url; the members' overrides
        # name node 2, and an adapter with an overridden rpc_url never uses this ws_url.
        if pushed_heads():
            entry["ws_url"] = self._ws_url(1)
        return entry | ({"tls_ca": self.ca_cert} if self.ca_cert else {})

    def relayer_entry(self) -> dict[str, Any]:
        """The relayer account's key entry and poll interval."""
        return {"poll_interval": 0.2, **self.relayer_key}

    def read_identity(self) -> dict[str, Any] | None:
        """EVM reads need no identity."""
        return None

    def node_auth(self, role: str) -> dict[str, str]:
        """The bearer token of the nodes' proxies (both roles)."""
        return {"token_file": self.token_file} if self.token_file else {}

    def reader_override(self) -> dict[str, Any] | None:
        """Node 2."""
        override: dict[str, Any] = {"url": self._url(2)}
        return override | ({"tls_ca": self.ca_cert} if self.ca_cert else {})

    def member_override(self, index: int) -> dict[str, Any] | None:
        """Every member reads through node 2, never the relayer's node 1."""
        return self.reader_override()

    def faults(self) -> Mapping[str, Fault]:
        """``ledger``: the block authority stops (SIGSTOP) and resumes."""
        authority = self.net.authority
        assert authority is not None
        return {"ledger": (authority.pause, authority.resume)}

    def pids(self) -> dict[str, int]:
        """The nodes', the authority's and the proxies' pids (bench CPU sampling)."""
        procs = [n.process for n in self.net.nodes] + [self.net.authority]
        procs += [p.process for p in self.proxies.values()]
        return {p.name: p.pid for p in procs if p is not None and p.alive()}

    def stop(self) -> None:
        """Stop the proxies, the authority and the nodes."""
        for proxy in self.proxies.values():
            proxy.stop()
        self.net.stop()


def start_geth_ledger(ctx: StartContext, name: str) -> GethLedger:
    """The ``geth`` starter: a three-node network, the endpoint deployed through node 0."""
    assert ctx.committee is not None
    net = GethNetwork(
        name,
        GETH_CHAIN_ID,
        ctx.workdir,
        size=3,
        finality_depth=2,
        gas_limit=ctx.block_gas_limit or DEFAULT_GAS_LIMIT,
    ).start()
    try:
        d = fund_and_deploy(ctx, name, ctx.committee, net.rpc_url, net.fund)
        admin, relayer, endpoint, tokens = d.admin, d.relayer, d.endpoint, d.tokens
        ledger = GethLedger(
            name=name,
            admin=admin,
            relayer=relayer,
            endpoint=endpoint,
            tokens=tokens,
            block_time=net.empty_interval,
            relayer_key=ctx._key_entry(f"keys/relayer-{name}.key", f"relayer-{name}", relayer),
            net=net,
            lens=d.lens,
        )
        if ctx.evm_node_auth:
            ca = ctx._evm_node_ca()
            token = write_token_file(ctx._rpc_token_file(name))
            issued = ca.issue(f"geth-{name}", hosts=("127.0.0.1", "localhost"), server=True)
            for i in (1, 2):
                ledger.proxies[i] = EvmRpcProxy(
                    name=f"{name}-{i}",
                    upstream=net.nodes[i].rpc_url,
                    cert=issued.cert,
                    key=issued.key,
                    token_file=token,
                    log_dir=ctx.workdir,
                ).start()
            ledger.ca_cert, ledger.token_file = str(ca.cert_path), str(token)
        ledger.settle()
        return ledger
    except BaseException:
        net.stop()
        raise
