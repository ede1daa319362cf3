"""An EVM node configured like Kaia's Kairos testnet, for the ``kaia`` profile (ADR 0019).

Kaia itself is not served by the package registries reachable here, so the devnet stands
in an anvil node with Kaia's observable RPC behaviour: chain id 1001 (Kairos), a base fee
held at Kaia's KIP-71 floor of 25 gkei (an uncongested Kaia network), no minimum tip
(``eth_maxPriorityFeePerGas`` is 0, as Kaia answers while uncongested) and near-instant
blocks (a block as soon as a transaction is pending; each transaction final in the block
that includes it; Istanbul BFT never reorganises).

What it does not reproduce: Kaia's own transaction types (fee delegation, account keys),
the ``kaia_``/``klay_`` namespaces, congestion pricing and the pre-Magma fixed unit price;
the profile's policy for those is covered by unit tests of
:func:`bridge.ledgers.evm.profiles.fee_fields`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.devnet.anvil import AnvilNode, write_token_file
from bridge.devnet.evm_endpoint import fund_and_deploy
from bridge.devnet.starters import StartContext
from bridge.devnet.system import LedgerHandle
from bridge.ledgers.evm.profiles import KAIA_KAIROS

KAIA_BASE_FEE = 25 * 10**9
"""Kaia's KIP-71 lower bound of the base fee (25 gkei), where an uncongested network sits."""


@dataclass
class KaiaLikeNode:
    """An anvil node with Kaia's chain id, fee floor and near-instant blocks.

    Guarantees: while started, every block's base fee is exactly :data:`KAIA_BASE_FEE`.
    Anvil's EIP-1559 update would price each block after a lightly used one lower, so the
    node does not mine by itself (``--no-mining``): one miner thread, polling the pool every
    :attr:`poll_s`, pins the next block's base fee and then mines whatever is pending. Pinning
    and mining in one thread leaves no window for a block at another base fee (a watcher
    resetting the fee after anvil's own per-transaction blocks could miss a block two
    transactions made within its poll; CI saw a relayer's fee cap, read from such a block,
    refused by the next).
    """

    name: str
    workdir: Path
    chain_id: int = KAIA_KAIROS
    poll_s: float = 0.01
    node: AnvilNode = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.node = AnvilNode(
            self.name,
            self.chain_id,
            0,
            self.workdir,
            extra_args=(
                "--base-fee", str(KAIA_BASE_FEE), "--disable-min-priority-fee", "--no-mining",
            ),
        )  # fmt: skip

    def start(self) -> KaiaLikeNode:
        """Start the node and its miner; returns self."""
        self.node.start()
        self._thread = threading.Thread(target=self._mine, name=f"miner-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _mine(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                if int(self.node.rpc("txpool_status", [])["pending"], 16) == 0:
                    continue
                self.node.rpc("anvil_setNextBlockBaseFeePerGas", [hex(KAIA_BASE_FEE)])
                self.node.rpc("evm_mine", [])
                # and at once for the next block, so eth_gasPrice suggests the floor again
                self.node.rpc("anvil_setNextBlockBaseFeePerGas", [hex(KAIA_BASE_FEE)])
            except (OSError, RuntimeError):
                continue  # the node is stopping or busy; the next poll retries

    def stop(self) -> None:
        """Stop the miner, then the node."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.node.stop()


@dataclass(kw_only=True)
class KaiaLedger(LedgerHandle):
    """The endpoint on a :class:`KaiaLikeNode`, configured with ``profile = "kaia"``."""

    kaia: KaiaLikeNode

    def describe(self) -> list[str]:
        """Kairos-like node, chain id and endpoint."""
        return [
            f"Kaia profile (Kairos-like anvil), {super().describe()[0]}",
            *super().describe()[1:],
        ]

    def ledger_entry(self) -> dict[str, Any]:
        """The anvil entry with ``profile = "kaia"`` (finality depth 0)."""
        return super().ledger_entry() | {"profile": "kaia", "finality_depth": 0}

    def stop(self) -> None:
        """Stop the miner, the proxy and the node."""
        self.kaia.stop()


def start_kaia_ledger(ctx: StartContext, name: str) -> KaiaLedger:
    """The ``kaia`` starter: a Kairos-like node with the endpoint deployed."""
    assert ctx.committee is not None
    kaia = KaiaLikeNode(name, ctx.workdir).start()
    try:
        node = kaia.node
        if ctx.evm_node_auth:
            node.secure(ctx._evm_node_ca(), write_token_file(ctx._rpc_token_file(name)))
        d = fund_and_deploy(ctx, name, ctx.committee, node.rpc_url, node.fund)
        admin, relayer, endpoint, tokens = d.admin, d.relayer, d.endpoint, d.tokens
        return KaiaLedger(
            name=name,
            node=node,
            admin=admin,
            relayer=relayer,
            endpoint=endpoint,
            tokens=tokens,
            block_time=1.0,
            rpc_token_file=ctx._rpc_token_file(name) if ctx.evm_node_auth else None,
            relayer_key=ctx._key_entry(f"keys/relayer-{name}.key", f"relayer-{name}", relayer),
            kaia=kaia,
            lens=d.lens,
        )
    except BaseException:
        kaia.stop()
        raise
